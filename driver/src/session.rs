//! Typed FUSE operations over one queue, one request at a time.
//!
//! Each method builds the request, lays it out like the Linux driver, submits
//! it, waits (bounded) and decodes the reply. [`Session::call`] returns the
//! raw reply whatever its errno, for tests that compare errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, ForgetIn, GetattrIn, InitIn, InitOut, LinkIn, MkdirIn, MknodIn,
    OpenIn, OpenOut, ReadIn, ReleaseIn, RenameIn, SetattrIn, StatfsOut, WriteIn, WriteOut,
};

use crate::chain::Chain;
use crate::error::Result;
use crate::fuse::{op, parse_dirents, DirEntry, Reply, Request};
use crate::queue::Queue;

/// FUSE protocol version we speak.
pub const FUSE_MAJOR: u32 = 7;
/// Minor version (what fuse-backend-rs and virtiofsd both understand well).
pub const FUSE_MINOR: u32 = 31;
/// INIT flags offered, like a Linux guest: async read, big writes, readdirplus,
/// parallel dirops, and `MAX_PAGES` so that 1 MiB requests are allowed.
pub const INIT_FLAGS: u32 = 0x1 | 0x8 | 0x20 | 0x2000 | 0x4000 | 0x4_0000 | 0x40_0000;
/// Default bound on every wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A fresh FUSE `unique` value.
pub fn next_unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// Synchronous FUSE calls on one queue.
pub struct Session<'q> {
    queue: &'q mut Queue,
    /// Bound on each wait for a reply.
    pub timeout: Duration,
}

impl<'q> Session<'q> {
    /// A session on `queue` with the default timeout.
    pub fn new(queue: &'q mut Queue) -> Self {
        Session {
            queue,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The queue underneath.
    pub fn queue(&mut self) -> &mut Queue {
        self.queue
    }

    /// Sends `req` with room for `reply_body` bytes and returns the reply,
    /// whatever its errno.
    pub fn call(&mut self, req: &Request, reply_body: u32) -> Result<Reply> {
        self.call_chain(&req.chain(next_unique(), reply_body))
    }

    /// Submits an arbitrary chain and decodes what comes back.
    pub fn call_chain(&mut self, chain: &Chain) -> Result<Reply> {
        let head = self.queue.submit(chain)?;
        let c = self.queue.wait_for(head, self.timeout)?;
        Reply::decode(&c)
    }

    fn ok(&mut self, req: Request, reply_body: u32) -> Result<Reply> {
        let opcode = req.header.opcode;
        self.call(&req, reply_body)?.ok(opcode)
    }

    /// FUSE_INIT.
    pub fn init(&mut self) -> Result<InitOut> {
        let req = Request::new(op::INIT, 0).arg(&InitIn {
            major: FUSE_MAJOR,
            minor: FUSE_MINOR,
            max_readahead: 128 << 10,
            flags: INIT_FLAGS,
        });
        self.ok(req, std::mem::size_of::<InitOut>() as u32)?.parse()
    }

    /// FUSE_LOOKUP of `name` in `parent`.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<EntryOut> {
        self.ok(Request::new(op::LOOKUP, parent).name(name), ENTRY_LEN)?
            .parse()
    }

    /// FUSE_FORGET (no reply body; the chain has no writable part).
    pub fn forget(&mut self, node: u64, nlookup: u64) -> Result<()> {
        let req = Request::new(op::FORGET, node).arg(&ForgetIn { nlookup });
        let chain = Chain::default().push(crate::chain::Segment::Readable {
            data: req.encode(next_unique()),
            align: 16,
        });
        let head = self.queue.submit(&chain)?;
        self.queue.wait_for(head, self.timeout)?;
        Ok(())
    }

    /// FUSE_GETATTR.
    pub fn getattr(&mut self, node: u64) -> Result<AttrOut> {
        self.ok(getattr_request(node), ATTR_LEN)?.parse()
    }

    /// FUSE_SETATTR with a prepared `SetattrIn`.
    pub fn setattr(&mut self, node: u64, arg: &SetattrIn) -> Result<AttrOut> {
        self.ok(Request::new(op::SETATTR, node).arg(arg), ATTR_LEN)?
            .parse()
    }

    /// FUSE_OPEN (or OPENDIR when `dir`).
    pub fn open(&mut self, node: u64, flags: u32, dir: bool) -> Result<OpenOut> {
        self.ok(open_request(node, flags, dir), OPEN_LEN)?.parse()
    }

    /// FUSE_RELEASE (or RELEASEDIR when `dir`).
    pub fn release(&mut self, node: u64, fh: u64, dir: bool) -> Result<()> {
        let opcode = if dir { op::RELEASEDIR } else { op::RELEASE };
        self.ok(
            Request::new(opcode, node).arg(&ReleaseIn {
                fh,
                ..Default::default()
            }),
            0,
        )?;
        Ok(())
    }

    /// FUSE_READ of `size` bytes at `offset`.
    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        Ok(self.ok(read_request(node, fh, offset, size), size)?.body)
    }

    /// Looks up each name of `path` from the root, opens the last one
    /// read-only and reads up to `size` bytes from its start, as a guest's
    /// `cat` does; the handle is released whatever the read gives.
    pub fn read_path(&mut self, path: &[&[u8]], size: u32) -> Result<Vec<u8>> {
        let mut node = 1;
        for name in path {
            node = self.lookup(node, name)?.nodeid;
        }
        let fh = self.open(node, libc::O_RDONLY as u32, false)?.fh;
        let data = self.read(node, fh, 0, size);
        self.release(node, fh, false)?;
        data
    }

    /// FUSE_WRITE of `data` at `offset`; returns bytes written.
    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let w: WriteOut = self
            .ok(write_request(node, fh, offset, data.to_vec()), 8)?
            .parse()?;
        Ok(w.size)
    }

    /// FUSE_CREATE: creates and opens `name`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
    ) -> Result<(EntryOut, OpenOut)> {
        let r = self.ok(
            create_request(parent, name, mode, flags),
            ENTRY_LEN + OPEN_LEN,
        )?;
        Ok((r.parse()?, r.parse_at(ENTRY_LEN as usize)?))
    }

    /// FUSE_MKDIR.
    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> Result<EntryOut> {
        self.ok(mkdir_request(parent, name, mode), ENTRY_LEN)?
            .parse()
    }

    /// FUSE_MKNOD.
    pub fn mknod(&mut self, parent: u64, name: &[u8], mode: u32, rdev: u32) -> Result<EntryOut> {
        self.ok(mknod_request(parent, name, mode, rdev), ENTRY_LEN)?
            .parse()
    }

    /// FUSE_SYMLINK creating `name` -> `target`.
    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> Result<EntryOut> {
        self.ok(symlink_request(parent, name, target), ENTRY_LEN)?
            .parse()
    }

    /// FUSE_READLINK.
    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>> {
        Ok(self.ok(Request::new(op::READLINK, node), 4096)?.body)
    }

    /// FUSE_LINK: a new name `name` in `parent` for `node`.
    pub fn link(&mut self, node: u64, parent: u64, name: &[u8]) -> Result<EntryOut> {
        self.ok(
            Request::new(op::LINK, parent)
                .arg(&LinkIn { oldnodeid: node })
                .name(name),
            ENTRY_LEN,
        )?
        .parse()
    }

    /// FUSE_RENAME.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
    ) -> Result<()> {
        self.ok(
            Request::new(op::RENAME, parent)
                .arg(&RenameIn { newdir: newparent })
                .name(name)
                .name(newname),
            0,
        )?;
        Ok(())
    }

    /// FUSE_UNLINK.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        self.ok(Request::new(op::UNLINK, parent).name(name), 0)?;
        Ok(())
    }

    /// FUSE_RMDIR.
    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<()> {
        self.ok(Request::new(op::RMDIR, parent).name(name), 0)?;
        Ok(())
    }

    /// FUSE_STATFS.
    pub fn statfs(&mut self) -> Result<StatfsOut> {
        self.ok(Request::new(op::STATFS, crate::fuse::ROOT_ID), 80)?
            .parse()
    }

    /// Reads a whole directory with READDIRPLUS (`plus`) or READDIR, in
    /// chunks of `chunk` bytes. Entries from READDIRPLUS carry a lookup
    /// reference that the caller owns.
    pub fn readdir_all(&mut self, node: u64, plus: bool, chunk: u32) -> Result<Vec<DirEntry>> {
        let fh = self.open(node, libc::O_RDONLY as u32, true)?.fh;
        let mut all = Vec::new();
        let mut offset = 0u64;
        let result = loop {
            let opcode = if plus { op::READDIRPLUS } else { op::READDIR };
            let req = Request::new(opcode, node).arg(&ReadIn {
                fh,
                offset,
                size: chunk,
                ..Default::default()
            });
            let r = match self.ok(req, chunk) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            if r.body.is_empty() {
                break Ok(());
            }
            let ents = match parse_dirents(&r.body, plus) {
                Ok(e) => e,
                Err(e) => break Err(e),
            };
            offset = ents.last().map_or(offset, |e| e.off);
            all.extend(ents);
        };
        self.release(node, fh, true)?;
        result.map(|_| all)
    }
}

/// Reply body bytes of an `EntryOut`.
pub const ENTRY_LEN: u32 = std::mem::size_of::<EntryOut>() as u32;
/// Reply body bytes of an `AttrOut`.
pub const ATTR_LEN: u32 = std::mem::size_of::<AttrOut>() as u32;
/// Reply body bytes of an `OpenOut`.
pub const OPEN_LEN: u32 = std::mem::size_of::<OpenOut>() as u32;

/// A GETATTR request.
pub fn getattr_request(node: u64) -> Request {
    Request::new(op::GETATTR, node).arg(&GetattrIn::default())
}

/// An OPEN request (OPENDIR when `dir`).
pub fn open_request(node: u64, flags: u32, dir: bool) -> Request {
    let opcode = if dir { op::OPENDIR } else { op::OPEN };
    Request::new(opcode, node).arg(&OpenIn {
        flags,
        fuse_flags: 0,
    })
}

/// A CREATE request: creates and opens `name`.
pub fn create_request(parent: u64, name: &[u8], mode: u32, flags: u32) -> Request {
    Request::new(op::CREATE, parent)
        .arg(&CreateIn {
            flags,
            mode,
            umask: 0,
            fuse_flags: 0,
        })
        .name(name)
}

/// A MKDIR request.
pub fn mkdir_request(parent: u64, name: &[u8], mode: u32) -> Request {
    Request::new(op::MKDIR, parent)
        .arg(&MkdirIn { mode, umask: 0 })
        .name(name)
}

/// A READ request (for pipelined use).
pub fn read_request(node: u64, fh: u64, offset: u64, size: u32) -> Request {
    Request::new(op::READ, node).arg(&ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    })
}

/// A WRITE request whose payload travels in its own page-aligned descriptor.
pub fn write_request(node: u64, fh: u64, offset: u64, data: Vec<u8>) -> Request {
    Request::new(op::WRITE, node)
        .arg(&WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        })
        .data(data)
}

/// A MKNOD request.
pub fn mknod_request(parent: u64, name: &[u8], mode: u32, rdev: u32) -> Request {
    Request::new(op::MKNOD, parent)
        .arg(&MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        })
        .name(name)
}

/// A SYMLINK request: on the wire the link's name comes first, then the target.
pub fn symlink_request(parent: u64, name: &[u8], target: &[u8]) -> Request {
    Request::new(op::SYMLINK, parent).name(name).name(target)
}

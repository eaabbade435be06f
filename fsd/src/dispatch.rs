//! One request, from descriptor chain to reply.
//!
//! The guest writes every byte of a request, including the descriptor chain
//! that carries it. The dispatcher makes sure that each chain ends in exactly
//! one of two ways: a FUSE reply (an error reply if nothing better can be
//! said), or, when the chain cannot even carry a header (addresses outside
//! guest memory, no room for a reply), a used entry of length 0. It never
//! panics on guest input and never blocks a queue on a lock wait.
//!
//! Lock requests (GETLK, SETLK, SETLKW) are answered here rather than by the
//! fuse-backend-rs server, which routes SETLKW to the non-blocking call.

use std::io::Write;
use std::mem::size_of;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, InHeader, LinkIn, LkIn, LkOut, MkdirIn, MknodIn, Opcode, OutHeader, ReadIn,
    Rename2In, RenameIn, LK_FLOCK,
};
use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use log::{debug, warn};
use std::sync::atomic::{AtomicBool, Ordering};
use virtio_queue::DescriptorChain;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};

use crate::fs::locks::{LockKind, LockRequest};
use crate::fs::SharedFs;
use crate::handover::state::FuseState;
use crate::policy::guard::waiting_allowed;

/// Guest memory as fsd maps it (no dirty-page bitmap: fsd does not migrate).
pub type GuestMem = GuestMemoryMmap<()>;
/// The shared, swappable view of guest memory.
pub type AtomicMem = GuestMemoryAtomic<GuestMem>;
/// A descriptor chain popped from a queue, holding its memory snapshot.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMem>>;

/// Whether a request may wait for a lock held elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    /// The caller runs on a thread of its own and may wait.
    Allowed,
    /// The caller must not wait; a blocking lock request is refused (ENOLCK)
    /// and a request that would ask authd is denied (EACCES).
    Refused,
}

/// Routes requests to the FUSE server or to fsd's own handlers.
pub struct Dispatcher {
    server: Server<Arc<SharedFs>>,
    fs: Arc<SharedFs>,
    /// A FUSE session is up (INIT answered, no DESTROY or device restart
    /// since): a second INIT would renegotiate under the guest's feet.
    initialized: AtomicBool,
    /// A FUSE session exists at all: an INIT was answered and no DESTROY or
    /// device reset came since. Unlike `initialized`, a VMM that merely
    /// stops and restarts the device (VM pause and resume, which re-sends
    /// SET_FEATURES) leaves it up: the guest driver goes on without a new
    /// INIT. Requests outside a session are refused.
    session: AtomicBool,
}

/// For requests that carry names: the size of the fixed argument before
/// them and how many NUL-terminated names follow. Used to refuse bodies with
/// NULs inside a name (which the decoder would silently cut short) or names
/// without their terminator.
fn name_layout(opcode: u32) -> Option<(usize, usize)> {
    let op = |o: Opcode| o as u32;
    Some(match opcode {
        x if x == op(Opcode::Lookup) || x == op(Opcode::Unlink) || x == op(Opcode::Rmdir) => (0, 1),
        x if x == op(Opcode::Mknod) => (size_of::<MknodIn>(), 1),
        x if x == op(Opcode::Mkdir) => (size_of::<MkdirIn>(), 1),
        x if x == op(Opcode::Link) => (size_of::<LinkIn>(), 1),
        x if x == op(Opcode::Create) => (size_of::<CreateIn>(), 1),
        x if x == op(Opcode::Symlink) => (0, 2),
        x if x == op(Opcode::Rename) => (size_of::<RenameIn>(), 2),
        x if x == op(Opcode::Rename2) => (size_of::<Rename2In>(), 2),
        _ => return None,
    })
}

/// Checks the header against the chain and the names in the body; `full`
/// reads the whole request, header first.
fn well_formed(header: &InHeader, full: &Reader<'_, ()>) -> bool {
    let len = header.len as usize;
    if len < size_of::<InHeader>() || len > full.available_bytes() {
        return false;
    }
    let Some((fixed, names)) = name_layout(header.opcode) else {
        return true;
    };
    let body_len = len - size_of::<InHeader>();
    if body_len > MAX_NAME_BODY || body_len <= fixed {
        return false;
    }
    let mut r = full.clone();
    // Most names are short: those are read into the stack.
    let mut small = [0u8; 256];
    let mut large = Vec::new();
    let body = if body_len <= small.len() {
        &mut small[..body_len]
    } else {
        large.resize(body_len, 0);
        &mut large[..]
    };
    if r.read_obj::<InHeader>().is_err() || std::io::Read::read_exact(&mut r, body).is_err() {
        return false;
    }
    let names_part = &body[fixed..];
    names_part.last() == Some(&0) && names_part.iter().filter(|&&b| b == 0).count() == names
}

/// Reads the first `size_of::<T>()` bytes of the chain's readable or
/// writable descriptors into a `T`, without building a reader (no
/// allocation); `None` when the chain is shorter or points outside guest
/// memory.
fn read_head<T: ByteValued + Default>(chain: &Chain, writable: bool) -> Option<T> {
    let mut obj = T::default();
    let buf = obj.as_mut_slice();
    let mut filled = 0;
    for d in chain.clone() {
        if filled == buf.len() {
            break;
        }
        if d.is_write_only() != writable {
            continue;
        }
        let n = (d.len() as usize).min(buf.len() - filled);
        chain
            .memory()
            .read_slice(&mut buf[filled..filled + n], d.addr())
            .ok()?;
        filled += n;
    }
    (filled == buf.len()).then_some(obj)
}

/// The smallest READ that [`Dispatcher::is_bulk_read`] counts as bulk.
pub const BULK_READ: u32 = 256 << 10;

/// A READ's header and arguments, as they follow each other in the chain.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ReadHead {
    header: InHeader,
    read: ReadIn,
}

// SAFETY: two ByteValued plain structs of 40 bytes each, without padding
// between them; every bit pattern is valid.
unsafe impl ByteValued for ReadHead {}

/// Longest body of a request that carries names: two names and a symlink
/// target at most.
const MAX_NAME_BODY: usize = 3 * 4096 + 64;

fn out_header_error(unique: u64, errno: i32) -> OutHeader {
    OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    }
}

/// Reads back the first bytes the device may write, to learn whether a reply
/// was already written before an error surfaced.
fn read_written_header(chain: &Chain) -> Option<OutHeader> {
    read_head(chain, true)
}

/// Where the reply's header goes, zeroed before the server runs so that
/// afterwards fsd can tell whether it wrote a reply. Usually the first
/// writable buffer holds the whole header: then it is zeroed and read back
/// through that buffer, without walking the chain (which reads every
/// descriptor from guest memory) twice more per request.
enum HeaderArea<'a> {
    Buffer(vm_memory::VolatileSlice<'a, ()>),
    /// A guest that splits the header over buffers: the chain is walked.
    Chain,
}

impl<'a> HeaderArea<'a> {
    fn clear(writer: &VirtioFsWriter<'a, ()>, mem: &GuestMem, chain: &Chain) -> Self {
        let zero = [0u8; size_of::<OutHeader>()];
        match writer.first_slice() {
            Some(b) if b.len() >= zero.len() && b.write_slice(&zero, 0).is_ok() => {
                HeaderArea::Buffer(b)
            }
            _ => {
                clear_header_area(mem, chain);
                HeaderArea::Chain
            }
        }
    }

    fn written(&self, chain: &Chain) -> Option<OutHeader> {
        match self {
            HeaderArea::Buffer(b) => {
                let mut h = OutHeader::default();
                b.read_slice(h.as_mut_slice(), 0).ok()?;
                Some(h)
            }
            HeaderArea::Chain => read_written_header(chain),
        }
    }
}

/// Zeroes the reply header area, so that [`read_written_header`] can tell
/// whether the server wrote anything.
fn clear_header_area(mem: &GuestMem, chain: &Chain) {
    let zero = [0u8; size_of::<OutHeader>()];
    let mut left = zero.len();
    for d in chain.clone().writable() {
        if left == 0 {
            break;
        }
        let n = (d.len() as usize).min(left);
        let _ = mem.write_slice(&zero[..n], GuestAddress(d.addr().0));
        left -= n;
    }
}

impl Dispatcher {
    pub fn new(fs: Arc<SharedFs>) -> Self {
        Dispatcher {
            server: Server::new(fs.clone()),
            fs,
            initialized: AtomicBool::new(false),
            session: AtomicBool::new(false),
        }
    }

    /// The file system requests go to.
    pub fn fs(&self) -> &Arc<SharedFs> {
        &self.fs
    }

    /// The FUSE session, for a live handover.
    pub fn session_state(&self) -> FuseState {
        let (major, minor) = self.server.version();
        FuseState {
            initialized: self.initialized.load(Ordering::SeqCst),
            session: self.session.load(Ordering::SeqCst),
            major,
            minor,
        }
    }

    /// Continues a predecessor's FUSE session (after the vhost-user setup
    /// was replayed, which looks like a device restart).
    pub fn restore_session(&self, s: &FuseState) {
        self.server.restore_version(s.major, s.minor);
        self.initialized.store(s.initialized, Ordering::SeqCst);
        self.session.store(s.session, Ordering::SeqCst);
    }

    /// The device was (re)started or reset: a new guest driver will send a
    /// new FUSE_INIT.
    pub fn device_restarted(&self) {
        self.initialized.store(false, Ordering::SeqCst);
    }

    /// The device was reset (the guest driver is gone): no session is left
    /// until the next INIT.
    pub fn device_reset(&self) {
        self.initialized.store(false, Ordering::SeqCst);
        self.session.store(false, Ordering::SeqCst);
    }

    /// The header of a chain's request, if it can be read at all: read
    /// straight from guest memory (every request's header is read before
    /// it is dispatched, and again when it is handled, so this is kept
    /// cheap).
    pub fn peek_header(chain: &Chain) -> Option<InHeader> {
        read_head(chain, false)
    }

    /// Whether this is a READ of [`BULK_READ`] bytes or more: a copy long
    /// enough that handing it to another thread costs little beside it.
    /// Only routes the request; the handler checks the request as always.
    pub fn is_bulk_read(chain: &Chain, header: Option<&InHeader>) -> bool {
        header.is_some_and(|h| h.opcode == Opcode::Read as u32)
            && read_head::<ReadHead>(chain, false).is_some_and(|r| r.read.size >= BULK_READ)
    }

    /// Whether this request may wait for long: a blocking lock
    /// (FUSE_SETLKW), or a request on a protected file that will ask authd.
    /// Such requests run on a thread of their own, so that every other
    /// request keeps flowing meanwhile.
    pub fn needs_own_thread(&self, chain: &Chain) -> bool {
        self.needs_own_thread_for(Self::peek_header(chain).as_ref())
    }

    /// [`Self::needs_own_thread`] for a header already read.
    pub fn needs_own_thread_for(&self, header: Option<&InHeader>) -> bool {
        let Some(h) = header else {
            return false;
        };
        h.opcode == Opcode::Setlkw as u32 || self.fs.would_wait(h.nodeid)
    }

    /// Answers a chain with `errno` without running it (crash recovery:
    /// a request that may have taken effect already).
    pub fn fail(&self, chain: Chain, errno: i32) -> u32 {
        let Some(header) = Self::peek_header(&chain) else {
            return 0;
        };
        match VirtioFsWriter::new(chain.memory(), chain.clone()) {
            Ok(w) => reply_error(w, header.unique, errno) as u32,
            Err(_) => 0,
        }
    }

    /// Handles one chain and returns the number of bytes written into it,
    /// which is the length to put in the used ring.
    pub fn handle(&self, chain: Chain, blocking: Blocking) -> u32 {
        let header = Self::peek_header(&chain);
        self.handle_peeked(chain, header, blocking)
    }

    /// [`Self::handle`] with the header the caller already read from the
    /// chain ([`Self::peek_header`]): reading it walks the chain through
    /// guest memory, which is worth doing once per request, not twice.
    pub fn handle_peeked(&self, chain: Chain, header: Option<InHeader>, blocking: Blocking) -> u32 {
        match blocking {
            Blocking::Allowed => waiting_allowed(|| self.handle_inner(chain, header, blocking)),
            Blocking::Refused => self.handle_inner(chain, header, blocking),
        }
    }

    fn handle_inner(&self, chain: Chain, header: Option<InHeader>, blocking: Blocking) -> u32 {
        let mem = chain.memory();
        // One reader for the whole request, built once: the dispatcher's
        // checks read from clones of it, and the server gets it as it is.
        let full = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                warn!("unusable request chain (readable part): {e}");
                return 0;
            }
        };
        let Some(header) = header else {
            warn!("request too short for a FUSE header");
            return 0;
        };
        let writer = match VirtioFsWriter::new(mem, chain.clone()) {
            Ok(w) => w,
            Err(e) => {
                warn!("unusable request chain (writable part): {e}");
                return 0;
            }
        };
        let malformed = !well_formed(&header, &full);
        let no_reply = [
            Opcode::Forget as u32,
            Opcode::BatchForget as u32,
            Opcode::Interrupt as u32,
        ]
        .contains(&header.opcode);

        let is_init = header.opcode == Opcode::Init as u32;
        let live = self.initialized.load(Ordering::SeqCst);
        let session = self.session.load(Ordering::SeqCst);
        if header.opcode == Opcode::Destroy as u32 && session {
            self.initialized.store(false, Ordering::SeqCst);
            self.session.store(false, Ordering::SeqCst);
        }
        let written = match header.opcode {
            _ if malformed && no_reply => 0,
            _ if malformed => {
                debug!("malformed request {}: length or names", header.opcode);
                reply_error(writer, header.unique, libc::EINVAL)
            }
            _ if is_init && live => {
                warn!("second FUSE_INIT on a live session refused");
                reply_error(writer, header.unique, libc::EPROTO)
            }
            // Before INIT there is no session: no root, no labels, nothing
            // to act on. Only INIT is answered (the kernel sends nothing
            // else first); FORGETs get no reply, as always.
            _ if !is_init && !session && no_reply => 0,
            _ if !is_init && !session => {
                debug!("request {} before FUSE_INIT refused", header.opcode);
                reply_error(writer, header.unique, libc::EIO)
            }
            x if x == Opcode::Getlk as u32
                || x == Opcode::Setlk as u32
                || x == Opcode::Setlkw as u32 =>
            {
                let mut reader = full;
                match reader.read_obj::<InHeader>() {
                    Ok(_) => self.handle_lock(&header, reader, writer, blocking),
                    Err(_) => reply_error(writer, header.unique, libc::EINVAL),
                }
            }
            _ => {
                let area = HeaderArea::clear(&writer, mem, &chain);
                match self
                    .server
                    .handle_message(full, Writer::VirtioFs(writer), None, None)
                {
                    Ok(n) => {
                        if is_init && area.written(&chain).is_some_and(|h| h.error == 0) {
                            self.initialized.store(true, Ordering::SeqCst);
                            self.session.store(true, Ordering::SeqCst);
                        }
                        n
                    }
                    Err(e) => {
                        debug!("request {} failed: {e}", header.opcode);
                        match area.written(&chain) {
                            Some(h) if h.len != 0 => h.len as usize,
                            _ if no_reply => 0,
                            // A fresh writer: the server's went with it.
                            _ => match VirtioFsWriter::new(mem, chain.clone()) {
                                Ok(w) => reply_error(w, header.unique, libc::EINVAL),
                                Err(_) => 0,
                            },
                        }
                    }
                }
            }
        };
        written as u32
    }

    fn handle_lock(
        &self,
        header: &InHeader,
        mut reader: Reader<'_, ()>,
        writer: VirtioFsWriter<'_, ()>,
        blocking: Blocking,
    ) -> usize {
        let lk: LkIn = match reader.read_obj() {
            Ok(l) => l,
            Err(_) => return reply_error(writer, header.unique, libc::EINVAL),
        };
        let req = LockRequest {
            start: lk.lk.start,
            end: lk.lk.end,
            typ: lk.lk.type_,
            pid: lk.lk.pid,
        };
        let kind = if lk.lk_flags & LK_FLOCK != 0 {
            LockKind::Flock
        } else {
            LockKind::Posix
        };
        let inode = header.nodeid;
        let ctx = Context::from(header);
        if header.opcode == Opcode::Getlk as u32 {
            return match self.fs.getlk(&ctx, inode, lk.owner, &req) {
                Ok(got) => {
                    let mut out = LkOut::default();
                    out.lk.start = got.start;
                    out.lk.end = got.end;
                    out.lk.type_ = got.typ;
                    out.lk.pid = got.pid;
                    reply_ok(writer, header.unique, out.as_slice())
                }
                Err(e) => reply_io_error(writer, header.unique, e),
            };
        }
        let wait = header.opcode == Opcode::Setlkw as u32;
        if wait && blocking == Blocking::Refused {
            return reply_error(writer, header.unique, libc::ENOLCK);
        }
        match self
            .fs
            .setlk(&ctx, kind, inode, lk.fh, lk.owner, &req, wait)
        {
            Ok(()) => reply_ok(writer, header.unique, &[]),
            Err(e) => reply_io_error(writer, header.unique, e),
        }
    }
}

fn reply_ok(mut w: VirtioFsWriter<'_, ()>, unique: u64, body: &[u8]) -> usize {
    let h = OutHeader {
        len: (size_of::<OutHeader>() + body.len()) as u32,
        error: 0,
        unique,
    };
    let mut buf = Vec::with_capacity(h.len as usize);
    buf.extend_from_slice(h.as_slice());
    buf.extend_from_slice(body);
    match w.write_all(&buf) {
        Ok(()) => w.bytes_written(),
        Err(e) => {
            warn!("reply does not fit the guest's buffer: {e}");
            0
        }
    }
}

fn reply_io_error(w: VirtioFsWriter<'_, ()>, unique: u64, e: std::io::Error) -> usize {
    reply_error(w, unique, e.raw_os_error().unwrap_or(libc::EIO))
}

fn reply_error(mut w: VirtioFsWriter<'_, ()>, unique: u64, errno: i32) -> usize {
    match w.write_all(out_header_error(unique, errno).as_slice()) {
        Ok(()) => w.bytes_written(),
        Err(e) => {
            warn!("no room for an error reply: {e}");
            0
        }
    }
}

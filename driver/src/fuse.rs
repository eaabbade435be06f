//! FUSE messages as raw bytes: requests with any header fields, and replies.
//!
//! The wire structs come from `fuse_backend_rs::abi::fuse_abi`; a request is
//! kept as header plus body bytes so that tests can make the header lie (a
//! wrong `len`, an unknown opcode, a node never looked up) without fighting a
//! typed API.

use fuse_backend_rs::abi::fuse_abi::{Dirent, EntryOut, InHeader, OutHeader};
use vm_memory::ByteValued;

use crate::chain::{Chain, OUT_HEADER_LEN};
use crate::error::{Error, Result};
use crate::queue::Completion;

pub use fuse_backend_rs::abi::fuse_abi;

/// FUSE opcodes (numbers from `<linux/fuse.h>`).
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// Node id of the root directory.
pub const ROOT_ID: u64 = 1;
/// Size of `fuse_in_header`.
pub const IN_HEADER_LEN: u32 = 40;

/// A FUSE request: header fields plus body bytes, with an optional separate
/// data payload (the bytes of a WRITE, placed in their own page-aligned
/// descriptor as the Linux driver does).
#[derive(Debug, Clone)]
pub struct Request {
    /// The header; `len` and `unique` are filled in by [`Request::encode`]
    /// unless overridden.
    pub header: InHeader,
    /// Arguments following the header.
    pub body: Vec<u8>,
    /// Payload placed in a separate descriptor.
    pub data: Vec<u8>,
    len_override: Option<u32>,
}

impl Request {
    /// A request with `opcode` for node `nodeid`, as root (uid 0, gid 0).
    pub fn new(opcode: u32, nodeid: u64) -> Self {
        Request {
            header: InHeader {
                len: 0,
                opcode,
                unique: 0,
                nodeid,
                uid: 0,
                gid: 0,
                pid: 1,
                padding: 0,
            },
            body: Vec::new(),
            data: Vec::new(),
            len_override: None,
        }
    }

    /// Appends a wire struct to the body.
    pub fn arg<T: ByteValued>(mut self, v: &T) -> Self {
        self.body.extend_from_slice(v.as_slice());
        self
    }

    /// Appends raw bytes to the body.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.body.extend_from_slice(b);
        self
    }

    /// Appends a NUL-terminated name.
    pub fn name(mut self, n: &[u8]) -> Self {
        self.body.extend_from_slice(n);
        self.body.push(0);
        self
    }

    /// Sets the separate data payload.
    pub fn data(mut self, d: Vec<u8>) -> Self {
        self.data = d;
        self
    }

    /// Makes the header claim `len` bytes regardless of the real size.
    pub fn with_len(mut self, len: u32) -> Self {
        self.len_override = Some(len);
        self
    }

    /// Sets uid and gid in the header.
    pub fn with_creds(mut self, uid: u32, gid: u32) -> Self {
        self.header.uid = uid;
        self.header.gid = gid;
        self
    }

    /// The real length: header, body and data.
    pub fn true_len(&self) -> u32 {
        (IN_HEADER_LEN as usize + self.body.len() + self.data.len()) as u32
    }

    /// Header and body as bytes, with `unique` and `len` filled in.
    pub fn encode(&self, unique: u64) -> Vec<u8> {
        let mut h = self.header;
        h.unique = unique;
        h.len = self.len_override.unwrap_or_else(|| self.true_len());
        let mut v = h.as_slice().to_vec();
        v.extend_from_slice(&self.body);
        v
    }

    /// The Linux-style chain for this request with room for `reply_body`
    /// bytes of reply after the out header.
    pub fn chain(&self, unique: u64, reply_body: u32) -> Chain {
        Chain::request_with_data(self.encode(unique), self.data.clone(), reply_body)
    }
}

/// A decoded reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `fuse_out_header`.
    pub header: OutHeader,
    /// Bytes after the header, cut at the header's `len`.
    pub body: Vec<u8>,
    /// Bytes the device reported in the used ring.
    pub used_len: u32,
}

impl Reply {
    /// Decodes a completion. A completion with no bytes (FORGET) decodes to
    /// an all-zero header.
    pub fn decode(c: &Completion) -> Result<Self> {
        if c.len == 0 {
            return Ok(Reply {
                header: OutHeader::default(),
                body: Vec::new(),
                used_len: 0,
            });
        }
        if c.data.len() < OUT_HEADER_LEN as usize {
            return Err(Error::BadReply(format!(
                "{} bytes is shorter than fuse_out_header",
                c.data.len()
            )));
        }
        let header = OutHeader::from_slice(&c.data[..16])
            .copied()
            .ok_or_else(|| Error::BadReply("unaligned header".into()))?;
        let end = (header.len as usize).clamp(16, c.data.len());
        Ok(Reply {
            header,
            body: c.data[16..end].to_vec(),
            used_len: c.len,
        })
    }

    /// Positive errno (0 on success).
    pub fn errno(&self) -> i32 {
        -self.header.error
    }

    /// Turns an error reply into [`Error::Fuse`].
    pub fn ok(self, opcode: u32) -> Result<Self> {
        match self.errno() {
            0 => Ok(self),
            e => Err(Error::Fuse {
                errno: e,
                name: crate::error::errno_name(e),
                opcode,
            }),
        }
    }

    /// Reads a wire struct from the start of the body.
    pub fn parse<T: ByteValued + Default>(&self) -> Result<T> {
        self.parse_at(0)
    }

    /// Reads a wire struct at `offset` in the body.
    pub fn parse_at<T: ByteValued + Default>(&self, offset: usize) -> Result<T> {
        let n = std::mem::size_of::<T>();
        let bytes = self.body.get(offset..offset + n).ok_or_else(|| {
            Error::BadReply(format!(
                "body of {} bytes too short for {} at {offset}",
                self.body.len(),
                std::any::type_name::<T>()
            ))
        })?;
        let mut v = T::default();
        v.as_mut_slice().copy_from_slice(bytes);
        Ok(v)
    }
}

/// One directory entry from READDIR or READDIRPLUS.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Name bytes.
    pub name: Vec<u8>,
    /// Inode number.
    pub ino: u64,
    /// Offset to continue reading from.
    pub off: u64,
    /// `DT_*` type.
    pub kind: u32,
    /// The entry (READDIRPLUS only).
    pub entry: Option<EntryOut>,
}

/// Parses a READDIR (`plus == false`) or READDIRPLUS body.
pub fn parse_dirents(body: &[u8], plus: bool) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let elen = std::mem::size_of::<EntryOut>();
    let dlen = std::mem::size_of::<Dirent>();
    while pos < body.len() {
        let entry = if plus {
            let mut e = EntryOut::default();
            let b = body
                .get(pos..pos + elen)
                .ok_or_else(|| Error::BadReply("truncated direntplus".into()))?;
            e.as_mut_slice().copy_from_slice(b);
            pos += elen;
            Some(e)
        } else {
            None
        };
        let mut d = Dirent::default();
        let b = body
            .get(pos..pos + dlen)
            .ok_or_else(|| Error::BadReply("truncated dirent".into()))?;
        d.as_mut_slice().copy_from_slice(b);
        pos += dlen;
        let name = body
            .get(pos..pos + d.namelen as usize)
            .ok_or_else(|| Error::BadReply("truncated dirent name".into()))?
            .to_vec();
        pos += (d.namelen as usize).div_ceil(8) * 8;
        out.push(DirEntry {
            name,
            ino: d.ino,
            off: d.off,
            kind: d.type_,
            entry,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_backend_rs::abi::fuse_abi::GetattrIn;

    #[test]
    fn encode_fills_len_unless_overridden() {
        let r = Request::new(op::GETATTR, 7).arg(&GetattrIn::default());
        let b = r.encode(42);
        assert_eq!(b.len(), 40 + 16);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 56);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), op::GETATTR);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 42);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 7);
        let lie = r.clone().with_len(9999).encode(1);
        assert_eq!(u32::from_le_bytes(lie[0..4].try_into().unwrap()), 9999);
        let w = Request::new(op::WRITE, 7).bytes(&[0; 40]).data(vec![1; 10]);
        assert_eq!(w.true_len(), 90);
        assert_eq!(w.chain(1, 0).segments.len(), 3);
    }

    #[test]
    fn decode_cuts_at_header_len_and_parses_dirents() {
        let mut data = vec![0u8; 16];
        data[0..4].copy_from_slice(&(16u32 + 32).to_le_bytes());
        data[4..8].copy_from_slice(&(-2i32).to_le_bytes());
        let mut d = Dirent {
            ino: 5,
            off: 1,
            namelen: 3,
            type_: 8,
        };
        data.extend_from_slice(d.as_slice());
        data.extend_from_slice(b"abc\0\0\0\0\0");
        data.extend_from_slice(&[0xff; 10]);
        let c = Completion {
            token: 1,
            head: 0,
            len: data.len() as u32,
            data,
        };
        let r = Reply::decode(&c).unwrap();
        assert_eq!(r.errno(), libc::ENOENT);
        assert!(r.clone().ok(op::LOOKUP).is_err());
        let ents = parse_dirents(&r.body, false).unwrap();
        assert_eq!(ents.len(), 1);
        assert_eq!(ents[0].name, b"abc");
        d.namelen = 200;
        assert!(parse_dirents(d.as_slice(), false).is_err());
    }
}

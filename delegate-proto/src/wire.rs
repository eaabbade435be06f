//! A bounded binary reader and writer for frame bodies.
//!
//! Integers are big-endian; byte strings are a `u32` length then the bytes;
//! lists are a `u16` count then the items. The reader checks every length
//! and count against the bytes that are actually there and against the
//! caller's limit before allocating, so a body can never make a decoder
//! allocate more than the body's own size.

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("body ends early (wanted {want} more bytes, {have} left)")]
    Short { want: usize, have: usize },
    #[error("{what}: {len} is over the limit of {max}")]
    Limit {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads fields from a body, front to back.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.data.len() {
            return Err(WireError::Short {
                want: n,
                have: self.data.len(),
            });
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("four bytes")))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        Ok(self.u32()? as i32)
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("eight bytes")))
    }

    /// A byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, WireError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::Limit { what, len, max });
        }
        Ok(self.take(len)?.to_vec())
    }

    /// A list count of at most `max`.
    pub fn count(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(WireError::Limit { what, len: n, max });
        }
        Ok(n)
    }

    /// Succeeds when every byte was used.
    pub fn finish(self) -> Result<(), WireError> {
        match self.data.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// Builds a body.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.u32(v as u32)
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked_before_use() {
        let mut w = Writer::default();
        w.bytes(b"abc").u16(7);
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.bytes("s", 3).unwrap(), b"abc");
        assert!(matches!(r.count("c", 6), Err(WireError::Limit { .. })));
        // A length that claims more than the body holds.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert!(matches!(
            r.bytes("s", usize::MAX),
            Err(WireError::Short { .. })
        ));
        let r = Reader::new(&[1]);
        assert_eq!(r.finish(), Err(WireError::Trailing(1)));
    }
}

//! Frames on a QEMU `-netdev stream` connection: each Ethernet frame is
//! preceded by its length as a 4-byte big-endian integer (QEMU's
//! `net_fill_rstate`; passt speaks the same on its Unix socket).
//!
//! [`FrameReader`] reads as many bytes as the socket has (up to its buffer)
//! and hands back every complete frame of that read: one wakeup, a batch
//! of frames. With batching off it reads exactly one frame per wakeup, for
//! comparison. A length larger than any frame QEMU sends means the stream
//! is out of step: that ends the connection rather than buffering without
//! bound.

use std::io::{self, Read, Write};

use crate::error::{Error, Result};

/// Largest frame accepted: QEMU's `NET_BUFSIZE` (4096 + 65536).
pub const MAX_FRAME: usize = 4096 + 65536;

/// Bytes read per wakeup at most when batching.
pub const READ_BUFFER: usize = 256 * 1024;

/// Reads length-prefixed frames from a byte stream.
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of unread data in `buf`.
    start: usize,
    /// End of valid data in `buf`.
    end: usize,
    batching: bool,
}

impl FrameReader {
    pub fn new(batching: bool) -> FrameReader {
        FrameReader {
            buf: vec![0; READ_BUFFER.max(MAX_FRAME + 4)],
            start: 0,
            end: 0,
            batching,
        }
    }

    /// Switches between several frames per read and one.
    pub fn set_batching(&mut self, on: bool) {
        self.batching = on;
    }

    /// Blocks until at least one whole frame is there and returns the
    /// complete frames read (one with batching off); `None` at end of
    /// stream. A frame of length 0 is returned as an empty slice (the
    /// caller counts it as malformed).
    pub fn read_batch<R: Read>(&mut self, r: &mut R) -> Result<Option<Vec<&[u8]>>> {
        // Keep unread bytes; move them to the front when little room is left.
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < MAX_FRAME + 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            if let Some(n) = self.complete_frames()? {
                if n > 0 {
                    break;
                }
            }
            let want = if self.batching {
                self.buf.len() - self.end
            } else {
                // Exactly what the next frame still needs.
                self.needed().min(self.buf.len() - self.end)
            };
            let got = match r.read(&mut self.buf[self.end..self.end + want]) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read frames", e)),
            };
            self.end += got;
        }
        let mut frames = Vec::new();
        let mut at = self.start;
        while let Some(len) = self.len_at(at) {
            if at + 4 + len > self.end {
                break;
            }
            frames.push(at + 4..at + 4 + len);
            at += 4 + len;
            if !self.batching {
                break;
            }
        }
        self.start = at;
        Ok(Some(frames.into_iter().map(|r| &self.buf[r]).collect()))
    }

    /// The length announced at `at`, if its 4 bytes are there.
    fn len_at(&self, at: usize) -> Option<usize> {
        let b = self.buf.get(at..at + 4).filter(|_| at + 4 <= self.end)?;
        Some(u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
    }

    /// How many complete frames are buffered; an error for an oversized
    /// length.
    fn complete_frames(&self) -> Result<Option<usize>> {
        let mut at = self.start;
        let mut n = 0;
        while let Some(len) = self.len_at(at) {
            if len > MAX_FRAME {
                return Err(Error::FrameTooLong(len));
            }
            if at + 4 + len > self.end {
                break;
            }
            at += 4 + len;
            n += 1;
        }
        Ok(Some(n))
    }

    /// Bytes still missing for the next frame.
    fn needed(&self) -> usize {
        let have = self.end - self.start;
        match self.len_at(self.start) {
            None => 4 - have,
            Some(len) => 4 + len - have,
        }
    }
}

/// Appends one frame with its length prefix to `out`.
pub fn encode(frame: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// Writes already encoded frames in one call.
pub fn write_all<W: Write>(w: &mut W, encoded: &[u8]) -> Result<()> {
    if encoded.is_empty() {
        return Ok(());
    }
    w.write_all(encoded)
        .map_err(|e| Error::io("write frames", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data in fixed pieces.
    struct Pieces(Vec<Vec<u8>>);
    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let p = &mut self.0[0];
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            p.drain(..n);
            if p.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }

    fn stream(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            encode(f, &mut v);
        }
        v
    }

    #[test]
    fn batches_what_one_read_brought() {
        let data = stream(&[b"one", b"", b"three"]);
        let mut r = Pieces(vec![data]);
        let mut fr = FrameReader::new(true);
        let batch = fr.read_batch(&mut r).unwrap().unwrap();
        assert_eq!(batch, vec![&b"one"[..], b"", b"three"]);
        assert!(fr.read_batch(&mut r).unwrap().is_none());
    }

    #[test]
    fn frames_split_across_reads_and_one_at_a_time() {
        let data = stream(&[b"alpha", b"beta"]);
        let pieces: Vec<Vec<u8>> = data.chunks(3).map(|c| c.to_vec()).collect();
        for batching in [true, false] {
            let mut r = Pieces(pieces.clone());
            let mut fr = FrameReader::new(batching);
            let mut got: Vec<Vec<u8>> = Vec::new();
            while let Some(b) = fr.read_batch(&mut r).unwrap() {
                got.extend(b.into_iter().map(|f| f.to_vec()));
            }
            assert_eq!(got, vec![b"alpha".to_vec(), b"beta".to_vec()]);
        }
        // Unbatched: never more than one frame per call.
        let mut r = Pieces(vec![stream(&[b"a", b"b"])]);
        let mut fr = FrameReader::new(false);
        assert_eq!(fr.read_batch(&mut r).unwrap().unwrap().len(), 1);
        assert_eq!(fr.read_batch(&mut r).unwrap().unwrap().len(), 1);
    }

    #[test]
    fn an_oversized_length_ends_the_stream() {
        let mut data = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 16]);
        let mut fr = FrameReader::new(true);
        assert!(matches!(
            fr.read_batch(&mut Pieces(vec![data])),
            Err(Error::FrameTooLong(_))
        ));
    }

    #[test]
    fn many_large_frames_reuse_the_buffer() {
        let big = vec![7u8; 60_000];
        let frames: Vec<&[u8]> = (0..20).map(|_| &big[..]).collect();
        let mut r = Pieces(vec![stream(&frames)]);
        let mut fr = FrameReader::new(true);
        let mut n = 0;
        while let Some(b) = fr.read_batch(&mut r).unwrap() {
            assert!(b.iter().all(|f| f.len() == 60_000));
            n += b.len();
        }
        assert_eq!(n, 20);
    }
}

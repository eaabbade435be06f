//! Frames: `kind: u8`, `len: u32` (big-endian), `len` bytes of body.
//!
//! A reader checks the kind and the length before it reads the body, so a
//! hostile peer can make it allocate at most [`MAX_PAYLOAD`] bytes and can
//! never make it wait for more than one header and one bounded body.

use std::io::{self, Read, Write};

/// Largest body of one frame. Data streams are cut into frames of at most
/// this size; requests must fit in one.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Bytes before each body.
pub const HEADER: usize = 5;

/// What a frame carries. Values are the wire's; unknown values are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Client to broker: run a delegated program ([`crate::Request`]).
    Request = 0x01,
    /// Data for the program's standard input (or terminal); empty: EOF.
    Stdin = 0x02,
    /// Deliver a signal (one byte: the Linux signal number).
    Signal = 0x03,
    /// The caller's terminal changed size ([`crate::Winsize`]).
    Winsize = 0x04,
    /// The program was authorized and started (empty body).
    Started = 0x10,
    /// Data the program wrote to standard output (or its terminal); empty: EOF.
    Stdout = 0x11,
    /// Data the program wrote to standard error; empty: EOF.
    Stderr = 0x12,
    /// The program ended ([`crate::Exit`]); the last frame of a delegation.
    Exit = 0x13,
    /// The delegation was refused or failed ([`crate::message::ErrorCode`]
    /// and a message); also the last frame of a delegation.
    Error = 0x14,
    /// Broker to agent: are you there (eight bytes, echoed in [`Kind::Pong`]).
    Ping = 0x20,
    /// Agent to broker: the echo of a ping.
    Pong = 0x21,
    /// Broker to agent: run this ([`crate::Job`]).
    Job = 0x22,
}

impl Kind {
    /// The kind of a wire byte, if it is one.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Request,
            0x02 => Kind::Stdin,
            0x03 => Kind::Signal,
            0x04 => Kind::Winsize,
            0x10 => Kind::Started,
            0x11 => Kind::Stdout,
            0x12 => Kind::Stderr,
            0x13 => Kind::Exit,
            0x14 => Kind::Error,
            0x20 => Kind::Ping,
            0x21 => Kind::Pong,
            0x22 => Kind::Job,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub body: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the stream")]
    Closed,
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("frame of {len} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLarge { len: u64 },
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// Whether the stream's position is lost (the peer must be dropped):
    /// every error except a clean close.
    pub fn desynchronised(&self) -> bool {
        !matches!(self, FrameError::Closed)
    }
}

impl Frame {
    pub fn new(kind: Kind, body: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind,
            body: body.into(),
        }
    }

    /// The frame as bytes on the wire.
    ///
    /// # Panics
    /// When the body is over [`MAX_PAYLOAD`]: callers cut data first, and
    /// encoders bound what they encode.
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(self.body.len() <= MAX_PAYLOAD, "frame body over the limit");
        let mut v = Vec::with_capacity(HEADER + self.body.len());
        v.push(self.kind as u8);
        v.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        v.extend_from_slice(&self.body);
        v
    }

    /// Writes the frame in one `write_all`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.to_bytes())
    }

    /// Reads one frame. A clean end of stream before a header is
    /// [`FrameError::Closed`]; an end inside a frame is an I/O error.
    pub fn read_from(r: &mut impl Read) -> Result<Frame, FrameError> {
        let mut h = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match r.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Err(FrameError::Closed),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (kind, len) = Self::parse_header(&h)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        Ok(Frame { kind, body })
    }

    /// Checks a header: a known kind and a length within bounds.
    pub fn parse_header(h: &[u8; HEADER]) -> Result<(Kind, usize), FrameError> {
        let kind = Kind::from_u8(h[0]).ok_or(FrameError::UnknownKind(h[0]))?;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge { len: len as u64 });
        }
        Ok((kind, len))
    }
}

/// Reassembles frames from bytes that arrive in pieces (a non-blocking
/// descriptor): feed what was read, take whole frames out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes just read.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if one is buffered. An error leaves the stream
    /// unusable (its position is lost).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let h: [u8; HEADER] = self.buf[..HEADER].try_into().expect("five bytes");
        let (kind, len) = Frame::parse_header(&h)?;
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let body = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(Frame { kind, body }))
    }

    /// Bytes buffered that do not make a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let f = Frame::new(Kind::Stdout, b"hello".to_vec());
        let bytes = f.to_bytes();
        assert_eq!(&bytes[..5], &[0x11, 0, 0, 0, 5]);
        assert_eq!(Frame::read_from(&mut &bytes[..]).unwrap(), f);

        let mut over = vec![0x02];
        over.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        assert!(matches!(
            Frame::read_from(&mut &over[..]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            Frame::read_from(&mut &[0x7f, 0, 0, 0, 0][..]),
            Err(FrameError::UnknownKind(0x7f))
        ));
        assert!(matches!(
            Frame::read_from(&mut &[][..]),
            Err(FrameError::Closed)
        ));
        // A stream that ends inside a frame is not a clean close.
        assert!(matches!(
            Frame::read_from(&mut &bytes[..7]),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn decoder_takes_frames_from_pieces() {
        let mut all = Frame::new(Kind::Stdin, b"ab".to_vec()).to_bytes();
        all.extend(Frame::new(Kind::Stdin, Vec::new()).to_bytes());
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for b in &all {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].body, b"ab");
        assert!(out[1].body.is_empty());
        assert_eq!(d.pending(), 0);
        d.push(&[0xee, 0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
    }
}

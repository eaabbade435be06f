//! The delegation protocol, shared by the three parties that speak it: the
//! client in a user VM (`guest-tools`), the host's broker (`delegate`) and
//! the job agent in a helper VM (`guest-tools`).
//!
//! Each guest reaches the host over one virtio-serial port, a single byte
//! stream, so everything is framed: a one-byte kind, a four-byte big-endian
//! length, then at most [`frame::MAX_PAYLOAD`] bytes. Framing follows
//! Qubes qrexec (typed data frames, zero length for end of stream, exit
//! status last); the bodies are fixed binary layouts, decoded with every
//! count and length bounded before it is used.
//!
//! | concern | module |
//! |---|---|
//! | the frame header, reading and writing whole frames, bounds | [`frame`] |
//! | the bounded binary reader and writer the bodies are built with | [`wire`] |
//! | typed messages: request, job, exit, error, terminal size | [`message`] |

pub mod frame;
pub mod message;
pub mod wire;

pub use frame::{Frame, FrameError, Kind, MAX_PAYLOAD};
pub use message::{ErrorCode, Exit, Job, Message, Request, Winsize};

/// Protocol version this build speaks; a request of another version is
/// answered with [`ErrorCode::Version`].
pub const VERSION: u16 = 1;

/// Name of the user VM's virtio-serial port (`/dev/virtio-ports/NAME`).
pub const CLIENT_PORT: &str = "org.fsd.delegate";

/// Name of the helper VM's virtio-serial port.
pub const AGENT_PORT: &str = "org.fsd.delegate.agent";

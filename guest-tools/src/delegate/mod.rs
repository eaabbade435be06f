//! Delegation, the guest halves: the client a user VM runs in place of a
//! delegated program, and the job agent of a helper VM
//! (docs/delegation.md). Neither is trusted by the host; they make the
//! channel convenient to use, nothing more.
//!
//! | concern | module |
//! |---|---|
//! | a virtio-serial port: open, wait for the host, drain, frames | [`port`] |
//! | the client: request, relay, exit status | [`client`] |
//! | the agent: ping, job, pty or pipes, relay, exit status | [`agent`] |
//! | the system calls both need, wrapped once | [`sys`] |

pub mod agent;
pub mod client;
pub mod port;
pub mod sys;

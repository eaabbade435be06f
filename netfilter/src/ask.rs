//! The `ask` action: a person at the host decides about one new flow, in
//! authd's trusted dialog ("process X (uid U) in VM V wants to connect to
//! D:P"), with allow once, allow always and deny. "Always" is remembered
//! by the filter for the rest of its run (same executable or name, uid,
//! peer and protocol).
//!
//! The egress path waits for the answer with the flow's first packet held
//! (the guest's connect retries meanwhile); every other flow already
//! decided keeps passing from the host side.

use std::net::SocketAddr;
use std::time::Duration;

use monitor_client::taint::{SocketOwner, Transport};
use serde::Serialize;

/// What is shown to the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Question {
    pub vm: String,
    pub owner: SocketOwner,
    pub transport: Transport,
    pub peer: SocketAddr,
}

impl Question {
    /// The sentence the dialog shows.
    pub fn text(&self) -> String {
        let exe = self
            .owner
            .exe
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        format!(
            "process {} [{}]{exe} (uid {}) in VM {} wants to connect to {} over {}",
            self.owner.name,
            self.owner.pid,
            self.owner.uid,
            self.vm,
            self.peer,
            match self.transport {
                Transport::Tcp => "TCP",
                Transport::Udp => "UDP",
            }
        )
    }
}

/// The person's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Once,
    Always,
    /// Denied, timed out, or no one could be asked (and why).
    Deny(String),
}

/// Puts a question to a person.
pub trait Asker: Send {
    fn ask(&mut self, q: &Question, timeout: Duration) -> Answer;
}

/// No dialog configured: `ask` denies, and says so in the audit log.
pub struct NoDialog;

impl Asker for NoDialog {
    fn ask(&mut self, _q: &Question, _timeout: Duration) -> Answer {
        Answer::Deny("no dialog configured (--authd)".into())
    }
}

/// An "allow always" answer, remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub exe: Option<String>,
    pub name: String,
    pub uid: u32,
    pub transport: Transport,
    pub peer: SocketAddr,
}

impl Remembered {
    pub fn from_question(q: &Question) -> Remembered {
        Remembered {
            exe: q.owner.exe.clone(),
            name: q.owner.name.clone(),
            uid: q.owner.uid,
            transport: q.transport,
            peer: q.peer,
        }
    }

    /// Whether this answer covers question `q`.
    pub fn covers(&self, q: &Question) -> bool {
        *self == Remembered::from_question(q)
    }
}

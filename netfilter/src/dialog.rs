//! `ask` answered by a person in authd's trusted dialog: the question goes
//! to authd's `confirm` call (authd-client) for the VM's principal, who sees
//! their own seal, the question, and Deny / Allow always / Allow once.
//! Anything but an allowing answer (Deny, Esc, timeout, rate limit, authd
//! unreachable) denies: the filter fails closed.

use std::path::PathBuf;
use std::time::Duration;

use authd_client::client::{Client, Denial};
use authd_client::protocol::Choice;

use crate::ask::{Answer, Asker, Question};

/// Asks through authd.
pub struct AuthdAsker {
    client: Client,
    principal: String,
}

impl AuthdAsker {
    /// authd at `socket`; questions go to `principal` (the person who uses
    /// the VM, as enrolled in authd).
    pub fn new(socket: PathBuf, principal: String) -> AuthdAsker {
        AuthdAsker {
            client: Client::new(socket),
            principal,
        }
    }
}

impl Asker for AuthdAsker {
    fn ask(&mut self, q: &Question, timeout: Duration) -> Answer {
        match self
            .client
            .confirm(&q.vm, &self.principal, &q.text(), timeout)
        {
            Ok(Choice::Once) => Answer::Once,
            Ok(Choice::Always) => Answer::Always,
            Err(Denial::ByDaemon { why, .. }) => Answer::Deny(format!("authd: {why:?}")),
            Err(Denial::Failed(e)) => Answer::Deny(format!("authd: {e}")),
        }
    }
}

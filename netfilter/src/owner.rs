//! Who owns a flow's socket in the guest: asked of the monitor, which reads
//! the guest kernel's task and socket structures from outside
//! (`socket_owners` in the monitor's protocol, docs/monitor.md). The
//! filter never walks guest memory itself, so there is one implementation
//! of the walk, in the monitor.

use std::path::PathBuf;
use std::time::Duration;

use monitor_client::taint::{SocketOwner, SocketQuery};
use monitor_client::{Client, ClientError};

/// Answers ownership queries, in order, one entry per query.
pub trait OwnerSource: Send {
    fn owners(&mut self, queries: &[SocketQuery]) -> Result<Vec<Option<SocketOwner>>, ClientError>;
}

/// The monitor daemon, over its Unix socket; reconnects after a failure.
pub struct MonitorOwners {
    socket: PathBuf,
    vm: String,
    timeout: Duration,
    client: Option<Client>,
}

impl MonitorOwners {
    pub fn new(socket: PathBuf, vm: String, timeout: Duration) -> MonitorOwners {
        MonitorOwners {
            socket,
            vm,
            timeout,
            client: None,
        }
    }
}

impl OwnerSource for MonitorOwners {
    fn owners(&mut self, queries: &[SocketQuery]) -> Result<Vec<Option<SocketOwner>>, ClientError> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self.client.insert(Client::connect(&self.socket)?),
        };
        let r = client.socket_owners(&self.vm, queries.to_vec(), self.timeout);
        if r.as_ref().is_err_and(ClientError::is_unreachable) {
            self.client = None;
        }
        r
    }
}

/// No monitor: every owner is unknown (the policy's `unknown_owner`
/// default applies to every flow).
pub struct NoOwners;

impl OwnerSource for NoOwners {
    fn owners(&mut self, queries: &[SocketQuery]) -> Result<Vec<Option<SocketOwner>>, ClientError> {
        Ok(vec![None; queries.len()])
    }
}

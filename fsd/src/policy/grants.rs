//! Where grants come from.
//!
//! A grant lets this VM act for one principal for a while. In production the
//! grants live in authd-client's [`GrantCache`], a mirror of authd's kept
//! current by a subscription (a request with a live grant costs one map
//! lookup and no IPC; an ended or revoked grant is dropped as soon as authd
//! says so, and all of them if authd goes away). [`GrantSource`] is the
//! little the guard needs of it, so that tests can stand in for authd.

use std::time::Duration;

use authd_client::client::{AuthRequest, Decision, Denial};
use authd_client::grant_cache::GrantCache;
use authd_client::protocol::Reason;

/// What is being asked, as shown to the person deciding. fsd vouches for
/// all of it but the pid: the VM is this daemon's, the principal its
/// policy's, the operation the one it decoded and the path the one it
/// resolved on the host (relative to the share). The pid is only what the
/// guest wrote in the FUSE header, and is shown as such.
#[derive(Debug, Clone)]
pub struct AccessRequest {
    pub vm: String,
    pub principal: String,
    pub operation: String,
    pub path: String,
    /// The pid in the FUSE header: reported by the guest, never trusted.
    pub guest_pid: u32,
    pub lifetime: Duration,
}

/// Why a request was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("refused: {0}")]
    Refused(String),
    #[error("authd unreachable or failed: {0}")]
    Failed(String),
}

/// Live grants, and a way to ask for one.
pub trait GrantSource: Send + Sync {
    /// Whether `principal` may act in `vm` now. Memory only: called on the
    /// request path.
    fn is_live(&self, vm: &str, principal: &str) -> bool;
    /// Asks the person at the host; blocks until they answer or `timeout`.
    fn ask(&self, req: &AccessRequest, timeout: Duration) -> Result<(), Refusal>;
}

/// No authd configured: nothing is ever granted.
pub struct NoGrants;

impl GrantSource for NoGrants {
    fn is_live(&self, _vm: &str, _principal: &str) -> bool {
        false
    }

    fn ask(&self, _req: &AccessRequest, _timeout: Duration) -> Result<(), Refusal> {
        Err(Refusal::Failed("no --authd-socket configured".into()))
    }
}

impl GrantSource for GrantCache {
    fn is_live(&self, vm: &str, principal: &str) -> bool {
        self.live(vm, principal).is_some()
    }

    fn ask(&self, req: &AccessRequest, timeout: Duration) -> Result<(), Refusal> {
        let r = AuthRequest {
            vm: req.vm.clone(),
            principal: req.principal.clone(),
            reason: Reason {
                operation: req.operation.clone(),
                path: req.path.clone(),
                pid: req.guest_pid,
                // virtio-fs does not carry the process name.
                process: String::new(),
                // Not checked. When the monitor runs, its process list of
                // this VM (`monitor_client::Client::ps`) could confirm the
                // pid and give the name; then this says so and authd shows
                // them as the host's facts.
                pid_verified: false,
            },
            lifetime: req.lifetime,
        };
        match self.ensure(&r, timeout) {
            Decision::Granted(_) => Ok(()),
            Decision::Denied(Denial::ByDaemon { why, .. }) => {
                Err(Refusal::Refused(format!("{why:?}")))
            }
            Decision::Denied(Denial::Failed(e)) => Err(Refusal::Failed(e.to_string())),
        }
    }
}

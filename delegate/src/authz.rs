//! Asking authd for the user's grant before anything runs.
//!
//! The grant is authd's per (VM, principal): a live one answers at once
//! without a prompt; otherwise authd shows its dialog (or terminal prompt)
//! with the user's seal and asks for the user's own password. Anything but
//! a grant (a wrong password, Cancel, a timeout, authd down, a malformed
//! reply) refuses: fail closed.

use std::time::Duration;

use authd_client::client::{AuthRequest, Client, Decision, Denial};
use authd_client::protocol::Reason;

/// What the broker asks authd.
pub struct Ask<'a> {
    pub vm: &'a str,
    pub principal: &'a str,
    pub program: &'a str,
    pub run_as_uid: u32,
    pub helper: &'a str,
    pub lifetime: Duration,
}

/// Asks; `Err` says why not, for the user and the audit line.
pub fn authorize(authd: &Client, ask: &Ask, timeout: Duration) -> Result<(), String> {
    let req = AuthRequest {
        vm: ask.vm.into(),
        principal: ask.principal.into(),
        reason: Reason {
            // The broker's own facts: the policy entry it matched.
            operation: format!("run as uid {} in helper VM {}", ask.run_as_uid, ask.helper),
            path: ask.program.into(),
            pid: 0,
            process: String::new(),
            pid_verified: false,
        },
        lifetime: ask.lifetime,
    };
    match authd.authenticate(&req, timeout) {
        Decision::Granted(_) => Ok(()),
        Decision::Denied(Denial::ByDaemon { why, .. }) => {
            Err(format!("authentication refused: {}", deny_name(why)))
        }
        Decision::Denied(Denial::Failed(e)) => Err(format!("authd unreachable or failed: {e}")),
    }
}

fn deny_name(why: authd_client::protocol::DenyReason) -> String {
    serde_json::to_value(why)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{why:?}"))
}

//! Grants that were live before this fsd's link to authd came up.
//!
//! fsd keeps the grants authd gave it in memory (authd-client's
//! `GrantCache`), and drops them all when the link to authd breaks, since
//! their ends can no longer be heard. Two kinds of start would then prompt
//! the person again for a grant that is still running, and refuse the
//! handles the guest opened under it: a successor after a handover starts
//! with none, and authd restarted under a running fsd (it keeps its grants
//! across restarts) comes back to a cache that dropped them. So whenever
//! the subscription comes up, the cache asks authd (the source of truth,
//! never the predecessor) which grants are live and takes over those that
//! [`adopts`] accepts: this VM's. They are honoured until they expire or
//! authd reports their end, and dropped with the rest if the link breaks
//! again. If authd does not list them, the cache does not count as linked
//! and subscribes again: meanwhile rules that ask deny, as while authd is
//! away.

use authd_client::protocol::Grant;

/// Whether this fsd, serving `vm`, takes `grant` over from authd's list:
/// authd lists every VM's grants, and only the VM's own may serve it.
pub fn adopts(vm: &str, grant: &Grant) -> bool {
    grant.vm == vm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_vms_grants() {
        let grant = |vm: &str| Grant {
            id: "a".into(),
            vm: vm.into(),
            principal: "alice".into(),
            expires_at_ms: u64::MAX,
            lifetime_secs: 60,
        };
        assert!(adopts("vm1", &grant("vm1")));
        assert!(!adopts("vm1", &grant("vm2")));
        assert!(!adopts("vm1", &grant("vm10")));
    }
}

//! The grant table. A grant lets one VM act as one principal until it
//! expires or is revoked; every end is reported through a callback so the
//! server can push it to subscribers (fsd) at once.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use authd_client::protocol::{now_unix_ms, EndCause, Grant, RevokeScope};

struct Entry {
    grant: Grant,
    deadline: Instant,
}

/// Live grants, keyed by id.
#[derive(Default)]
pub struct GrantTable {
    live: Mutex<HashMap<String, Entry>>,
    changed: Condvar,
}

/// A fresh 128-bit random id in hex.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    // getrandom(2) blocks only before the pool is initialised at boot.
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl GrantTable {
    pub fn new() -> GrantTable {
        GrantTable::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a grant for `lifetime`.
    pub fn issue(&self, vm: &str, principal: &str, lifetime: Duration) -> Grant {
        let grant = Grant {
            id: random_id(),
            vm: vm.to_owned(),
            principal: principal.to_owned(),
            expires_at_ms: now_unix_ms() + lifetime.as_millis() as u64,
            lifetime_secs: lifetime.as_secs(),
        };
        self.lock().insert(
            grant.id.clone(),
            Entry {
                grant: grant.clone(),
                deadline: Instant::now() + lifetime,
            },
        );
        self.changed.notify_all();
        grant
    }

    /// A live grant for this VM and principal, if any.
    pub fn find_live(&self, vm: &str, principal: &str) -> Option<Grant> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|e| e.deadline > now && e.grant.vm == vm && e.grant.principal == principal)
            .max_by_key(|e| e.deadline)
            .map(|e| e.grant.clone())
    }

    /// Live grants, soonest to end first.
    pub fn list(&self) -> Vec<Grant> {
        let mut v: Vec<_> = self.lock().values().map(|e| e.grant.clone()).collect();
        v.sort_by_key(|g| g.expires_at_ms);
        v
    }

    /// Removes the grants in `scope` and returns them.
    pub fn revoke(&self, scope: &RevokeScope) -> Vec<Grant> {
        let mut live = self.lock();
        let ids: Vec<String> = live
            .values()
            .filter(|e| match scope {
                RevokeScope::Grant(id) => &e.grant.id == id,
                RevokeScope::Vm(vm) => &e.grant.vm == vm,
                RevokeScope::All => true,
            })
            .map(|e| e.grant.id.clone())
            .collect();
        let out = ids
            .iter()
            .filter_map(|id| live.remove(id))
            .map(|e| e.grant)
            .collect();
        self.changed.notify_all();
        out
    }

    /// Removes and returns grants whose deadline has passed.
    pub fn take_expired(&self, now: Instant) -> Vec<Grant> {
        let mut live = self.lock();
        let ids: Vec<String> = live
            .values()
            .filter(|e| e.deadline <= now)
            .map(|e| e.grant.id.clone())
            .collect();
        ids.iter()
            .filter_map(|id| live.remove(id))
            .map(|e| e.grant)
            .collect()
    }

    /// Runs forever: ends grants at their deadline and reports each end.
    pub fn run_expiry(&self, on_end: impl Fn(&Grant, EndCause)) {
        loop {
            for g in self.take_expired(Instant::now()) {
                on_end(&g, EndCause::Expired);
            }
            let live = self.lock();
            let next = live.values().map(|e| e.deadline).min();
            let wait = match next {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if !wait.is_zero() {
                let _ = self
                    .changed
                    .wait_timeout(live, wait)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_find_revoke_expire() {
        let t = GrantTable::new();
        let a = t.issue("vm1", "alice", Duration::from_secs(60));
        let b = t.issue("vm2", "alice", Duration::from_secs(60));
        let c = t.issue("vm1", "bob", Duration::ZERO);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert_eq!(t.find_live("vm1", "alice").unwrap().id, a.id);
        assert!(
            t.find_live("vm1", "bob").is_none(),
            "zero lifetime is not live"
        );
        assert!(t.find_live("vm3", "alice").is_none());

        let expired = t.take_expired(Instant::now());
        assert_eq!(expired, vec![c]);

        let gone = t.revoke(&RevokeScope::Vm("vm2".into()));
        assert_eq!(gone, vec![b]);
        assert!(t.revoke(&RevokeScope::Grant("nope".into())).is_empty());
        assert_eq!(t.revoke(&RevokeScope::Grant(a.id.clone())), vec![a]);
        assert!(t.list().is_empty());
    }
}

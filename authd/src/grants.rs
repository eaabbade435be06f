//! The grant table. A grant lets one VM act as one principal until it
//! expires or is revoked; every end is reported through a callback so the
//! server can push it to subscribers (fsd) at once.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use authd_client::protocol::{now_unix_ms, Grant, RevokeScope};

use crate::persist::Clock;

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

    /// Puts back grants an earlier daemon saved (`crate::persist`). A grant
    /// runs until its wall-clock `expires_at_ms`, but never longer from
    /// `clock` than its lifetime or `cap` (the configured maximum): a wall
    /// clock stepped back while no daemon ran does not lengthen it. Returns
    /// the grants whose time ran out meanwhile; they are not put back.
    pub fn restore(&self, saved: Vec<Grant>, clock: &Clock, cap: Duration) -> Vec<Grant> {
        let mut expired = Vec::new();
        let mut live = self.lock();
        for grant in saved {
            let Some(left) = clock.left_until(grant.expires_at_ms) else {
                expired.push(grant);
                continue;
            };
            let left = left.min(Duration::from_secs(grant.lifetime_secs)).min(cap);
            live.insert(
                grant.id.clone(),
                Entry {
                    grant,
                    deadline: clock.mono + left,
                },
            );
        }
        self.changed.notify_all();
        expired
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

    /// Runs forever: ends grants at their deadline and reports the ones
    /// that ended together in one call (one save of the state for them).
    pub fn run_expiry(&self, on_expired: impl Fn(&[Grant])) {
        loop {
            let expired = self.take_expired(Instant::now());
            if !expired.is_empty() {
                on_expired(&expired);
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

    #[test]
    fn restored_grants_keep_their_end_and_never_outlast_their_lifetime() {
        let clock = Clock::now();
        let grant = |id: &str, in_ms: i64, lifetime_secs| Grant {
            id: id.into(),
            vm: "vm1".into(),
            principal: id.into(),
            expires_at_ms: (clock.wall_ms as i64 + in_ms) as u64,
            lifetime_secs,
        };
        let t = GrantTable::new();
        let expired = t.restore(
            vec![
                grant("live", 30_000, 60),
                grant("gone", -1, 60),
                // Ends in an hour by the wall clock, but was given 60 s: the
                // clock went back while no daemon ran.
                grant("stretched", 3_600_000, 60),
            ],
            &clock,
            Duration::from_secs(3600),
        );
        assert_eq!(
            expired.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["gone"]
        );
        let deadline = |id: &str| t.lock()[id].deadline - clock.mono;
        assert_eq!(deadline("live"), Duration::from_secs(30));
        assert_eq!(deadline("stretched"), Duration::from_secs(60));
        assert_eq!(t.find_live("vm1", "live").unwrap().id, "live");
        assert!(t.find_live("vm1", "gone").is_none());
        // A lowered maximum applies to restored grants too.
        let t = GrantTable::new();
        t.restore(
            vec![grant("capped", 30_000, 60)],
            &clock,
            Duration::from_secs(10),
        );
        assert_eq!(
            t.lock()["capped"].deadline - clock.mono,
            Duration::from_secs(10)
        );
        // What the protocol shows stays what was granted.
        assert_eq!(t.list()[0].expires_at_ms, clock.wall_ms + 30_000);
    }
}

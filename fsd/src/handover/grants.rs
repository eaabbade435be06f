//! Grants that were live when this fsd took a session over.
//!
//! fsd keeps the grants authd gave it in memory (authd-client's
//! `GrantCache`); a successor starts with none, and the guest's next access
//! to a protected file would prompt the person again for a grant that is
//! still running. So a successor asks authd (the source of truth, never the
//! predecessor) which grants are live for its VM and honours them until
//! they expire or authd reports their end. If authd does not answer, it
//! adopts nothing: access then asks again, as after any fsd start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authd_client::protocol::{now_unix_ms, Grant};

use crate::policy::grants::{AccessRequest, GrantSource, Refusal};

/// Adopted grants by id, shared with the grant-end callback.
pub type AdoptedSet = Arc<Mutex<HashMap<String, Grant>>>;

/// A grant source that also honours adopted grants.
pub struct WithAdopted {
    inner: Arc<dyn GrantSource>,
    adopted: AdoptedSet,
}

impl WithAdopted {
    pub fn new(inner: Arc<dyn GrantSource>, adopted: AdoptedSet) -> Self {
        WithAdopted { inner, adopted }
    }
}

/// Keeps the grants of `list` that belong to `vm` and have not expired.
pub fn adopt(vm: &str, list: Vec<Grant>, into: &AdoptedSet) -> usize {
    let now = now_unix_ms();
    let mut set = into.lock().unwrap();
    for g in list {
        if g.vm == vm && g.expires_at_ms > now {
            set.insert(g.id.clone(), g);
        }
    }
    set.len()
}

/// authd reported the end of `g`.
pub fn ended(g: &Grant, from: &AdoptedSet) {
    from.lock().unwrap().remove(&g.id);
}

impl GrantSource for WithAdopted {
    fn is_live(&self, vm: &str, principal: &str) -> bool {
        if self.inner.is_live(vm, principal) {
            return true;
        }
        let now = now_unix_ms();
        let mut set = self.adopted.lock().unwrap();
        set.retain(|_, g| g.expires_at_ms > now);
        set.values().any(|g| g.vm == vm && g.principal == principal)
    }

    fn ask(&self, req: &AccessRequest, timeout: Duration) -> Result<(), Refusal> {
        self.inner.ask(req, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::grants::NoGrants;

    fn grant(id: &str, vm: &str, principal: &str, in_ms: i64) -> Grant {
        Grant {
            id: id.into(),
            vm: vm.into(),
            principal: principal.into(),
            expires_at_ms: (now_unix_ms() as i64 + in_ms) as u64,
            lifetime_secs: 60,
        }
    }

    #[test]
    fn only_live_grants_of_this_vm_count_until_they_end() {
        let set = AdoptedSet::default();
        let n = adopt(
            "vm1",
            vec![
                grant("a", "vm1", "alice", 60_000),
                grant("b", "vm2", "alice", 60_000),
                grant("c", "vm1", "bob", -1),
            ],
            &set,
        );
        assert_eq!(n, 1);
        let src = WithAdopted::new(Arc::new(NoGrants), set.clone());
        assert!(src.is_live("vm1", "alice"));
        assert!(!src.is_live("vm2", "alice"), "another VM's grant");
        assert!(!src.is_live("vm1", "bob"), "an expired grant");
        ended(&grant("a", "vm1", "alice", 0), &set);
        assert!(!src.is_live("vm1", "alice"), "ended by authd");
    }
}

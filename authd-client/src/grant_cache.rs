//! What a file server keeps: a mirror of its live grants, kept current by a
//! subscription, failing closed.
//!
//! [`GrantCache::start`] subscribes before anything is asked, so no end can
//! be missed. A grant is live only while authd has not reported its end
//! **and** its `expires_at_ms` has not passed by the local clock. If the
//! subscription breaks (authd restarted or killed), every grant is dropped
//! at once and the cache subscribes again.
//!
//! [`GrantCache::start_adopting`] also takes over, with every subscription,
//! the grants authd lists as live (those the caller says are its own): authd
//! keeps its grants across a restart, and a file server that was restarted
//! or handed over starts with none, so without this the person would be
//! asked again for a grant that is still running, and handles opened under
//! it would stay refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{AuthRequest, Client, ClientError, Decision, Denial, GrantEnded};
use crate::protocol::{now_unix_ms, Grant};

/// Why a cached grant went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// authd reported the end (expired, revoked, locked).
    Reported(GrantEnded),
    /// The subscription broke: authd is gone, so is every grant.
    Disconnected(Grant),
}

impl Ended {
    pub fn grant(&self) -> &Grant {
        match self {
            Ended::Reported(e) => &e.grant,
            Ended::Disconnected(g) => g,
        }
    }
}

type OnEnd = Box<dyn Fn(&Ended) + Send + Sync>;
type Adopt = Box<dyn Fn(&Grant) -> bool + Send + Sync>;

/// The first wait before subscribing again; it doubles up to the caller's
/// `retry`. A restarted authd is usually back within this, and every grant
/// is unusable until the subscription is up again.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// How long authd may take to list its grants.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

struct Inner {
    /// Live grants by (vm, principal).
    grants: Mutex<HashMap<(String, String), Grant>>,
    /// Whether a subscription is currently established.
    subscribed: AtomicBool,
    /// Counts subscriptions; a grant is only kept if the subscription that
    /// was up when it was asked for is still the one up when it arrives.
    generation: AtomicU64,
    on_end: OnEnd,
    /// Which of authd's live grants to take over on each subscription.
    adopt: Option<Adopt>,
    stop: AtomicBool,
}

/// Live grants of one file server, mirrored from authd.
#[derive(Clone)]
pub struct GrantCache {
    client: Client,
    inner: Arc<Inner>,
}

impl GrantCache {
    /// Subscribes (retrying every `retry` while authd is unreachable) and
    /// keeps the mirror current on a background thread. `on_end` is called
    /// for every grant that ends, e.g. to flush the guest's page cache.
    /// The grant leaves the cache first and `on_end` runs after, outside
    /// the cache's lock: a callback sees the grant gone, and an observer
    /// that sees it gone may not yet have seen the callback.
    pub fn start(
        client: Client,
        retry: Duration,
        on_end: impl Fn(&Ended) + Send + Sync + 'static,
    ) -> GrantCache {
        Self::start_with(client, retry, None, Box::new(on_end))
    }

    /// As [`Self::start`], and each time the subscription comes up (the
    /// first time, and every time authd is back) takes over the grants
    /// authd lists as live that `adopt` accepts, e.g. those of the caller's
    /// VM. The list is asked for once the subscription is up and before any
    /// end is read from it: an end before the list leaves the grant out of
    /// it, an end after it is read next, so none is missed. The cache counts
    /// as subscribed only once the list is in; if authd does not list, the
    /// cache subscribes again (after the same waits as for a failed
    /// subscription) rather than run without the grants it should have.
    pub fn start_adopting(
        client: Client,
        retry: Duration,
        adopt: impl Fn(&Grant) -> bool + Send + Sync + 'static,
        on_end: impl Fn(&Ended) + Send + Sync + 'static,
    ) -> GrantCache {
        Self::start_with(client, retry, Some(Box::new(adopt)), Box::new(on_end))
    }

    fn start_with(client: Client, retry: Duration, adopt: Option<Adopt>, on_end: OnEnd) -> Self {
        let inner = Arc::new(Inner {
            grants: Mutex::new(HashMap::new()),
            subscribed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            on_end,
            adopt,
            stop: AtomicBool::new(false),
        });
        let (c, i) = (client.clone(), inner.clone());
        std::thread::Builder::new()
            .name("authd-grants".into())
            .spawn(move || watch(c, i, retry))
            .expect("spawn grant watcher");
        GrantCache { client, inner }
    }

    /// Waits until the subscription is up (or `timeout` passes).
    pub fn wait_subscribed(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.inner.subscribed.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.inner.subscribed.load(Ordering::SeqCst)
    }

    /// The live grant for this VM and principal, if any.
    pub fn live(&self, vm: &str, principal: &str) -> Option<Grant> {
        let mut g = self.inner.grants.lock().unwrap_or_else(|p| p.into_inner());
        let key = (vm.to_owned(), principal.to_owned());
        match g.get(&key) {
            Some(grant) if grant.expires_at_ms > now_unix_ms() => Some(grant.clone()),
            Some(_) => {
                // Past its time by our clock: gone, even if the event is late.
                g.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Every live grant in the cache.
    pub fn live_grants(&self) -> Vec<Grant> {
        let now = now_unix_ms();
        let g = self.inner.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.values()
            .filter(|g| g.expires_at_ms > now)
            .cloned()
            .collect()
    }

    /// Returns the live grant, or asks authd for one. Without a working
    /// subscription nothing is granted: a grant whose end could not be
    /// heard would outlive its revocation.
    pub fn ensure(&self, req: &AuthRequest, timeout: Duration) -> Decision {
        if let Some(g) = self.live(&req.vm, &req.principal) {
            return Decision::Granted(g);
        }
        let generation = self.inner.generation.load(Ordering::SeqCst);
        if !self.inner.subscribed.load(Ordering::SeqCst) {
            return Decision::Denied(Denial::Failed(ClientError::Disconnected));
        }
        let decision = self.client.authenticate(req, timeout);
        if let Decision::Granted(g) = &decision {
            // Checked under the lock the watcher takes to drop everything, so
            // a grant from a daemon that has since gone away is never kept.
            let mut grants = self.inner.grants.lock().unwrap_or_else(|p| p.into_inner());
            if !self.inner.subscribed.load(Ordering::SeqCst)
                || self.inner.generation.load(Ordering::SeqCst) != generation
            {
                return Decision::Denied(Denial::Failed(ClientError::Disconnected));
            }
            grants.insert((g.vm.clone(), g.principal.clone()), g.clone());
        }
        decision
    }

    /// Stops the background thread at its next wake-up.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
    }
}

fn drop_all(inner: &Inner) {
    let all: Vec<Grant> = inner
        .grants
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, g)| g)
        .collect();
    for g in all {
        (inner.on_end)(&Ended::Disconnected(g));
    }
}

/// The grants of authd's list that `adopt` accepts and that are live, one
/// per (VM, principal): the one that lasts longest, as authd would answer.
fn adoptable(list: Vec<Grant>, adopt: &Adopt) -> HashMap<(String, String), Grant> {
    let now = now_unix_ms();
    let mut out: HashMap<(String, String), Grant> = HashMap::new();
    for g in list
        .into_iter()
        .filter(|g| g.expires_at_ms > now && adopt(g))
    {
        let key = (g.vm.clone(), g.principal.clone());
        match out.get(&key) {
            Some(o) if o.expires_at_ms >= g.expires_at_ms => {}
            _ => {
                out.insert(key, g);
            }
        }
    }
    out
}

fn watch(client: Client, inner: Arc<Inner>, retry: Duration) {
    let mut wait = FIRST_RETRY.min(retry);
    let backoff = |wait: &mut Duration| {
        std::thread::sleep(*wait);
        *wait = (*wait * 2).min(retry);
    };
    while !inner.stop.load(Ordering::SeqCst) {
        let mut sub = match client.subscribe(Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("authd subscribe: {e}");
                backoff(&mut wait);
                continue;
            }
        };
        let adopted = match &inner.adopt {
            None => None,
            Some(adopt) => match client.list_grants(LIST_TIMEOUT) {
                Ok(list) => Some(adoptable(list, adopt)),
                Err(e) => {
                    log::warn!("authd does not list its grants ({e}); subscribing again");
                    backoff(&mut wait);
                    continue;
                }
            },
        };
        {
            let mut g = inner.grants.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(adopted) = &adopted {
                g.extend(adopted.clone());
            }
            inner.generation.fetch_add(1, Ordering::SeqCst);
            inner.subscribed.store(true, Ordering::SeqCst);
        }
        wait = FIRST_RETRY.min(retry);
        if let Some(adopted) = adopted {
            log::info!(
                "authd subscription up; {} live grants taken over from its list",
                adopted.len()
            );
        }
        loop {
            if inner.stop.load(Ordering::SeqCst) {
                break;
            }
            match sub.next_event(Some(Duration::from_millis(500))) {
                Ok(Some(ended)) => {
                    let key = (ended.grant.vm.clone(), ended.grant.principal.clone());
                    {
                        let mut g = inner.grants.lock().unwrap_or_else(|p| p.into_inner());
                        if g.get(&key).is_some_and(|x| x.id == ended.grant.id) {
                            g.remove(&key);
                        }
                    }
                    (inner.on_end)(&Ended::Reported(ended));
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("authd subscription ended: {e}; dropping all grants");
                    break;
                }
            }
        }
        {
            let _g = inner.grants.lock().unwrap_or_else(|p| p.into_inner());
            inner.subscribed.store(false, Ordering::SeqCst);
        }
        drop_all(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, vm: &str, principal: &str, in_ms: i64) -> Grant {
        Grant {
            id: id.into(),
            vm: vm.into(),
            principal: principal.into(),
            expires_at_ms: (now_unix_ms() as i64 + in_ms) as u64,
            lifetime_secs: 600,
        }
    }

    #[test]
    fn adopts_live_accepted_grants_the_longest_per_principal() {
        let adopt: Adopt = Box::new(|g| g.vm == "vm1");
        let got = adoptable(
            vec![
                grant("short", "vm1", "alice", 60_000),
                grant("long", "vm1", "alice", 120_000),
                grant("bob", "vm1", "bob", 60_000),
                grant("ended", "vm1", "carol", -1),
                grant("other", "vm2", "alice", 60_000),
            ],
            &adopt,
        );
        let mut ids: Vec<&str> = got.values().map(|g| g.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["bob", "long"]);
        assert_eq!(got[&("vm1".to_owned(), "alice".to_owned())].id, "long");
    }
}

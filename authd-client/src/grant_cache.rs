//! What a file server keeps: a mirror of its live grants, kept current by a
//! subscription, failing closed.
//!
//! [`GrantCache::start`] subscribes before anything is asked, so no end can
//! be missed. A grant is live only while authd has not reported its end
//! **and** its `expires_at_ms` has not passed by the local clock. If the
//! subscription breaks (authd restarted or killed), every grant is dropped
//! at once and the cache subscribes again.

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

struct Inner {
    /// Live grants by (vm, principal).
    grants: Mutex<HashMap<(String, String), Grant>>,
    /// Whether a subscription is currently established.
    subscribed: AtomicBool,
    /// Counts subscriptions; a grant is only kept if the subscription that
    /// was up when it was asked for is still the one up when it arrives.
    generation: AtomicU64,
    on_end: OnEnd,
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
    pub fn start(
        client: Client,
        retry: Duration,
        on_end: impl Fn(&Ended) + Send + Sync + 'static,
    ) -> GrantCache {
        let inner = Arc::new(Inner {
            grants: Mutex::new(HashMap::new()),
            subscribed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            on_end: Box::new(on_end),
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

fn watch(client: Client, inner: Arc<Inner>, retry: Duration) {
    while !inner.stop.load(Ordering::SeqCst) {
        let mut sub = match client.subscribe(Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("authd subscribe: {e}");
                std::thread::sleep(retry);
                continue;
            }
        };
        {
            let _g = inner.grants.lock().unwrap_or_else(|p| p.into_inner());
            inner.generation.fetch_add(1, Ordering::SeqCst);
            inner.subscribed.store(true, Ordering::SeqCst);
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

//! Live grants, and asking for new ones.
//!
//! A grant lets this VM act for one principal until it expires or authd
//! ends it (revoke, "lock now"). fsd keeps them in memory, so a request on
//! a protected file with a live grant costs one map lookup and no IPC.
//! Asking goes through an [`Authorizer`] (authd in production); one ask per
//! principal at a time, and the others waiting for it re-check afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// What is being asked, as shown to the person deciding. Everything but
/// `vm` and `principal` comes from the guest and is labelled as such.
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

/// A grant as handed out by the authorizer.
#[derive(Debug, Clone)]
pub struct Granted {
    pub id: String,
    pub lifetime: Duration,
}

/// Why a request was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("refused by the user or authd: {0}")]
    Refused(String),
    #[error("authd unreachable or failed: {0}")]
    Failed(String),
}

/// Something that can ask the person at the host.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, req: &AccessRequest, timeout: Duration) -> Result<Granted, Refusal>;
}

#[derive(Debug, Clone)]
struct Live {
    id: String,
    until: Instant,
}

/// Grants of this VM, by principal.
#[derive(Default)]
pub struct Grants {
    live: RwLock<HashMap<String, Live>>,
    asking: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Grants {
    /// Whether `principal` has a live grant now.
    pub fn is_live(&self, principal: &str) -> bool {
        self.live
            .read()
            .unwrap()
            .get(principal)
            .is_some_and(|g| g.until > Instant::now())
    }

    /// Records a grant.
    pub fn insert(&self, principal: &str, granted: &Granted) {
        self.live.write().unwrap().insert(
            principal.to_owned(),
            Live {
                id: granted.id.clone(),
                until: Instant::now() + granted.lifetime,
            },
        );
    }

    /// Ends a grant by id (authd pushed its end). Returns the principal.
    pub fn end(&self, id: &str) -> Option<String> {
        let mut live = self.live.write().unwrap();
        let principal = live
            .iter()
            .find(|(_, g)| g.id == id)
            .map(|(p, _)| p.clone())?;
        live.remove(&principal);
        Some(principal)
    }

    /// Ends every grant (authd went away: fail closed).
    pub fn end_all(&self) -> Vec<String> {
        self.live.write().unwrap().drain().map(|(p, _)| p).collect()
    }

    /// Grants that have expired by time, removed and returned.
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut live = self.live.write().unwrap();
        let gone: Vec<String> = live
            .iter()
            .filter(|(_, g)| g.until <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &gone {
            live.remove(p);
        }
        gone
    }

    /// Asks once for `req.principal`, unless a grant appears meanwhile.
    pub fn ask(
        &self,
        auth: &dyn Authorizer,
        req: &AccessRequest,
        timeout: Duration,
    ) -> Result<(), Refusal> {
        let gate = self
            .asking
            .lock()
            .unwrap()
            .entry(req.principal.clone())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().unwrap();
        if self.is_live(&req.principal) {
            return Ok(());
        }
        let g = auth.authorize(req, timeout)?;
        self.insert(&req.principal, &g);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize, bool);
    impl Authorizer for Counting {
        fn authorize(&self, _r: &AccessRequest, _t: Duration) -> Result<Granted, Refusal> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            if self.1 {
                Ok(Granted {
                    id: "g1".into(),
                    lifetime: Duration::from_secs(60),
                })
            } else {
                Err(Refusal::Refused("no".into()))
            }
        }
    }

    fn req() -> AccessRequest {
        AccessRequest {
            vm: "vm".into(),
            principal: "alice".into(),
            operation: "open".into(),
            path: "s/f".into(),
            guest_pid: 1,
            lifetime: Duration::from_secs(60),
        }
    }

    #[test]
    fn concurrent_asks_coalesce() {
        let g = Arc::new(Grants::default());
        let a = Arc::new(Counting(AtomicUsize::new(0), true));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (g, a) = (g.clone(), a.clone());
                std::thread::spawn(move || g.ask(a.as_ref(), &req(), Duration::from_secs(1)))
            })
            .collect();
        for h in hs {
            h.join().unwrap().unwrap();
        }
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert!(g.is_live("alice"));
        assert_eq!(g.end("g1").as_deref(), Some("alice"));
        assert!(!g.is_live("alice"));
    }

    #[test]
    fn refusal_leaves_no_grant_and_expiry_ends_one() {
        let g = Grants::default();
        let no = Counting(AtomicUsize::new(0), false);
        assert!(g.ask(&no, &req(), Duration::from_secs(1)).is_err());
        assert!(!g.is_live("alice"));
        g.insert(
            "alice",
            &Granted {
                id: "x".into(),
                lifetime: Duration::ZERO,
            },
        );
        assert!(!g.is_live("alice"));
        assert_eq!(g.expire(), vec!["alice".to_string()]);
    }
}

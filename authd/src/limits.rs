//! Abuse resistance. A hostile guest can trigger prompts at will; these
//! limits keep it from flooding the screen or guessing passwords:
//!
//! * [`Faillock`]: per principal, an increasing delay after each failure and a
//!   lockout after `deny` failures within `fail_interval` (pam_faillock's model
//!   and defaults: 3 failures in 15 min lock for 10 min).
//! * [`PromptRate`]: per VM, at most `max_prompts` prompts in a sliding window.
//!
//! Both take `now` as an argument so their rules are tested without sleeping.
//! Both survive a restart of the daemon: they are saved in wall-clock time
//! (`export`) and put back (`restore`) through [`crate::persist`], so a
//! restart gives a guesser no fresh attempts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{FaillockConfig, PromptRateConfig};
use crate::persist::{Clock, FailRecord};

#[derive(Default)]
struct Failures {
    recent: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

/// Failure counting and lockout per principal.
pub struct Faillock {
    cfg: FaillockConfig,
    by_principal: Mutex<HashMap<String, Failures>>,
}

/// What the faillock allows right now.
#[derive(Debug, PartialEq, Eq)]
pub enum FailState {
    /// Prompt after waiting this long (zero when there are no recent failures).
    Allowed { delay: Duration },
    /// Locked; retry after this long.
    Locked { remaining: Duration },
}

impl Faillock {
    pub fn new(cfg: FaillockConfig) -> Faillock {
        Faillock {
            cfg,
            by_principal: Mutex::new(HashMap::new()),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.fail_interval_secs)
    }

    pub fn state(&self, principal: &str, now: Instant) -> FailState {
        let mut map = self.by_principal.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = map.get_mut(principal) else {
            return FailState::Allowed {
                delay: Duration::ZERO,
            };
        };
        if let Some(until) = f.locked_until {
            if now < until {
                return FailState::Locked {
                    remaining: until - now,
                };
            }
            // Lock over: start afresh, as pam_faillock does after unlock_time.
            f.locked_until = None;
            f.recent.clear();
        }
        let interval = self.interval();
        f.recent
            .retain(|t| now.saturating_duration_since(*t) < interval);
        let n = f.recent.len() as u32;
        let delay = if n == 0 {
            Duration::ZERO
        } else {
            let ms = self
                .cfg
                .delay_base_ms
                .saturating_mul(1u64 << (n - 1).min(16))
                .min(self.cfg.delay_max_ms);
            Duration::from_millis(ms)
        };
        FailState::Allowed { delay }
    }

    /// Counts a wrong password; returns true if the principal is now locked.
    pub fn record_failure(&self, principal: &str, now: Instant) -> bool {
        let mut map = self.by_principal.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.entry(principal.to_owned()).or_default();
        let interval = self.interval();
        f.recent
            .retain(|t| now.saturating_duration_since(*t) < interval);
        f.recent.push_back(now);
        if self.cfg.deny > 0 && f.recent.len() as u32 >= self.cfg.deny {
            f.locked_until = Some(now + Duration::from_secs(self.cfg.unlock_time_secs));
            true
        } else {
            false
        }
    }

    /// A correct password clears the failure record.
    pub fn record_success(&self, principal: &str) {
        let mut map = self.by_principal.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(principal);
    }

    /// Locks `principal` out for `unlock_time_secs` from `now`, as if it
    /// had just failed `deny` times: for when its failures are unknown
    /// (an unusable runtime state file).
    pub fn lock_out(&self, principal: &str, now: Instant) {
        let mut map = self.by_principal.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.entry(principal.to_owned()).or_default();
        f.locked_until = Some(now + Duration::from_secs(self.cfg.unlock_time_secs));
    }

    /// The failure records in wall-clock time, for the runtime state file.
    pub fn export(&self, clock: &Clock) -> BTreeMap<String, FailRecord> {
        let map = self.by_principal.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, f)| !f.recent.is_empty() || f.locked_until.is_some())
            .map(|(principal, f)| {
                let record = FailRecord {
                    failures_ms: f.recent.iter().map(|t| clock.wall_of(*t)).collect(),
                    locked_until_ms: f.locked_until.map(|t| clock.wall_of(t)),
                };
                (principal.clone(), record)
            })
            .collect()
    }

    /// Puts back records an earlier daemon saved. Failures older than
    /// `fail_interval_secs` and lockouts that have ended are dropped, as
    /// [`Self::state`] would drop them; a lockout never runs longer from
    /// `clock` than `unlock_time_secs`, and a failure time the wall clock
    /// has not reached yet counts as now (longer, never shorter).
    pub fn restore(&self, saved: BTreeMap<String, FailRecord>, clock: &Clock) {
        let interval = self.interval();
        let unlock = Duration::from_secs(self.cfg.unlock_time_secs);
        let mut map = self.by_principal.lock().unwrap_or_else(|p| p.into_inner());
        for (principal, record) in saved {
            let locked_until = match record.locked_until_ms {
                Some(ms) => match clock.left_until(ms) {
                    Some(left) => Some(clock.mono + left.min(unlock)),
                    // The lock ended while no daemon ran: start afresh.
                    None => continue,
                },
                None => None,
            };
            let mut recent: Vec<Instant> = record
                .failures_ms
                .iter()
                .map(|ms| clock.age_of(*ms))
                .filter(|age| *age < interval)
                .map(|age| clock.instant_ago(age))
                .collect();
            recent.sort();
            if recent.is_empty() && locked_until.is_none() {
                continue;
            }
            map.insert(
                principal,
                Failures {
                    recent: recent.into(),
                    locked_until,
                },
            );
        }
    }
}

/// Sliding-window prompt limit per VM.
pub struct PromptRate {
    cfg: PromptRateConfig,
    by_vm: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl PromptRate {
    pub fn new(cfg: PromptRateConfig) -> PromptRate {
        PromptRate {
            cfg,
            by_vm: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one prompt from the VM's allowance, or says how long until the
    /// next one is allowed.
    pub fn try_take(&self, vm: &str, now: Instant) -> Result<(), Duration> {
        let window = Duration::from_secs(self.cfg.window_secs);
        let mut map = self.by_vm.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.entry(vm.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            q.pop_front();
        }
        if (q.len() as u32) < self.cfg.max_prompts {
            q.push_back(now);
            Ok(())
        } else {
            let oldest = *q.front().expect("non-empty when at the limit");
            Err(window.saturating_sub(now.saturating_duration_since(oldest)))
        }
    }

    /// The prompt times in wall-clock time, for the runtime state file.
    pub fn export(&self, clock: &Clock) -> BTreeMap<String, Vec<u64>> {
        let map = self.by_vm.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(vm, q)| (vm.clone(), q.iter().map(|t| clock.wall_of(*t)).collect()))
            .collect()
    }

    /// Puts back prompt times an earlier daemon saved; those outside the
    /// window are dropped, and a time the wall clock has not reached yet
    /// counts as now.
    pub fn restore(&self, saved: BTreeMap<String, Vec<u64>>, clock: &Clock) {
        let window = Duration::from_secs(self.cfg.window_secs);
        let mut map = self.by_vm.lock().unwrap_or_else(|p| p.into_inner());
        for (vm, times) in saved {
            let mut q: Vec<Instant> = times
                .iter()
                .map(|ms| clock.age_of(*ms))
                .filter(|age| *age < window)
                .map(|age| clock.instant_ago(age))
                .collect();
            q.sort();
            if !q.is_empty() {
                map.insert(vm, q.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fl() -> Faillock {
        Faillock::new(FaillockConfig {
            deny: 3,
            fail_interval_secs: 900,
            unlock_time_secs: 600,
            delay_base_ms: 1000,
            delay_max_ms: 8000,
        })
    }

    #[test]
    fn delays_grow_then_lock_then_unlock() {
        let f = fl();
        let t0 = Instant::now();
        let s = |t| f.state("alice", t);
        assert_eq!(
            s(t0),
            FailState::Allowed {
                delay: Duration::ZERO
            }
        );
        assert!(!f.record_failure("alice", t0));
        assert_eq!(
            s(t0),
            FailState::Allowed {
                delay: Duration::from_secs(1)
            }
        );
        assert!(!f.record_failure("alice", t0));
        assert_eq!(
            s(t0),
            FailState::Allowed {
                delay: Duration::from_secs(2)
            }
        );
        // Other principals are unaffected.
        assert_eq!(
            f.state("bob", t0),
            FailState::Allowed {
                delay: Duration::ZERO
            }
        );
        assert!(f.record_failure("alice", t0 + Duration::from_secs(10)));
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            s(later),
            FailState::Locked {
                remaining: Duration::from_secs(590)
            }
        );
        let after = t0 + Duration::from_secs(611);
        assert_eq!(
            s(after),
            FailState::Allowed {
                delay: Duration::ZERO
            }
        );
    }

    #[test]
    fn failures_age_out_and_success_clears() {
        let f = fl();
        let t0 = Instant::now();
        f.record_failure("alice", t0);
        f.record_failure("alice", t0);
        // 15 minutes later both have aged out: a third failure does not lock.
        assert!(!f.record_failure("alice", t0 + Duration::from_secs(901)));
        f.record_success("alice");
        assert_eq!(
            f.state("alice", t0 + Duration::from_secs(902)),
            FailState::Allowed {
                delay: Duration::ZERO
            }
        );
    }

    #[test]
    fn prompt_rate_window() {
        let r = PromptRate::new(PromptRateConfig {
            max_prompts: 2,
            window_secs: 60,
        });
        let t0 = Instant::now();
        assert!(r.try_take("vm1", t0).is_ok());
        assert!(r.try_take("vm1", t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            r.try_take("vm1", t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert!(r.try_take("vm2", t0).is_ok(), "per VM");
        assert!(r.try_take("vm1", t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn failures_and_lockouts_survive_export_and_restore() {
        let clock = Clock::now();
        let t0 = clock.mono;
        let before = fl();
        before.record_failure("alice", t0);
        before.record_failure("alice", t0);
        for _ in 0..3 {
            before.record_failure("bob", t0);
        }
        let saved = before.export(&clock);
        assert_eq!(saved["alice"].failures_ms, [clock.wall_ms, clock.wall_ms]);
        assert_eq!(saved["bob"].locked_until_ms, Some(clock.wall_ms + 600_000));

        let after = fl();
        after.restore(saved, &clock);
        // alice's two failures still count: the third locks.
        assert_eq!(
            after.state("alice", t0),
            FailState::Allowed {
                delay: Duration::from_secs(2)
            }
        );
        assert!(after.record_failure("alice", t0));
        assert_eq!(
            after.state("bob", t0),
            FailState::Locked {
                remaining: Duration::from_secs(600)
            }
        );
    }

    #[test]
    fn restore_drops_what_has_run_out_and_never_lengthens_a_lockout() {
        let clock = Clock::now();
        let f = fl();
        let rec = |failures_ms: Vec<u64>, locked_until_ms| FailRecord {
            failures_ms,
            locked_until_ms,
        };
        f.restore(
            [
                // 16 minutes ago: outside the 15-minute interval.
                ("old".to_owned(), rec(vec![clock.wall_ms - 960_000], None)),
                // The lock ended while no daemon ran.
                (
                    "unlocked".to_owned(),
                    rec(vec![clock.wall_ms - 1000], Some(clock.wall_ms - 1)),
                ),
                // Locked "for two hours": the wall clock went back.
                (
                    "stretched".to_owned(),
                    rec(vec![], Some(clock.wall_ms + 7_200_000)),
                ),
            ]
            .into(),
            &clock,
        );
        assert!(f.export(&clock).keys().eq(["stretched"]));
        assert_eq!(
            f.state("stretched", clock.mono),
            FailState::Locked {
                remaining: Duration::from_secs(600)
            }
        );
        f.lock_out("carol", clock.mono);
        assert_eq!(
            f.state("carol", clock.mono),
            FailState::Locked {
                remaining: Duration::from_secs(600)
            }
        );
    }

    #[test]
    fn prompt_times_survive_export_and_restore() {
        let cfg = PromptRateConfig {
            max_prompts: 2,
            window_secs: 60,
        };
        let clock = Clock::now();
        let before = PromptRate::new(cfg.clone());
        assert!(before.try_take("vm1", clock.mono).is_ok());
        assert!(before.try_take("vm1", clock.mono).is_ok());
        let after = PromptRate::new(cfg);
        after.restore(before.export(&clock), &clock);
        assert_eq!(
            after.try_take("vm1", clock.mono),
            Err(Duration::from_secs(60))
        );
        assert!(after.try_take("vm2", clock.mono).is_ok());
    }
}

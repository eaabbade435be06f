//! Labels that follow data within one VM, as far as fsd alone can see.
//!
//! When a guest process reads a file whose rule has `inherit`, and the same
//! process then writes a file that carries no label, fsd gives that file
//! the rule's label before the data lands in it: `cp secret/a /tmp/b`
//! leaves `/tmp/b` as protected as `secret/a`. fsd decides this on its own,
//! synchronously, with state in its memory (no request ever waits for the
//! monitor): a table of the pids that read such files, checked on WRITE.
//!
//! **The pid is the one in the FUSE header, written by the guest kernel.**
//! This is a convenience for honest programs, not a barrier against a
//! compromised guest kernel, which can put any pid there:
//!
//! * it can evade the table (a forged pid on its writes): the monitor, with
//!   hooks in the guest kernel, is what follows data reliably, and it tells
//!   fsd of derived files too (`taint_link`);
//! * it can make fsd label a file it writes anyway: it can only make a file
//!   it could write *more* protected, which fails closed.
//!
//! fsd does not see forks, exits or pid reuse, so an entry lasts [`TTL`]
//! after the pid's last read of such a file; a new process that gets the
//! pid within that time has its writes labelled too (over-protection, never
//! less). Children of a reader and data passed through pipes or sockets
//! are not seen here. The table holds at most [`MAX_READERS`] pids; beyond,
//! the longest idle are forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Pids remembered at most.
pub const MAX_READERS: usize = 4096;

/// How long after its last read a pid's writes inherit.
pub const TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Reader {
    rule: u32,
    at: Instant,
}

/// Pids that read files whose rule inherits.
pub struct Readers {
    map: Mutex<HashMap<u32, Reader>>,
    /// Entries in `map`: lets a WRITE skip the lock when nobody read.
    len: AtomicUsize,
    max: usize,
    ttl: Duration,
}

impl Default for Readers {
    fn default() -> Self {
        Readers::with_limits(MAX_READERS, TTL)
    }
}

impl Readers {
    pub fn with_limits(max: usize, ttl: Duration) -> Readers {
        Readers {
            map: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
            max: max.max(1),
            ttl,
        }
    }

    /// `pid` read a file of `rule` just now.
    pub fn note(&self, pid: u32, rule: u32) {
        if pid == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= self.max && !map.contains_key(&pid) {
            map.retain(|_, r| now.duration_since(r.at) < self.ttl);
            if map.len() >= self.max {
                // Forget the longest idle quarter at once, so that a flood
                // of pids costs one sort per max/4 reads.
                let mut ages: Vec<Instant> = map.values().map(|r| r.at).collect();
                let cut = ages.len() / 4;
                ages.select_nth_unstable(cut);
                let oldest = ages[cut];
                map.retain(|_, r| r.at > oldest);
            }
        }
        map.insert(pid, Reader { rule, at: now });
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// The rule whose data `pid` may hold, if it read one recently.
    pub fn rule_of(&self, pid: u32) -> Option<u32> {
        if pid == 0 || self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let r = *map.get(&pid)?;
        if r.at.elapsed() >= self.ttl {
            map.remove(&pid);
            self.len.store(map.len(), Ordering::Relaxed);
            return None;
        }
        Some(r.rule)
    }

    /// Forgets everything (a policy reload renumbers rules).
    pub fn clear(&self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.clear();
        self.len.store(0, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_are_remembered_for_a_while() {
        let r = Readers::with_limits(8, Duration::from_millis(50));
        assert_eq!(r.rule_of(7), None);
        r.note(7, 3);
        r.note(0, 3);
        assert_eq!((r.rule_of(7), r.rule_of(0), r.len()), (Some(3), None, 1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.rule_of(7), None, "expired");
        assert!(r.is_empty());
    }

    #[test]
    fn a_flood_of_pids_stays_bounded_and_keeps_the_recent() {
        let r = Readers::with_limits(100, TTL);
        for pid in 1..=100_000 {
            r.note(pid, 1);
        }
        assert!(r.len() <= 100);
        assert_eq!(r.rule_of(100_000), Some(1));
        r.clear();
        assert_eq!(r.rule_of(100_000), None);
    }
}

//! Pausing request processing before a handover.
//!
//! The queue threads stop popping: a kick that arrives while paused is
//! consumed and ignored, and whoever serves next (the successor, or this
//! process when the handover failed) kicks every queue once itself, so no
//! request is left in the ring unnoticed. Requests already popped finish
//! and are answered; the pause waits for them. A request that waits for
//! long (a blocking lock, a prompt) may not end within the pause's bound:
//! the handover is then given up and the old process goes on serving (see
//! docs/rejuvenation.md, "Blocking requests").

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// The pause switch and the count of requests popped but not answered.
#[derive(Default)]
pub struct Quiesce {
    paused: AtomicBool,
    /// Held (shared) by a queue thread while it pops; taken exclusively by
    /// [`Self::pause`] to know that none is popping any more.
    gate: RwLock<()>,
    /// Requests popped and not answered. An atomic, not a mutex: every
    /// request passes here twice, and only a pause needs to be woken.
    in_flight: AtomicUsize,
    /// Taken by a pause while it checks the count, and by the last answer
    /// before it wakes the pause, so that no wake-up falls between.
    waiting: Mutex<()>,
    idle: Condvar,
}

/// One request popped and not yet answered.
pub struct InFlight(Arc<Quiesce>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let q = &self.0;
        // No system call on the request path unless a pause waits.
        if q.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 && q.paused.load(Ordering::Acquire) {
            let _g = q.waiting.lock().unwrap();
            q.idle.notify_all();
        }
    }
}

impl Quiesce {
    /// A queue thread may pop while it holds the returned guard; `None`
    /// while paused.
    pub fn enter(&self) -> Option<RwLockReadGuard<'_, ()>> {
        let g = self.gate.read().unwrap();
        (!self.paused.load(Ordering::Acquire)).then_some(g)
    }

    /// Counts a popped request until the returned value is dropped.
    pub fn popped(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Stops popping and waits up to `wait` for popped requests to be
    /// answered; `Err(n)` with the number still unanswered (still paused:
    /// call [`Self::resume`]).
    pub fn pause(&self, wait: Duration) -> Result<(), usize> {
        self.paused.store(true, Ordering::Release);
        // No queue thread is between `enter` and the end of its pass.
        drop(self.gate.write().unwrap());
        let deadline = Instant::now() + wait;
        let mut g = self.waiting.lock().unwrap();
        loop {
            let n = self.in_flight.load(Ordering::Acquire);
            if n == 0 {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(n);
            }
            g = self.idle.wait_timeout(g, left).unwrap().0;
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Requests popped and not answered now, on every queue.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_waits_for_popped_requests() {
        let q = Arc::new(Quiesce::default());
        let r = q.popped();
        assert!(q.enter().is_some());
        assert_eq!(q.pause(Duration::from_millis(20)), Err(1));
        assert!(q.enter().is_none(), "paused: nothing is popped");
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.pause(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        drop(r);
        assert_eq!(t.join().unwrap(), Ok(()));
        q.resume();
        assert!(q.enter().is_some());
    }
}

//! Adaptive polling of a request queue before its thread sleeps.
//!
//! A guest that waits for each answer before it sends the next request (a
//! shell, a compiler reading headers one by one, a package manager's
//! `stat` storm) makes every request pay two thread wake-ups: the daemon's
//! on the kick and the guest's on the interrupt. On an idle host a wake-up
//! costs tens of microseconds, many times a GETATTR. So after a batch the
//! queue's thread watches the available ring for a short while before it
//! goes back to epoll, with kicks left off (under `VIRTIO_RING_F_EVENT_IDX`
//! the guest does not kick while the device has not asked for it), and takes
//! the next request of a synchronous guest without a kick or a wake-up.
//!
//! The window adapts per queue the way QEMU's event loop does for its
//! `poll-max-ns`: it grows (doubling) while the queue's waits are shorter
//! than the maximum, since a poll that long would have caught the request,
//! and halves after a wait longer than the maximum, down to zero, so an
//! idle or a slow guest costs no CPU after a few sleeps. The poll yields
//! the core on every turn, so on a host with more runnable threads than
//! cores it takes little time from them, and at most half the host's cores
//! (at least one) poll at once, whatever the number of queues.
//! `--poll-max-us=0` turns polling off.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The first window after a short wait.
const FIRST_WINDOW_NS: u64 = 4_000;

/// Polling state of every queue of one device.
#[derive(Debug)]
pub struct Poller {
    max_ns: u64,
    /// The clock's origin; times below are nanoseconds since it.
    origin: Instant,
    queues: Box<[QueuePoll]>,
    /// Queue threads polling now, and how many may at once: half the
    /// host's cores (at least one), so that polling queues never take every
    /// core from the guest's vCPUs and the VMM.
    polling: AtomicUsize,
    max_polling: usize,
}

/// One queue's window and when its thread began to wait. Only that queue's
/// thread touches it; atomics keep `Poller` shareable.
#[derive(Debug, Default)]
struct QueuePoll {
    window_ns: AtomicU64,
    /// When the thread began to wait (polling, then sleeping); 0 while it
    /// works.
    waiting_since_ns: AtomicU64,
}

impl Poller {
    /// `max`: the longest window; zero turns polling off.
    pub fn new(max: Duration, queues: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_pollers(max, queues, (cores / 2).max(1))
    }

    /// [`Self::new`] with at most `max_polling` queue threads polling at once.
    pub fn with_pollers(max: Duration, queues: usize, max_polling: usize) -> Self {
        Poller {
            max_ns: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            origin: Instant::now(),
            queues: (0..queues).map(|_| QueuePoll::default()).collect(),
            polling: AtomicUsize::new(0),
            max_polling,
        }
    }

    fn now_ns(&self) -> u64 {
        // Never 0, which means "not waiting".
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX) | 1
    }

    /// The queue's thread was woken (a kick): adapt its window to how long
    /// it waited.
    pub fn woke(&self, queue: usize) {
        let Some(q) = self.queues.get(queue) else {
            return;
        };
        let since = q.waiting_since_ns.swap(0, Ordering::Relaxed);
        if since == 0 || self.max_ns == 0 {
            return;
        }
        let waited = self.now_ns().saturating_sub(since);
        let window = q.window_ns.load(Ordering::Relaxed);
        let next = if waited > self.max_ns {
            // Halved, not dropped: one late request of a synchronous guest
            // (its thread was descheduled) costs a few slow requests, not a
            // climb back from zero; an idle queue reaches zero in a few
            // sleeps.
            let half = window / 2;
            if half < FIRST_WINDOW_NS {
                0
            } else {
                half
            }
        } else if window == 0 {
            FIRST_WINDOW_NS.min(self.max_ns)
        } else {
            window.saturating_mul(2).min(self.max_ns)
        };
        q.window_ns.store(next, Ordering::Relaxed);
    }

    /// Watches for more work for up to the queue's window; true when
    /// `more()` said there is some. The wait is measured from the first
    /// call after work, across polls and the sleep that may follow.
    pub fn poll(&self, queue: usize, mut more: impl FnMut() -> bool) -> bool {
        let Some(q) = self.queues.get(queue) else {
            return false;
        };
        let start = self.began_waiting(q);
        let window = q.window_ns.load(Ordering::Relaxed);
        if window == 0 {
            return false;
        }
        // Another queue's thread polls already on a small host: sleep.
        let admitted = self
            .polling
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_polling).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return false;
        }
        let end = start.saturating_add(window);
        let found = loop {
            if more() {
                q.waiting_since_ns.store(0, Ordering::Relaxed);
                break true;
            }
            if self.now_ns() >= end {
                break false;
            }
            // Give the core to whatever else is runnable on it (on a small
            // host, often the very guest thread that will send the next
            // request); with nothing else to run this returns at once.
            std::thread::yield_now();
        };
        self.polling.fetch_sub(1, Ordering::AcqRel);
        found
    }

    /// Marks the start of a wait unless one is under way; returns now.
    fn began_waiting(&self, q: &QueuePoll) -> u64 {
        let now = self.now_ns();
        if q.waiting_since_ns.load(Ordering::Relaxed) == 0 {
            q.waiting_since_ns.store(now, Ordering::Relaxed);
        }
        now
    }

    /// The queue's current window (for tests and logs).
    pub fn window(&self, queue: usize) -> Duration {
        Duration::from_nanos(
            self.queues
                .get(queue)
                .map_or(0, |q| q.window_ns.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_waits_grow_the_window_to_the_maximum() {
        let p = Poller::new(Duration::from_millis(50), 2);
        assert_eq!(p.window(1), Duration::ZERO);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            // A wait that ends at once (no spinning in the test).
            p.began_waiting(&p.queues[1]);
            p.woke(1);
            assert!(p.window(1) > last || p.window(1) == Duration::from_millis(50));
            last = p.window(1);
        }
        assert_eq!(p.window(1), Duration::from_millis(50));
        // The other queue is untouched.
        assert_eq!(p.window(0), Duration::ZERO);
    }

    #[test]
    fn long_waits_halve_the_window_down_to_zero() {
        let p = Poller::new(Duration::from_millis(40), 1);
        for _ in 0..20 {
            p.began_waiting(&p.queues[0]);
            p.woke(0);
        }
        assert_eq!(p.window(0), Duration::from_millis(40));
        let mut last = p.window(0);
        while p.window(0) > Duration::ZERO {
            p.began_waiting(&p.queues[0]);
            std::thread::sleep(Duration::from_millis(45));
            p.woke(0);
            assert!(p.window(0) <= last / 2);
            last = p.window(0);
        }
    }

    #[test]
    fn polling_finds_work_and_stops_at_once() {
        let p = Poller::new(Duration::from_secs(10), 1);
        for _ in 0..30 {
            p.began_waiting(&p.queues[0]);
            p.woke(0);
        }
        assert_eq!(p.window(0), Duration::from_secs(10));
        let mut calls = 0;
        let t = Instant::now();
        assert!(p.poll(0, || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn no_more_threads_poll_at_once_than_allowed() {
        let p = Poller::with_pollers(Duration::from_secs(10), 2, 1);
        for q in 0..2 {
            for _ in 0..30 {
                p.began_waiting(&p.queues[q]);
                p.woke(q);
            }
        }
        let inside = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                p.poll(0, || {
                    inside.wait();
                    // Held until the other queue has tried.
                    inside.wait();
                    true
                })
            });
            inside.wait();
            // Queue 1 is not let in while queue 0 polls.
            assert!(!p.poll(1, || panic!("two queues polled at once")));
            inside.wait();
            assert!(first.join().unwrap());
        });
        // Free again.
        assert!(p.poll(1, || true));
    }

    #[test]
    fn zero_maximum_never_polls() {
        let p = Poller::new(Duration::ZERO, 1);
        for _ in 0..10 {
            assert!(!p.poll(0, || panic!("polled with polling off")));
            p.woke(0);
        }
        assert_eq!(p.window(0), Duration::ZERO);
    }
}

//! Worker threads for request processing.
//!
//! With `--thread-pool-size=0` (the default, as in virtiofsd) each queue's
//! own thread handles its requests inline, which is fastest at low queue
//! depth. With N > 0, requests go to N shared workers, so that a slow host
//! syscall on one request does not hold up the rest of its queue.
//! Requests that may wait for long (a blocking lock, a prompt through authd)
//! never occupy either kind: they get a thread of their own, up to
//! [`MAX_LOCK_WAITERS`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Most requests waiting at once (locks, prompts); more are refused.
pub const MAX_LOCK_WAITERS: usize = 256;

/// A fixed set of worker threads fed through one channel.
pub struct Pool {
    tx: Mutex<Sender<Job>>,
}

impl Pool {
    /// Starts `size` workers (at least one).
    pub fn new(size: usize) -> std::io::Result<Self> {
        Self::named("fsd-worker", size)
    }

    /// Starts `size` workers (at least one) whose thread names start with
    /// `name`.
    pub fn named(name: &str, size: usize) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().unwrap().recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    job();
                })?;
        }
        Ok(Pool { tx: Mutex::new(tx) })
    }

    /// Queues a job; returns it back if the workers are gone.
    pub fn execute(&self, job: Job) -> Result<(), Job> {
        self.tx.lock().unwrap().send(job).map_err(|e| e.0)
    }
}

/// Bounds the threads waiting for locks.
#[derive(Default)]
pub struct LockWaiters {
    active: Arc<AtomicUsize>,
}

/// A reserved waiter slot; dropping it frees the slot.
pub struct WaiterPermit(Arc<AtomicUsize>);

impl Drop for WaiterPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LockWaiters {
    /// Reserves a slot, or `None` when [`MAX_LOCK_WAITERS`] already wait.
    pub fn try_reserve(&self) -> Option<WaiterPermit> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= MAX_LOCK_WAITERS {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WaiterPermit(self.active.clone()))
    }
}

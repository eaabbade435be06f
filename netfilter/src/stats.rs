//! Counters of what the filter did, shared by its two directions, and the
//! latency its decisions added to new flows; read by `netfilter status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// How many decision latencies are kept for the median.
const LATENCY_SAMPLES: usize = 4096;

macro_rules! counters {
    ($($name:ident: $doc:literal),* $(,)?) => {
        /// Live counters (relaxed atomics: they are statistics, not locks).
        #[derive(Debug, Default)]
        pub struct Counters { $(#[doc = $doc] pub $name: AtomicU64,)* }

        /// A copy of the counters at one instant.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct CounterValues { $(#[doc = $doc] pub $name: u64,)* }

        impl Counters {
            pub fn values(&self) -> CounterValues {
                CounterValues { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    frames_out: "Frames from the guest.",
    frames_in: "Frames towards the guest.",
    bytes_out: "Bytes from the guest.",
    bytes_in: "Bytes towards the guest.",
    batches: "Wakeups of the egress path (reads that brought at least one frame).",
    max_batch: "Most frames handled in one wakeup.",
    fast_path: "Egress packets passed or dropped by the connection table alone.",
    inspected: "Egress packets of flows not in the table (parsed, looked up, decided).",
    new_flows: "Flows decided.",
    lookups: "Ownership requests sent to the monitor.",
    lookup_queries: "Sockets asked about in those requests.",
    lookup_errors: "Ownership requests that failed (monitor unreachable, ...).",
    unknown_owner: "Flows whose socket was not found in the guest.",
    allowed: "Flows allowed.",
    denied: "Flows denied.",
    asked: "Flows put to the person at the host.",
    rate_limited: "New flows dropped without a lookup by the new-flow rate limit.",
    malformed: "Frames refused as malformed.",
    fragments: "IP fragments dropped (they carry no ports to decide on).",
    resets_sent: "TCP resets sent to the guest for denied connections.",
    dropped_out: "Egress frames dropped.",
    dropped_in: "Ingress frames dropped.",
    connections: "Guest (QEMU) connections accepted.",
}

/// Counters plus decision latencies.
#[derive(Debug, Default)]
pub struct Stats {
    pub c: Counters,
    latencies_us: Mutex<Vec<u64>>,
    next_latency: AtomicU64,
}

/// Median and 90th percentile of recent decision latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: usize,
    pub median_us: u64,
    pub p90_us: u64,
}

impl Stats {
    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn max(&self, c: &AtomicU64, n: u64) {
        c.fetch_max(n, Ordering::Relaxed);
    }

    /// Records how long a new flow's first packet was held.
    pub fn latency(&self, us: u64) {
        let mut v = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
        let i = self.next_latency.fetch_add(1, Ordering::Relaxed) as usize % LATENCY_SAMPLES;
        if v.len() < LATENCY_SAMPLES {
            v.push(us);
        } else {
            v[i] = us;
        }
    }

    pub fn latencies(&self) -> Latency {
        let mut v = self
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        Latency {
            samples: v.len(),
            median_us: v[v.len() / 2],
            p90_us: v[v.len() * 9 / 10],
        }
    }

    /// Forgets the latency samples (between benchmark runs).
    pub fn reset_latencies(&self) {
        self.latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.next_latency.store(0, Ordering::Relaxed);
    }
}

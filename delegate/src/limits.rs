//! Requests per VM and window: a hostile user VM that floods requests is
//! refused without touching authd or the helper once over the limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A sliding window of request times.
#[derive(Debug)]
pub struct RateLimit {
    max: usize,
    window: Duration,
    seen: VecDeque<Instant>,
}

impl RateLimit {
    pub fn new(max: usize, window: Duration) -> RateLimit {
        RateLimit {
            max,
            window,
            seen: VecDeque::new(),
        }
    }

    /// Counts a request at `now`; false when it is over the limit (it is
    /// counted anyway, so a flood keeps itself refused).
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .seen
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            self.seen.pop_front();
        }
        let ok = self.seen.len() < self.max;
        if self.seen.len() < self.max * 2 {
            self.seen.push_back(now);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_until_the_window_passes() {
        let mut r = RateLimit::new(3, Duration::from_secs(10));
        let t = Instant::now();
        assert!(r.allow(t) && r.allow(t) && r.allow(t));
        assert!(!r.allow(t + Duration::from_secs(1)));
        assert!(!r.allow(t + Duration::from_secs(9)));
        // The first three left the window; the two refused ones still
        // count, so one more fits and the next does not.
        assert!(r.allow(t + Duration::from_secs(10)));
        assert!(!r.allow(t + Duration::from_secs(10)));
        assert!(r.allow(t + Duration::from_secs(30)));
    }
}

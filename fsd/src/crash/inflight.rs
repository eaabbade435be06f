//! Which requests a dead fsd had taken from the rings and not answered.
//!
//! The split virtqueue tells a back-end nothing about requests it popped:
//! the avail index only says what the guest offered, the used ring only
//! what was answered, and answers come out of order (several workers). So
//! the serving fsd keeps, per queue, in shared memory ([`super::shm`]):
//!
//! * `next_avail`: the ring position it will pop next, stored after each
//!   batch is marked;
//! * a slot per descriptor head: set when the head is popped (with its
//!   ring position), cleared once its answer is in the used ring;
//! * a commit word, written under the vring lock around each `add_used`:
//!   the head being answered and the used index before it. A crash between
//!   `add_used` and clearing the slot is told apart from one before
//!   `add_used` by the used index in guest memory.
//!
//! Recovery reads them back ([`Pending`]): each request still marked gets
//! an answer from the new fsd, and popping resumes at `next_avail`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use super::shm::SharedMap;

const VALID: u32 = 1 << 31;
const COMMIT_VALID: u64 = 1 << 63;
/// Words per queue: next_avail, padding, commit (8 bytes), then a slot per head.
const QUEUE_HEADER: usize = 16;

/// The in-flight table of every queue of one device.
pub struct InFlightTable {
    map: SharedMap,
    queue_size: usize,
    queues: usize,
}

/// What a dead fsd left in one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Where popping resumes; `None` when this fsd never popped (the
    /// device snapshot's index holds).
    pub next_avail: Option<u16>,
    /// Heads popped and not answered, by ring position (oldest first).
    pub heads: Vec<(u16, u16)>,
}

impl InFlightTable {
    fn stride(queue_size: usize) -> usize {
        (QUEUE_HEADER + 4 * queue_size).next_multiple_of(8)
    }

    pub fn create(queues: usize, queue_size: usize) -> io::Result<Self> {
        let len = (16 + queues * Self::stride(queue_size)).next_multiple_of(4096);
        let map = SharedMap::create(c"fsd-inflight", len)?;
        map.u64_at(0).store(
            ((queues as u64) << 32) | queue_size as u64,
            Ordering::Release,
        );
        Ok(InFlightTable {
            map,
            queue_size,
            queues,
        })
    }

    /// Maps a dead fsd's table.
    pub fn open(fd: OwnedFd) -> io::Result<Self> {
        let map = SharedMap::map(fd)?;
        let shape = map.u64_at(0).load(Ordering::Acquire);
        let (queues, queue_size) = ((shape >> 32) as usize, (shape & 0xffff_ffff) as usize);
        if queues == 0
            || queue_size == 0
            || queue_size > 32768
            || 16 + queues * Self::stride(queue_size) > map.len()
        {
            return Err(io::Error::other("in-flight table of an unknown shape"));
        }
        Ok(InFlightTable {
            map,
            queue_size,
            queues,
        })
    }

    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.map.dup_fd()
    }

    fn base(&self, queue: usize) -> Option<usize> {
        (queue < self.queues).then(|| 16 + queue * Self::stride(self.queue_size))
    }

    /// Marks `head`, popped at ring position `pos`.
    pub fn popped(&self, queue: usize, head: u16, pos: u16) {
        if let Some(b) = self
            .base(queue)
            .filter(|_| (head as usize) < self.queue_size)
        {
            self.map
                .u32_at(b + QUEUE_HEADER + 4 * head as usize)
                .store(VALID | pos as u32, Ordering::Release);
        }
    }

    /// Records where popping resumes (after the batch's heads are marked).
    pub fn set_next_avail(&self, queue: usize, next: u16) {
        if let Some(b) = self.base(queue) {
            self.map
                .u32_at(b)
                .store(VALID | next as u32, Ordering::Release);
        }
    }

    /// Runs `add_used` for `head` with the commit word around it; the
    /// caller holds the vring lock, so commits of one queue never overlap.
    pub fn answer<T>(
        &self,
        queue: usize,
        head: u16,
        used_before: u16,
        add_used: impl FnOnce() -> T,
    ) -> T {
        let Some(b) = self.base(queue) else {
            return add_used();
        };
        let commit = self.map.u64_at(b + 8);
        commit.store(
            COMMIT_VALID | (head as u64) << 16 | used_before as u64,
            Ordering::Release,
        );
        let r = add_used();
        if (head as usize) < self.queue_size {
            self.map
                .u32_at(b + QUEUE_HEADER + 4 * head as usize)
                .store(0, Ordering::Release);
        }
        commit.store(0, Ordering::Release);
        r
    }

    /// Forgets every queue's requests and positions (a device reset: the
    /// guest abandoned them).
    pub fn clear(&self) {
        for q in 0..self.queues {
            let b = self.base(q).unwrap();
            self.map.u32_at(b).store(0, Ordering::Release);
            self.map.u64_at(b + 8).store(0, Ordering::Release);
            for h in 0..self.queue_size {
                self.map
                    .u32_at(b + QUEUE_HEADER + 4 * h)
                    .store(0, Ordering::Release);
            }
        }
    }

    /// What queue `queue` left; `used_now` is the used index in guest
    /// memory, which settles a commit cut short.
    pub fn pending(&self, queue: usize, used_now: u16) -> Pending {
        let Some(b) = self.base(queue) else {
            return Pending {
                next_avail: None,
                heads: Vec::new(),
            };
        };
        let na = self.map.u32_at(b).load(Ordering::Acquire);
        let next_avail = (na & VALID != 0).then_some(na as u16);
        let commit = self.map.u64_at(b + 8).load(Ordering::Acquire);
        let mut done = None;
        if commit & COMMIT_VALID != 0 && used_now != commit as u16 {
            // add_used moved the used index: that answer is out.
            done = Some((commit >> 16) as u16);
        }
        let mut heads = Vec::new();
        for head in 0..self.queue_size {
            let v = self
                .map
                .u32_at(b + QUEUE_HEADER + 4 * head)
                .load(Ordering::Acquire);
            if v & VALID == 0 || done == Some(head as u16) {
                continue;
            }
            let pos = v as u16;
            // Marked but not yet covered by next_avail: popping again from
            // next_avail finds it, so it is not in flight.
            if let Some(na) = next_avail {
                if na.wrapping_sub(pos) == 0 || na.wrapping_sub(pos) > self.queue_size as u16 {
                    continue;
                }
            }
            heads.push((pos, head as u16));
        }
        let anchor = next_avail.unwrap_or(0);
        heads.sort_by_key(|&(pos, _)| std::cmp::Reverse(anchor.wrapping_sub(pos)));
        Pending { next_avail, heads }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(t: &InFlightTable) -> InFlightTable {
        InFlightTable::open(t.dup_fd().unwrap()).unwrap()
    }

    #[test]
    fn popped_and_unanswered_heads_are_pending() {
        let t = InFlightTable::create(2, 8).unwrap();
        t.popped(1, 3, 10);
        t.popped(1, 5, 11);
        t.set_next_avail(1, 12);
        t.answer(1, 5, 4, || ());
        let p = reopen(&t).pending(1, 5);
        assert_eq!(p.next_avail, Some(12));
        assert_eq!(p.heads, vec![(10, 3)]);
        assert_eq!(reopen(&t).pending(0, 0).next_avail, None);
    }

    #[test]
    fn a_commit_cut_short_is_settled_by_the_used_index() {
        let t = InFlightTable::create(1, 8).unwrap();
        t.popped(0, 2, 0);
        t.set_next_avail(0, 1);
        // A crash inside add_used: the commit word stays, the slot too.
        let b = t.base(0).unwrap();
        t.map
            .u64_at(b + 8)
            .store(COMMIT_VALID | 2 << 16 | 7, Ordering::Release);
        // The used index did not move: still pending.
        assert_eq!(reopen(&t).pending(0, 7).heads, vec![(0, 2)]);
        // It moved: answered.
        assert!(reopen(&t).pending(0, 8).heads.is_empty());
    }

    #[test]
    fn heads_marked_beyond_next_avail_are_popped_again_not_answered() {
        let t = InFlightTable::create(1, 8).unwrap();
        t.popped(0, 1, 5);
        t.set_next_avail(0, 6);
        t.popped(0, 4, 6); // crash before set_next_avail(7)
        assert_eq!(reopen(&t).pending(0, 0).heads, vec![(5, 1)]);
    }
}

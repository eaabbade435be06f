//! The driver side of one split virtqueue.
//!
//! Rings live in guest memory exactly as the virtio 1.x spec lays them out;
//! the daemon reads the descriptor table and available ring and writes the
//! used ring. We publish chains, kick the kick eventfd, and wait on the call
//! eventfd, so the daemon sees the same traffic a guest kernel would make.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::chain::{Chain, Segment, Tail};
use crate::error::{Error, Result};
use crate::memory::{Block, GuestMem};

/// Descriptor continues via `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// `used.flags`: the device asks not to be kicked.
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Where a ring's three parts live in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Descriptor table (16 bytes per entry).
    pub desc: u64,
    /// Available ring: flags, idx, ring[size], used_event.
    pub avail: u64,
    /// Used ring: flags, idx, ring[size] of (id, len), avail_event.
    pub used: u64,
}

impl RingLayout {
    /// Bytes of the descriptor table.
    pub fn desc_bytes(size: u16) -> u64 {
        16 * u64::from(size)
    }
    /// Bytes of the available ring.
    pub fn avail_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }
    /// Bytes of the used ring.
    pub fn used_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }
}

/// A finished chain taken from the used ring.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The token [`Queue::submit`] returned for this chain.
    pub token: u64,
    /// Head descriptor index the device returned.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// The writable segments' contents, concatenated, cut at `len` and at the
    /// queue's copy limit.
    pub data: Vec<u8>,
}

struct InFlight {
    token: u64,
    descs: Vec<u16>,
    blocks: Vec<Block>,
    writable: Vec<(u64, u32)>,
}

/// One virtqueue, owned by the driver.
pub struct Queue {
    index: usize,
    mem: Arc<GuestMem>,
    layout: RingLayout,
    ring_block: Block,
    pub(crate) kick: EventFd,
    pub(crate) call: EventFd,
    event_idx: bool,
    free_desc: Vec<u16>,
    next_avail: u16,
    notified_avail: u16,
    last_used: u16,
    in_flight: HashMap<u16, InFlight>,
    ready: VecDeque<Completion>,
    copy_limit: usize,
    kicks: u64,
    next_token: u64,
}

impl Queue {
    /// Allocates the rings of a `size`-entry queue in guest memory. A
    /// [`Device`](crate::Device) makes its queues this way; used on its own,
    /// the caller plays the device (in-process fuzzing of a request handler).
    pub fn new(index: usize, mem: Arc<GuestMem>, size: u16, event_idx: bool) -> Result<Self> {
        if !size.is_power_of_two() {
            return Err(Error::InvalidChain("queue size must be a power of two"));
        }
        let d = RingLayout::desc_bytes(size);
        let a = RingLayout::avail_bytes(size);
        let u = RingLayout::used_bytes(size);
        let used_off = (d + a).div_ceil(4096) * 4096;
        let ring_block = mem.alloc(used_off + u, 4096)?;
        let layout = RingLayout {
            size,
            desc: ring_block.addr,
            avail: ring_block.addr + d,
            used: ring_block.addr + used_off,
        };
        mem.write(ring_block.addr, &vec![0u8; ring_block.len as usize])?;
        let efd = || {
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|e| Error::Io("eventfd", e))
        };
        Ok(Queue {
            index,
            mem,
            layout,
            ring_block,
            kick: efd()?,
            call: efd()?,
            event_idx,
            free_desc: (0..size).rev().collect(),
            next_avail: 0,
            notified_avail: 0,
            last_used: 0,
            in_flight: HashMap::new(),
            ready: VecDeque::new(),
            copy_limit: usize::MAX,
            kicks: 0,
            next_token: 1,
        })
    }

    /// Index of this queue on the device (0 is hiprio).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Where the rings are.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Chains submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Free descriptor-table entries.
    pub fn free_descriptors(&self) -> usize {
        self.free_desc.len()
    }

    /// Kicks sent so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Copy at most `limit` bytes of each reply out of guest memory. A
    /// benchmark sets this low so that it measures the daemon, not our memcpy.
    pub fn set_copy_limit(&mut self, limit: usize) {
        self.copy_limit = limit;
    }

    /// Shared guest memory.
    pub fn mem(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// Lays `chain` out in guest memory, publishes it and kicks the device.
    /// Returns a token that identifies the [`Completion`]. (Head indices are
    /// reused as soon as a chain completes, so they make poor identifiers.)
    pub fn submit(&mut self, chain: &Chain) -> Result<u64> {
        let head = self.publish(chain)?;
        self.notify()?;
        Ok(head)
    }

    /// Like [`Queue::submit`] without the kick, to batch several chains.
    pub fn publish(&mut self, chain: &Chain) -> Result<u64> {
        let n = chain.segments.len();
        if n == 0 {
            return Err(Error::InvalidChain("a chain needs at least one descriptor"));
        }
        if n > self.free_desc.len() {
            return Err(Error::QueueFull {
                need: n,
                free: self.free_desc.len(),
            });
        }
        let mut blocks = Vec::new();
        let mut descs = Vec::with_capacity(n);
        let mut writable = Vec::new();
        let mut raw = Vec::with_capacity(n);
        for seg in &chain.segments {
            let (addr, len, flags) = match seg {
                Segment::Readable { data, align } => {
                    let b = match self.mem.alloc(data.len() as u64, *align) {
                        Ok(b) => b,
                        Err(e) => {
                            blocks.iter().for_each(|b| self.mem.free(*b));
                            return Err(e);
                        }
                    };
                    self.mem.write(b.addr, data)?;
                    blocks.push(b);
                    (b.addr, data.len() as u32, 0)
                }
                Segment::Writable { len, align } => {
                    let b = match self.mem.alloc(u64::from(*len), *align) {
                        Ok(b) => b,
                        Err(e) => {
                            blocks.iter().for_each(|b| self.mem.free(*b));
                            return Err(e);
                        }
                    };
                    blocks.push(b);
                    writable.push((b.addr, *len));
                    (b.addr, *len, VRING_DESC_F_WRITE)
                }
                Segment::Raw {
                    addr,
                    len,
                    writable: w,
                } => {
                    if *w {
                        writable.push((*addr, *len));
                    }
                    (*addr, *len, if *w { VRING_DESC_F_WRITE } else { 0 })
                }
            };
            raw.push((addr, len, flags));
            descs.push(self.free_desc.pop().expect("checked above"));
        }
        for i in 0..n {
            let (addr, len, mut flags) = raw[i];
            let next = if i + 1 < n {
                flags |= VRING_DESC_F_NEXT;
                descs[i + 1]
            } else {
                match chain.tail {
                    Tail::End => 0,
                    Tail::LoopTo(to) => {
                        flags |= VRING_DESC_F_NEXT;
                        descs[to.min(n - 1)]
                    }
                    Tail::NextIndex(idx) => {
                        flags |= VRING_DESC_F_NEXT;
                        idx
                    }
                }
            };
            self.write_desc(descs[i], addr, len, flags, next)?;
        }
        let head = descs[0];
        let slot = self.layout.avail + 4 + 2 * u64::from(self.next_avail % self.layout.size);
        self.store_u16(slot, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The descriptors and ring slot must be visible before the index.
        fence(Ordering::SeqCst);
        self.store_u16(self.layout.avail + 2, self.next_avail)?;
        let token = self.next_token;
        self.next_token += 1;
        self.in_flight.insert(
            head,
            InFlight {
                token,
                descs,
                blocks,
                writable,
            },
        );
        Ok(token)
    }

    /// Puts an arbitrary head index on the available ring (for hostile
    /// tests: an index beyond the table, or one already in flight) and kicks.
    /// The returned token matches a completion if the device returns that
    /// head.
    pub fn publish_raw_head(&mut self, head: u16) -> Result<u64> {
        let slot = self.layout.avail + 4 + 2 * u64::from(self.next_avail % self.layout.size);
        self.store_u16(slot, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.store_u16(self.layout.avail + 2, self.next_avail)?;
        let token = self.next_token;
        self.next_token += 1;
        self.in_flight.entry(head).or_insert(InFlight {
            token,
            descs: Vec::new(),
            blocks: Vec::new(),
            writable: Vec::new(),
        });
        self.notify()?;
        Ok(token)
    }

    /// Moves the available index forward by `by` without publishing
    /// anything (for hostile tests: more entries claimed than the ring holds).
    pub fn advance_avail_idx(&mut self, by: u16) -> Result<()> {
        self.next_avail = self.next_avail.wrapping_add(by);
        fence(Ordering::SeqCst);
        self.store_u16(self.layout.avail + 2, self.next_avail)?;
        self.notify()
    }

    /// Kicks the device if it wants to be kicked (honouring EVENT_IDX or
    /// `VRING_USED_F_NO_NOTIFY`).
    pub fn notify(&mut self) -> Result<()> {
        fence(Ordering::SeqCst);
        let wanted = if self.event_idx {
            let avail_event =
                self.load_u16(self.layout.used + 4 + 8 * u64::from(self.layout.size))?;
            let (new, old) = (self.next_avail, self.notified_avail);
            // vring_need_event() from the virtio spec.
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.load_u16(self.layout.used)? & VRING_USED_F_NO_NOTIFY == 0
        };
        self.notified_avail = self.next_avail;
        if wanted {
            self.kick.write(1).map_err(|e| Error::Io("kick", e))?;
            self.kicks += 1;
        }
        Ok(())
    }

    /// Completions already in the used ring, without waiting.
    pub fn try_wait(&mut self) -> Result<Vec<Completion>> {
        self.harvest()?;
        Ok(self.ready.drain(..).collect())
    }

    /// Waits up to `timeout` for at least one completion and returns all that
    /// are ready.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<Completion>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.harvest()?;
            if !self.ready.is_empty() {
                return Ok(self.ready.drain(..).collect());
            }
            self.sleep_until(deadline, timeout)?;
        }
    }

    /// Waits up to `timeout` for the chain with `token`; other completions
    /// are kept for later calls.
    pub fn wait_for(&mut self, token: u64, timeout: Duration) -> Result<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            self.harvest()?;
            if let Some(pos) = self.ready.iter().position(|c| c.token == token) {
                return Ok(self.ready.remove(pos).expect("position is valid"));
            }
            self.sleep_until(deadline, timeout)?;
        }
    }

    /// Forgets chains the device never completed (for example after it failed
    /// the queue), returning their buffers to the allocator. Their descriptor
    /// entries stay reserved: the device may still hold them.
    pub fn abandon_in_flight(&mut self) -> usize {
        let n = self.in_flight.len();
        for (_, f) in self.in_flight.drain() {
            f.blocks.iter().for_each(|b| self.mem.free(*b));
        }
        n
    }

    fn sleep_until(&mut self, deadline: Instant, timeout: Duration) -> Result<()> {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout(timeout));
        }
        if self.event_idx {
            // Ask for a call as soon as the next used entry appears.
            let used_event = self.layout.avail + 4 + 2 * u64::from(self.layout.size);
            self.store_u16(used_event, self.last_used)?;
            fence(Ordering::SeqCst);
            if self.load_u16(self.layout.used + 2)? != self.last_used {
                return Ok(());
            }
        }
        let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Io("poll call eventfd", e));
            }
        }
        if r > 0 {
            let _ = self.call.read();
        }
        Ok(())
    }

    /// Moves every new used-ring entry into `ready`.
    fn harvest(&mut self) -> Result<()> {
        let used_idx = self.load_u16(self.layout.used + 2)?;
        fence(Ordering::Acquire);
        while self.last_used != used_idx {
            let elem = self.layout.used + 4 + 8 * u64::from(self.last_used % self.layout.size);
            let id: u32 = self.load_u32(elem)?;
            let len: u32 = self.load_u32(elem + 4)?;
            self.last_used = self.last_used.wrapping_add(1);
            let head = u16::try_from(id).map_err(|_| Error::UnknownHead(id))?;
            let f = self.in_flight.remove(&head).ok_or(Error::UnknownHead(id))?;
            let mut data = Vec::new();
            let mut left = (len as usize).min(self.copy_limit);
            for &(addr, wlen) in &f.writable {
                if left == 0 {
                    break;
                }
                let take = left.min(wlen as usize);
                let mut buf = vec![0u8; take];
                if self.mem.read(addr, &mut buf).is_err() {
                    break;
                }
                data.extend_from_slice(&buf);
                left -= take;
            }
            f.blocks.iter().for_each(|b| self.mem.free(*b));
            self.free_desc.extend(f.descs);
            self.ready.push_back(Completion {
                token: f.token,
                head,
                len,
                data,
            });
        }
        Ok(())
    }

    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> Result<()> {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(self.layout.desc + 16 * u64::from(i), &d)
    }

    fn store_u16(&self, addr: u64, v: u16) -> Result<()> {
        self.mem
            .mem()
            .store(v.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(|_| Error::BadGuestAddress(addr, 2))
    }

    fn load_u16(&self, addr: u64) -> Result<u16> {
        self.mem
            .mem()
            .load::<u16>(GuestAddress(addr), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|_| Error::BadGuestAddress(addr, 2))
    }

    fn load_u32(&self, addr: u64) -> Result<u32> {
        self.mem
            .mem()
            .load::<u32>(GuestAddress(addr), Ordering::Acquire)
            .map(u32::from_le)
            .map_err(|_| Error::BadGuestAddress(addr, 4))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.abandon_in_flight();
        self.mem.free(self.ring_block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the device: takes the next available chain, writes `reply` into
    /// its writable descriptors and puts it on the used ring.
    fn fake_device_complete(q: &Queue, consumed: u16, reply: &[u8]) -> u16 {
        let l = q.layout;
        let head = q
            .load_u16(l.avail + 4 + 2 * u64::from(consumed % l.size))
            .unwrap();
        let mut i = head;
        let mut written = 0usize;
        loop {
            let mut d = [0u8; 16];
            q.mem.read(l.desc + 16 * u64::from(i), &mut d).unwrap();
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap()) as usize;
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            if flags & VRING_DESC_F_WRITE != 0 && written < reply.len() {
                let take = len.min(reply.len() - written);
                q.mem.write(addr, &reply[written..written + take]).unwrap();
                written += take;
            }
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            i = u16::from_le_bytes(d[14..16].try_into().unwrap());
        }
        let used_idx = q.load_u16(l.used + 2).unwrap();
        let elem = l.used + 4 + 8 * u64::from(used_idx % l.size);
        q.mem.write(elem, &u32::from(head).to_le_bytes()).unwrap();
        q.mem
            .write(elem + 4, &(written as u32).to_le_bytes())
            .unwrap();
        q.store_u16(l.used + 2, used_idx.wrapping_add(1)).unwrap();
        q.call.write(1).unwrap();
        head
    }

    #[test]
    fn submit_complete_round_trip_frees_everything() {
        let mem = Arc::new(GuestMem::new(0, 1 << 20).unwrap());
        let before = mem.free_bytes();
        let mut q = Queue::new(1, mem.clone(), 16, false).unwrap();
        let mut heads = Vec::new();
        for i in 0..3u8 {
            heads.push(q.submit(&Chain::request(vec![i; 40], 100)).unwrap());
        }
        assert_eq!(q.in_flight(), 3);
        assert_eq!(q.free_descriptors(), 16 - 9);
        assert!(matches!(
            q.submit(
                &Chain::request(vec![0; 8], 0)
                    .push(Segment::Writable { len: 1, align: 16 })
                    .push(Segment::Writable { len: 1, align: 16 })
                    .push(Segment::Writable { len: 1, align: 16 })
                    .push(Segment::Writable { len: 1, align: 16 })
                    .push(Segment::Writable { len: 1, align: 16 })
                    .push(Segment::Writable { len: 1, align: 16 })
            ),
            Err(Error::QueueFull { need: 8, free: 7 })
        ));
        assert_eq!(q.kicks(), 3);
        fake_device_complete(&q, 1, b"0123456789abcdefXYZ");
        let c = q.wait_for(heads[1], Duration::from_secs(5)).unwrap();
        assert_eq!(c.len, 19);
        assert_eq!(&c.data, b"0123456789abcdefXYZ");
        fake_device_complete(&q, 0, b"x");
        fake_device_complete(&q, 2, b"");
        let rest = q.wait(Duration::from_secs(5)).unwrap();
        assert_eq!(rest.len(), 2);
        assert!(matches!(
            q.wait(Duration::from_millis(10)),
            Err(Error::Timeout(_))
        ));
        assert_eq!(q.free_descriptors(), 16);
        drop(q);
        assert_eq!(mem.free_bytes(), before);
    }

    #[test]
    fn loops_and_raw_descriptors_are_written_verbatim() {
        let mem = Arc::new(GuestMem::new(0, 1 << 20).unwrap());
        let mut q = Queue::new(1, mem, 8, false).unwrap();
        let chain = Chain::default()
            .push(Segment::Raw {
                addr: 1 << 40,
                len: 64,
                writable: false,
            })
            .push(Segment::Raw {
                addr: 0,
                len: 0,
                writable: true,
            })
            .with_tail(Tail::LoopTo(0));
        q.submit(&chain).unwrap();
        let head = q.load_u16(q.layout.avail + 4).unwrap();
        let l = q.layout();
        let mut d = [0u8; 16];
        q.mem.read(l.desc + 16 * u64::from(head), &mut d).unwrap();
        assert_eq!(u64::from_le_bytes(d[0..8].try_into().unwrap()), 1 << 40);
        let second = u16::from_le_bytes(d[14..16].try_into().unwrap());
        q.mem.read(l.desc + 16 * u64::from(second), &mut d).unwrap();
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        assert_eq!(flags, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT);
        assert_eq!(u16::from_le_bytes(d[14..16].try_into().unwrap()), head);
    }
}

//! One large READ copied by more than one core.
//!
//! A guest that reads a big file one request at a time (`dd bs=1M`, a
//! loader, `cp` of one file) keeps a single READ in flight: the bulk-read
//! threads (`vhost_user`) get nothing to do, and the copy from the host's
//! page cache runs on one core. Here such a READ is cut into parts of at
//! least [`PART_MIN`] bytes; idle helper threads read the later parts with
//! `preadv` on the same descriptor (positional reads share no file offset)
//! while the request's own thread reads the first, and the reply is sent
//! once every part is in.
//!
//! A READ is split only while it is the one request in flight (on any
//! queue), and only helpers idle at that moment take a part: a busy daemon
//! (requests waiting behind it, large READs on the bulk-read threads, each
//! already on a core of its own) splits nothing, since more copies than
//! cores only add hand-offs. Measured in docs/benchmarks.md, "One large
//! read on more than one core". The result is what one `preadv` of the
//! whole range would return: the bytes up to the first short part; an error
//! only when no byte came before it.
//!
//! The guest buffers a helper fills belong to the request, which waits for
//! every part it handed out before it returns, so no helper touches guest
//! memory after the request is answered.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use fuse_backend_rs::api::filesystem::ZeroCopyWriter;
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

use crate::pool::Pool;

/// The smallest READ worth splitting: below it, handing a part to another
/// thread costs more than the copy it saves.
pub const SPLIT_MIN: usize = 256 << 10;

/// The smallest part a helper gets.
pub const PART_MIN: usize = 128 << 10;

/// Parts start on this boundary in the file, so that no page of the host's
/// page cache is copied by two threads.
const PART_ALIGN: usize = 4096;

/// Helper threads that read the later parts of large READs.
pub struct ReadSplitter {
    helpers: Pool,
    /// Helpers not reading a part now.
    idle: Arc<AtomicUsize>,
    /// The device's requests in flight (this one included).
    in_flight: InFlightCount,
}

/// Reads the count of requests popped and not answered.
pub type InFlightCount = Box<dyn Fn() -> usize + Send + Sync>;

impl ReadSplitter {
    /// Starts `threads` helpers (at least one); `in_flight` tells how many
    /// requests the device has in flight.
    pub fn new(threads: usize, in_flight: InFlightCount) -> io::Result<Self> {
        let threads = threads.max(1);
        Ok(ReadSplitter {
            helpers: Pool::named("fsd-split-read", threads)?,
            idle: Arc::new(AtomicUsize::new(threads)),
            in_flight,
        })
    }

    /// Takes up to `want` idle helpers; returns how many it took.
    fn take(&self, want: usize) -> usize {
        let mut idle = self.idle.load(Ordering::Acquire);
        loop {
            let n = idle.min(want);
            if n == 0 {
                return 0;
            }
            match self.idle.compare_exchange_weak(
                idle,
                idle - n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return n,
                Err(now) => idle = now,
            }
        }
    }

    /// Wraps a READ's reply writer so that its copy from the host file is
    /// split when it is large and helpers are idle.
    pub fn writer<'a>(&'a self, w: &'a mut dyn ZeroCopyWriter) -> SplitWriter<'a> {
        SplitWriter { w, splitter: self }
    }

    /// Reads `bufs` from `fd` at `offset`, the parts after the first on
    /// helpers; `None` when the read is not to be split (small, out of a
    /// file's range, not alone in flight, or no helper idle): the caller
    /// reads it all itself.
    fn read(
        &self,
        fd: RawFd,
        bufs: &[FileVolatileSlice],
        offset: u64,
    ) -> Option<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // The offset is the guest's: one past what a file may hold is left
        // to the plain read, which refuses it.
        let in_range = offset
            .checked_add(total as u64)
            .is_some_and(|end| end <= i64::MAX as u64);
        if total < SPLIT_MIN || !in_range || (self.in_flight)() > 1 {
            return None;
        }
        let helpers = self.take(total / PART_MIN - 1);
        if helpers == 0 {
            return None;
        }
        let parts = split(bufs, offset, helpers + 1);
        // Parts of at least PART_MIN never merge, but a helper without a
        // part must not stay taken.
        self.idle
            .fetch_add(helpers + 1 - parts.len(), Ordering::AcqRel);
        let done = Arc::new(Done::new(parts.len() - 1));
        for (i, part) in parts.iter().enumerate().skip(1) {
            let job = HelperJob {
                fd,
                part: part.clone(),
                slot: i - 1,
                done: done.clone(),
                idle: self.idle.clone(),
                reported: false,
            };
            if let Err(job) = self.helpers.execute(Box::new(move || job.run())) {
                // The helpers are gone: read the part here.
                job();
            }
        }
        let first = parts[0].read(fd);
        let rest = done.wait();
        Some(combine(&parts, first, rest))
    }
}

/// What one `preadv` over all parts would have returned: the bytes up to
/// the first part that came back short; an error only if it came first.
fn combine(
    parts: &[Part],
    first: io::Result<usize>,
    rest: Vec<io::Result<usize>>,
) -> io::Result<usize> {
    let mut total = 0;
    for (part, got) in parts.iter().zip(std::iter::once(first).chain(rest)) {
        match got {
            Ok(n) => {
                total += n;
                if n < part.len {
                    break;
                }
            }
            Err(e) if total == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(total)
}

/// One part: where in the file, and the guest buffers it fills.
#[derive(Clone)]
struct Part {
    offset: u64,
    len: usize,
    iovecs: Vec<libc::iovec>,
}

// SAFETY: the iovecs point into guest memory that the request owning this
// part keeps mapped and does not touch until every part has reported done
// (`Done::wait`); two parts never overlap.
unsafe impl Send for Part {}

impl Part {
    fn read(&self, fd: RawFd) -> io::Result<usize> {
        let mut got = 0;
        let mut iovecs = self.iovecs.clone();
        let mut first = 0;
        // A positional read of a regular file may come back short only at
        // its end or on a signal; read on after a short read so that the
        // parts' boundaries are not mistaken for the end of the file.
        while got < self.len {
            // SAFETY: the iovecs name buffers valid for the request's life
            // (see `Part`'s Send); the kernel checks the rest.
            let n = unsafe {
                libc::preadv(
                    fd,
                    iovecs[first..].as_ptr(),
                    (iovecs.len() - first) as libc::c_int,
                    (self.offset + got as u64) as libc::off_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return if got == 0 { Err(e) } else { Ok(got) };
            }
            if n == 0 {
                break;
            }
            let mut n = n as usize;
            got += n;
            while n > 0 {
                let v = &mut iovecs[first];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    v.iov_base = (v.iov_base as usize + n) as *mut libc::c_void;
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(got)
    }
}

/// Cuts `bufs` into `n` parts of about equal length, each after the first
/// starting on a [`PART_ALIGN`] boundary of the file. `offset` plus the
/// buffers' length must not overflow (checked by the caller).
fn split(bufs: &[FileVolatileSlice], offset: u64, n: usize) -> Vec<Part> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut bounds: Vec<usize> = (1..n)
        .map(|i| {
            let at = offset + (total * i / n) as u64;
            let aligned = at - at % PART_ALIGN as u64;
            aligned.saturating_sub(offset) as usize
        })
        .filter(|&b| b > 0 && b < total)
        .collect();
    bounds.dedup();
    bounds.push(total);
    let mut parts = Vec::with_capacity(bounds.len());
    let mut slices = bufs.iter().map(|b| (b.as_ptr() as usize, b.len()));
    let mut cur = slices.next();
    let mut start = 0;
    for end in bounds {
        let mut part = Part {
            offset: offset + start as u64,
            len: end - start,
            iovecs: Vec::new(),
        };
        let mut need = part.len;
        while need > 0 {
            let Some((base, len)) = cur else { break };
            let take = len.min(need);
            part.iovecs.push(libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: take,
            });
            need -= take;
            cur = if take == len {
                slices.next()
            } else {
                Some((base + take, len - take))
            };
        }
        parts.push(part);
        start = end;
    }
    parts
}

/// A part handed to a helper. It reports exactly once: with what it read,
/// or, dropped unrun, with an error, so the request never waits forever.
struct HelperJob {
    fd: RawFd,
    part: Part,
    slot: usize,
    done: Arc<Done>,
    idle: Arc<AtomicUsize>,
    reported: bool,
}

impl HelperJob {
    fn run(mut self) {
        let got = self.part.read(self.fd);
        self.report(got);
    }

    fn report(&mut self, got: io::Result<usize>) {
        self.reported = true;
        self.idle.fetch_add(1, Ordering::AcqRel);
        self.done.report(self.slot, got);
    }
}

impl Drop for HelperJob {
    fn drop(&mut self) {
        if !self.reported {
            self.report(Err(io::Error::from_raw_os_error(libc::EIO)));
        }
    }
}

/// The results of the parts on helpers, and a wake-up when all are in.
struct Done {
    results: Mutex<Vec<Option<io::Result<usize>>>>,
    all_in: Condvar,
}

impl Done {
    fn new(n: usize) -> Self {
        Done {
            results: Mutex::new((0..n).map(|_| None).collect()),
            all_in: Condvar::new(),
        }
    }

    fn report(&self, slot: usize, got: io::Result<usize>) {
        let mut r = self.results.lock().unwrap_or_else(|p| p.into_inner());
        r[slot] = Some(got);
        if r.iter().all(Option::is_some) {
            self.all_in.notify_one();
        }
    }

    /// Waits until every part has reported. Never gives up early: the
    /// helpers write into the request's buffers until then.
    fn wait(&self) -> Vec<io::Result<usize>> {
        let mut r = self.results.lock().unwrap_or_else(|p| p.into_inner());
        while !r.iter().all(Option::is_some) {
            r = self.all_in.wait(r).unwrap_or_else(|p| p.into_inner());
        }
        r.drain(..).map(Option::unwrap).collect()
    }
}

/// A READ's reply writer whose copy from the host file may be split.
pub struct SplitWriter<'a> {
    w: &'a mut dyn ZeroCopyWriter,
    splitter: &'a ReadSplitter,
}

impl ZeroCopyWriter for SplitWriter<'_> {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let mut f = SplitFile {
            f,
            splitter: self.splitter,
        };
        self.w.write_from(&mut f, count, off)
    }

    fn available_bytes(&self) -> usize {
        self.w.available_bytes()
    }
}

impl io::Write for SplitWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// The host file as the reply writer sees it: vectored positional reads
/// go through the splitter, everything else straight to the file.
struct SplitFile<'a, 'b> {
    f: &'a mut dyn FileReadWriteVolatile,
    splitter: &'b ReadSplitter,
}

impl FileReadWriteVolatile for SplitFile<'_, '_> {
    fn raw_fd(&self) -> Option<RawFd> {
        self.f.raw_fd()
    }

    fn read_volatile(&mut self, slice: FileVolatileSlice) -> io::Result<usize> {
        self.f.read_volatile(slice)
    }

    fn read_vectored_volatile(&mut self, bufs: &[FileVolatileSlice]) -> io::Result<usize> {
        self.f.read_vectored_volatile(bufs)
    }

    fn write_volatile(&mut self, slice: FileVolatileSlice) -> io::Result<usize> {
        self.f.write_volatile(slice)
    }

    fn write_vectored_volatile(&mut self, bufs: &[FileVolatileSlice]) -> io::Result<usize> {
        self.f.write_vectored_volatile(bufs)
    }

    fn read_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        self.read_vectored_at_volatile(&[slice], offset)
    }

    fn read_vectored_at_volatile(
        &mut self,
        bufs: &[FileVolatileSlice],
        offset: u64,
    ) -> io::Result<usize> {
        match self
            .f
            .raw_fd()
            .and_then(|fd| self.splitter.read(fd, bufs, offset))
        {
            Some(got) => got,
            None => self.f.read_vectored_at_volatile(bufs, offset),
        }
    }

    fn write_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        self.f.write_at_volatile(slice, offset)
    }

    fn write_vectored_at_volatile(
        &mut self,
        bufs: &[FileVolatileSlice],
        offset: u64,
    ) -> io::Result<usize> {
        self.f.write_vectored_at_volatile(bufs, offset)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    /// A file of `len` bytes, each byte a function of its offset.
    fn file(len: usize) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        f.write_all(&data).unwrap();
        f
    }

    fn expected(offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    /// Buffers of these sizes, one after the other in `mem`.
    fn slices<'a>(mem: &'a mut [u8], sizes: &[usize]) -> Vec<FileVolatileSlice<'a>> {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in sizes {
            // SAFETY: disjoint parts of `mem`, which outlives the slices.
            out.push(unsafe { FileVolatileSlice::from_raw_ptr(mem[at..].as_mut_ptr(), n) });
            at += n;
        }
        out
    }

    #[test]
    fn parts_cover_the_buffers_in_order_and_start_on_page_boundaries() {
        let mut mem = vec![0u8; 1 << 20];
        let base = mem.as_ptr() as usize;
        let sizes = [100, 300_000, 4096, 700_000 - 4196, 48_576];
        let bufs = slices(&mut mem, &sizes);
        let total: usize = sizes.iter().sum();
        for offset in [0u64, 1, 4095, 123_456_789] {
            for n in 2..=4 {
                let parts = split(&bufs, offset, n);
                assert_eq!(parts.len(), n);
                assert_eq!(parts.iter().map(|p| p.len).sum::<usize>(), total);
                let mut at = offset;
                let mut addr = base;
                for (i, p) in parts.iter().enumerate() {
                    assert_eq!(p.offset, at);
                    if i > 0 {
                        assert_eq!(p.offset % PART_ALIGN as u64, 0, "part {i} at {offset}");
                    }
                    assert_eq!(p.iovecs.iter().map(|v| v.iov_len).sum::<usize>(), p.len);
                    for v in &p.iovecs {
                        assert_eq!(v.iov_base as usize, addr, "contiguous");
                        addr += v.iov_len;
                    }
                    at += p.len as u64;
                }
            }
        }
    }

    #[test]
    fn a_split_read_returns_what_one_preadv_would() {
        let s = ReadSplitter::new(3, Box::new(|| 1)).unwrap();
        let f = file(3 << 20);
        let sizes = [4096, 1 << 20, 12_288];
        let total: usize = sizes.iter().sum();
        // (offset, bytes the file has from there): whole, ending in the
        // first part, ending in a later part, empty at the end.
        for (offset, want) in [
            (5, total),
            ((3 << 20) - 100_000, 100_000),
            ((3 << 20) - 700_000, 700_000),
            (3 << 20, 0),
        ] {
            let mut mem = vec![0u8; total];
            let bufs = slices(&mut mem, &sizes);
            let got = s.read(f.as_raw_fd(), &bufs, offset as u64).expect("split");
            assert_eq!(got.unwrap(), want, "at {offset}");
            assert!(
                mem[..want] == expected(offset, want)[..],
                "bytes at {offset}"
            );
            assert_eq!(s.idle.load(Ordering::Acquire), 3, "helpers given back");
        }
        // A bad descriptor: the error, as from one preadv.
        let mut mem = vec![0u8; total];
        let bufs = slices(&mut mem, &sizes);
        // Offsets past what a file may hold are left to the plain read.
        for offset in [u64::MAX - 10, i64::MAX as u64] {
            assert!(s.read(f.as_raw_fd(), &bufs, offset).is_none());
        }
        let e = s.read(-1, &bufs, 0).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        // Not alone in flight: not split.
        let busy = ReadSplitter::new(3, Box::new(|| 2)).unwrap();
        assert!(busy.read(f.as_raw_fd(), &bufs, 0).is_none());
        // Small reads and reads without an idle helper are not split.
        let bufs = slices(&mut mem, &[SPLIT_MIN - 1]);
        assert!(s.read(f.as_raw_fd(), &bufs, 0).is_none());
        let taken = s.take(usize::MAX);
        assert_eq!(taken, 3);
        let bufs = slices(&mut mem, &[total]);
        assert!(s.read(f.as_raw_fd(), &bufs, 0).is_none());
        s.idle.fetch_add(taken, Ordering::AcqRel);
    }

    #[test]
    fn results_combine_up_to_the_first_short_part() {
        let part = |len| Part {
            offset: 0,
            len,
            iovecs: Vec::new(),
        };
        let parts = [part(10), part(10), part(10)];
        let eio = || Err(io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(combine(&parts, Ok(10), vec![Ok(10), Ok(10)]).unwrap(), 30);
        assert_eq!(combine(&parts, Ok(10), vec![Ok(4), Ok(10)]).unwrap(), 14);
        assert_eq!(combine(&parts, Ok(3), vec![Ok(10), Ok(10)]).unwrap(), 3);
        assert_eq!(combine(&parts, Ok(10), vec![eio(), Ok(10)]).unwrap(), 10);
        assert!(combine(&parts, eio(), vec![Ok(10), Ok(10)]).is_err());
    }

    #[test]
    fn a_part_dropped_unrun_reports_an_error() {
        let done = Arc::new(Done::new(1));
        let idle = Arc::new(AtomicUsize::new(0));
        drop(HelperJob {
            fd: -1,
            part: Part {
                offset: 0,
                len: 1,
                iovecs: Vec::new(),
            },
            slot: 0,
            done: done.clone(),
            idle: idle.clone(),
            reported: false,
        });
        assert!(done.wait()[0].is_err());
        assert_eq!(idle.load(Ordering::Acquire), 1);
    }
}

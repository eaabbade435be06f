//! Freezing and thawing a guest process from outside.
//!
//! Freeze uses the kernel's own cgroup-v2 freezer trap: with the VM paused
//! and `sighand->siglock` free, the monitor sets `JOBCTL_TRAP_FREEZE` in
//! `task->jobctl` and `TIF_SIGPENDING` in the thread flags of every thread.
//! On its next way back to user mode the thread enters `get_signal()`,
//! finds the trap and parks in `do_freezer_trap()`. A guest `SIGCONT` (or
//! any non-fatal signal) wakes it only for it to park again, because the
//! trap bit stays set; SIGKILL still kills it.
//!
//! A thread sleeping interruptibly in the kernel parks when its sleep ends.
//!
//! Thaw clears the bit (VM paused, lock free), then has the guest kernel
//! run `wake_up_process(task)` for every thread by call injection: run
//! queues are never edited from outside.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::inject;
use crate::process;
use crate::vm::Vm;
use crate::vmi::Kernel;

/// `JOBCTL_TRAP_FREEZE_BIT` (include/linux/sched/jobctl.h, 5.4 to 6.x).
pub const JOBCTL_TRAP_FREEZE: u64 = 1 << 23;
/// `TIF_SIGPENDING` on x86 (arch/x86/include/asm/thread_info.h).
pub const TIF_SIGPENDING: u64 = 1 << 2;

/// How often to let the guest run briefly when a siglock is held.
const LOCK_RETRIES: usize = 200;

/// What a freeze or thaw touched.
#[derive(Debug, Clone, Serialize)]
pub struct FreezeReport {
    pub pid: u32,
    pub threads: usize,
    /// Attempts until the siglock was seen free.
    pub attempts: usize,
    /// For thaw: how many threads `wake_up_process` actually woke.
    pub woken: usize,
    /// For thaw: time waiting for a safe point (paced by the guest).
    pub wait_us: u64,
    /// For thaw: time from the safe point to the end (the calls).
    pub work_us: u64,
}

fn lock_free(k: &Kernel, task: u64) -> Result<bool> {
    let sighand = k.read_field(task, "task_struct", "sighand")?;
    let lock = sighand + k.off("sighand_struct", "siglock")?;
    Ok(k.read_u32(lock)? == 0)
}

/// Set (or clear) the trap bit on every thread of `pid` while the VM is
/// paused and the siglock is free. Returns (threads, attempts).
fn update_bits(vm: &mut Vm, pid: u32, freeze: bool) -> Result<(Vec<u64>, usize)> {
    for attempt in 1..=LOCK_RETRIES {
        let done = vm.paused(|vm| {
            let paging = vm.paging()?;
            let k = vm.kernel(paging)?;
            let p = process::find(&k, pid)?
                .ok_or_else(|| Error::Refused(format!("no process {pid}")))?;
            if p.kernel_thread {
                return Err(Error::Refused(format!("{pid} is a kernel thread")));
            }
            if !lock_free(&k, p.task)? {
                return Ok(None);
            }
            let threads = process::threads(&k, p.task)?;
            let jobctl = k.off("task_struct", "jobctl")?;
            let flags = k.off("task_struct", "thread_info.flags")?;
            for &t in &threads {
                let j = k.read_u64(t + jobctl)?;
                if freeze {
                    k.write_u64(t + jobctl, j | JOBCTL_TRAP_FREEZE)?;
                    let f = k.read_u64(t + flags)?;
                    k.write_u64(t + flags, f | TIF_SIGPENDING)?;
                } else {
                    k.write_u64(t + jobctl, j & !JOBCTL_TRAP_FREEZE)?;
                }
            }
            Ok(Some(threads))
        })?;
        if let Some(t) = done {
            return Ok((t, attempt));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(Error::Refused(format!("siglock of {pid} stayed held")))
}

/// Freeze process `pid`. The VM keeps running; the process parks the next
/// time it would return to user mode.
pub fn freeze(vm: &mut Vm, pid: u32) -> Result<FreezeReport> {
    let (threads, attempts) = update_bits(vm, pid, true)?;
    Ok(FreezeReport {
        pid,
        threads: threads.len(),
        attempts,
        woken: 0,
        wait_us: 0,
        work_us: 0,
    })
}

/// Thaw process `pid`: clear the trap and wake every thread through the
/// guest kernel's `wake_up_process`. Needs the gdbstub.
pub fn thaw(vm: &mut Vm, pid: u32, timeout: Duration) -> Result<FreezeReport> {
    let (threads, attempts) = update_bits(vm, pid, false)?;
    let mut gdb = vm.gdb()?;
    let (wake, hooks) = {
        let paging = vm.paging()?;
        let k = vm.kernel(paging)?;
        (
            k.sym("wake_up_process")?,
            inject::safe_points(&vm.profile, k.slide),
        )
    };
    let mut woken = 0;
    let (mut wait_us, mut work_us) = (0, 0);
    let res = (|| {
        let t0 = Instant::now();
        let mut sp = inject::reach_safe_point(&mut gdb, &hooks, timeout)?;
        let t1 = Instant::now();
        wait_us = (t1 - t0).as_micros() as u64;
        for &t in &threads {
            if sp.call(wake, &[t], timeout)? & 0xffff_ffff != 0 {
                woken += 1;
            }
        }
        sp.finish()?;
        work_us = t1.elapsed().as_micros() as u64;
        Ok(())
    })();
    gdb.detach()?;
    res?;
    Ok(FreezeReport {
        pid,
        threads: threads.len(),
        attempts,
        woken,
        wait_us,
        work_us,
    })
}

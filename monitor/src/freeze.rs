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
//! A thread sleeping interruptibly in the kernel would park only when its
//! sleep ends; when the gdbstub is available the monitor therefore has the
//! guest kernel run `wake_up_state(thread, TASK_INTERRUPTIBLE)` for such
//! threads (what `signal_wake_up` does for a real signal): the sleep returns
//! early, the syscall is set up for restart, and the thread parks at once.
//! Uninterruptible sleepers are never woken.
//!
//! Thaw clears the bit (VM paused, lock free), then has the guest kernel
//! run `wake_up_process(task)` for every thread by call injection: run
//! queues are never edited from outside.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::inject;
use crate::process;
use crate::report::FreezeReport;
use crate::vm::Vm;
use crate::vmi::Kernel;

/// `JOBCTL_TRAP_FREEZE_BIT` (include/linux/sched/jobctl.h, 5.4 to 6.x).
pub const JOBCTL_TRAP_FREEZE: u64 = 1 << 23;
/// `TIF_SIGPENDING` on x86 (arch/x86/include/asm/thread_info.h).
pub const TIF_SIGPENDING: u64 = 1 << 2;

/// How often to let the guest run briefly when a siglock is held.
const LOCK_RETRIES: usize = 200;

fn lock_free(k: &Kernel, task: u64) -> Result<bool> {
    let sighand = k.read_field(task, "task_struct", "sighand")?;
    let lock = sighand + k.off("sighand_struct", "siglock")?;
    Ok(k.read_u32(lock)? == 0)
}

/// `TASK_INTERRUPTIBLE`.
const TASK_INTERRUPTIBLE: u64 = 1;

/// Set (or clear) the trap bit on every thread of `pid` while the VM is
/// paused and the siglock is free. Returns (threads, interruptible
/// sleepers among them, attempts).
fn update_bits(vm: &mut Vm, pid: u32, freeze: bool) -> Result<(Vec<u64>, Vec<u64>, u64)> {
    for attempt in 1..=LOCK_RETRIES {
        let done = vm.paused(|vm| {
            let paging = vm.paging()?;
            let k = vm.kernel(paging)?;
            let p = process::find(&k, pid)?.ok_or(Error::NoSuchProcess(pid))?;
            if p.kernel_thread {
                return Err(Error::KernelThread(pid));
            }
            if !lock_free(&k, p.task)? {
                return Ok(None);
            }
            let threads = process::threads(&k, p.task)?;
            let jobctl = k.off("task_struct", "jobctl")?;
            let flags = k.off("task_struct", "thread_info.flags")?;
            let mut sleepers = Vec::new();
            for &t in &threads {
                if k.read_field(t, "task_struct", "__state")? & TASK_INTERRUPTIBLE != 0 {
                    sleepers.push(t);
                }
                let j = k.read_u64(t + jobctl)?;
                if freeze {
                    k.write_u64(t + jobctl, j | JOBCTL_TRAP_FREEZE)?;
                    let f = k.read_u64(t + flags)?;
                    k.write_u64(t + flags, f | TIF_SIGPENDING)?;
                } else {
                    k.write_u64(t + jobctl, j & !JOBCTL_TRAP_FREEZE)?;
                }
            }
            Ok(Some((threads, sleepers)))
        })?;
        if let Some((t, s)) = done {
            return Ok((t, s, attempt as u64));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(Error::SiglockHeld(pid))
}

/// Freeze process `pid`. Running threads park the next time they would
/// return to user mode; interruptible sleepers are woken into the trap by
/// call injection when the VM has a gdbstub (`kick`).
pub fn freeze(vm: &mut Vm, pid: u32, kick: bool, timeout: Duration) -> Result<FreezeReport> {
    let (threads, sleepers, attempts) = update_bits(vm, pid, true)?;
    let mut r = FreezeReport {
        pid,
        threads: threads.len() as u64,
        attempts,
        woken: 0,
        wait_us: 0,
        work_us: 0,
    };
    if kick && !sleepers.is_empty() && vm.spec.gdb.is_some() {
        let wake_state = {
            let paging = vm.paging()?;
            vm.kernel(paging)?.sym("wake_up_state")?
        };
        let calls: Vec<(u64, Vec<u64>)> = sleepers
            .iter()
            .map(|&t| (wake_state, vec![t, TASK_INTERRUPTIBLE]))
            .collect();
        (r.woken, r.wait_us, r.work_us) = inject_calls(vm, &calls, timeout)?;
    }
    Ok(r)
}

/// Run `calls` (function, arguments) at one safe point; returns (calls
/// that returned non-zero, wait µs, work µs).
fn inject_calls(
    vm: &mut Vm,
    calls: &[(u64, Vec<u64>)],
    timeout: Duration,
) -> Result<(u64, u64, u64)> {
    let mut gdb = vm.gdb()?;
    let hooks = {
        let paging = vm.paging()?;
        let k = vm.kernel(paging)?;
        inject::safe_points(&vm.profile, k.slide)
    };
    let res = (|| {
        let t0 = Instant::now();
        let mut sp = inject::reach_safe_point(&mut gdb, &hooks, timeout)?;
        let t1 = Instant::now();
        let mut nonzero = 0;
        for (f, args) in calls {
            // The functions used here return int/bool: look at eax only.
            if sp.call(*f, args, timeout)? & 0xffff_ffff != 0 {
                nonzero += 1;
            }
        }
        sp.finish()?;
        Ok((
            nonzero,
            (t1 - t0).as_micros() as u64,
            t1.elapsed().as_micros() as u64,
        ))
    })();
    gdb.detach()?;
    res
}

/// Thaw process `pid`: clear the trap and wake every thread through the
/// guest kernel's `wake_up_process`. Needs the gdbstub.
pub fn thaw(vm: &mut Vm, pid: u32, timeout: Duration) -> Result<FreezeReport> {
    let (threads, _, attempts) = update_bits(vm, pid, false)?;
    let wake = {
        let paging = vm.paging()?;
        vm.kernel(paging)?.sym("wake_up_process")?
    };
    let calls: Vec<(u64, Vec<u64>)> = threads.iter().map(|&t| (wake, vec![t])).collect();
    let (woken, wait_us, work_us) = inject_calls(vm, &calls, timeout)?;
    Ok(FreezeReport {
        pid,
        threads: threads.len() as u64,
        attempts,
        woken,
        wait_us,
        work_us,
    })
}

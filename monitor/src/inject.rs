//! Call injection: make the guest kernel run one of its own functions, from
//! outside, through the gdbstub.
//!
//! Some changes must be made by the guest kernel itself because they touch
//! state that is only safe to change under its own locks (run queues, the
//! page cache). The monitor therefore waits until a vCPU reaches a *safe
//! point* — the entry of a syscall handler (`__x64_sys_*`) or of the
//! periodic `vmstat_shepherd` work function, where the CPU runs a task in
//! process context, preemptible, with interrupts on and no locks held — and
//! turns that vCPU into a caller:
//!
//! 1. save the general registers;
//! 2. below the current stack pointer (the kernel has no red zone), push a
//!    return address that is the safe point itself, where a breakpoint sits;
//! 3. set `rdi`, `rsi`, `rdx`, ... and `rip = function`, and continue;
//! 4. when the breakpoint hits again with the stack pointer just above the
//!    pushed return address, the function has returned: read `rax`, then
//!    restore every saved register, so the interrupted syscall proceeds as if
//!    nothing happened.
//!
//! Other tasks may reach the same safe point while the function runs (it may
//! sleep); those hits are stepped over. Under TCG the breakpoints are
//! invisible to the guest.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gdb::Gdb;
use crate::kernel::Profile;

/// Safe points: syscall handlers, and `vmstat_shepherd`, a work function
/// that runs every second even when no task makes syscalls.
pub fn safe_points(profile: &Profile, slide: u64) -> Vec<u64> {
    profile
        .symbols
        .iter()
        .filter(|(n, _)| n.starts_with("__x64_sys_") || n.as_str() == "vmstat_shepherd")
        .map(|(_, a)| a.wrapping_add(slide))
        .collect()
}

const ARG_REGS: &[&str] = &["rdi", "rsi", "rdx", "rcx", "r8", "r9"];
const STACK_GAP: u64 = 512;

/// A vCPU parked at a safe point, ready to run calls.
pub struct SafePoint<'g> {
    gdb: &'g mut Gdb,
    at: u64,
    saved: Vec<(String, u64)>,
    rsp: u64,
}

/// Wait until some vCPU reaches one of `hooks` (the VM runs meanwhile).
/// All hook breakpoints except the one reached are removed again.
pub fn reach_safe_point<'g>(
    gdb: &'g mut Gdb,
    hooks: &[u64],
    timeout: Duration,
) -> Result<SafePoint<'g>> {
    if hooks.is_empty() {
        return Err(Error::MissingSymbol("__x64_sys_* (no safe point)".into()));
    }
    for &h in hooks {
        gdb.set_breakpoint(h)?;
    }
    let deadline = Instant::now() + timeout;
    let at = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let stop = gdb.cont(left.max(Duration::from_millis(1)))?;
        let rip = gdb.read_reg("rip")?;
        if stop.is_some() && hooks.contains(&rip) {
            break Some(rip);
        }
        if stop.is_none() || Instant::now() >= deadline {
            break None;
        }
    };
    for &h in hooks {
        if Some(h) != at {
            gdb.clear_breakpoint(h)?;
        }
    }
    let at = at.ok_or(Error::NoSafePoint(timeout))?;
    let saved = gdb.save_gprs()?;
    let rsp = saved
        .iter()
        .find(|(n, _)| n == "rsp")
        .map(|(_, v)| *v)
        .ok_or_else(|| Error::GdbNoRegister("rsp".into()))?;
    Ok(SafePoint {
        gdb,
        at,
        saved,
        rsp,
    })
}

impl SafePoint<'_> {
    /// Address of the safe point reached.
    pub fn address(&self) -> u64 {
        self.at
    }

    /// Call `func(args...)` in the guest kernel and return `rax`. The vCPU is
    /// back at the safe point, registers restored, afterwards.
    pub fn call(&mut self, func: u64, args: &[u64], timeout: Duration) -> Result<u64> {
        if args.len() > ARG_REGS.len() {
            return Err(Error::TooManyArguments(args.len()));
        }
        // 16-byte aligned, minus the pushed return address: the alignment a
        // function sees right after a `call`.
        let new_rsp = ((self.rsp - STACK_GAP) & !0xf) - 8;
        self.gdb.write_mem(new_rsp, &self.at.to_le_bytes())?;
        for (r, v) in ARG_REGS.iter().zip(args) {
            self.gdb.write_reg(r, *v)?;
        }
        self.gdb.write_reg("rsp", new_rsp)?;
        self.gdb.write_reg("rip", func)?;
        let deadline = Instant::now() + timeout;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::CallTimeout(func));
            }
            let Some(_stop) = self.gdb.cont(left)? else {
                return Err(Error::CallTimeout(func));
            };
            let rip = self.gdb.read_reg("rip")?;
            let rsp = self.gdb.read_reg("rsp")?;
            if rip == self.at && rsp == new_rsp + 8 {
                break self.gdb.read_reg("rax")?;
            }
            if rip == self.at {
                // Another task reached the safe point meanwhile: let it pass.
                self.gdb.clear_breakpoint(self.at)?;
                self.gdb.step()?;
                self.gdb.set_breakpoint(self.at)?;
            }
        };
        self.gdb.restore_gprs(&self.saved)?;
        Ok(result)
    }

    /// Remove the breakpoint; the vCPU resumes the interrupted syscall when
    /// the VM next runs.
    pub fn finish(self) -> Result<()> {
        self.gdb.restore_gprs(&self.saved)?;
        self.gdb.clear_breakpoint(self.at)
    }
}

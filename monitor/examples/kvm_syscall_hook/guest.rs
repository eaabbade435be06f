//! The monitor's own KVM guests: a debug-register hook on the syscall entry.
//!
//! For VMs the monitor runs itself through `/dev/kvm`, a syscall can be
//! observed without any guest cooperation: point a hardware breakpoint
//! (`KVM_SET_GUEST_DEBUG` with DR0/DR7) at the address in `MSR_LSTAR`, and
//! every `syscall` instruction exits to the monitor with `KVM_EXIT_DEBUG`
//! before the guest kernel's first instruction runs.
//!
//! This module sets up a small synthetic 64-bit guest to measure exactly
//! that: code loops over `syscall`, and the LSTAR handler returns at once.
//! The host sees every call (its `rax`), and the cost of the hook is the
//! difference between hooked and unhooked runs. It is a measurement, not a
//! part of the daemon: it lives with its example (`main.rs` beside it),
//! and `monitor/tests/kvm.rs` includes it, so the monitor's library does
//! not link KVM for it.
//!
//! The loop runs in ring 0 and the handler returns with `jmp rcx`, not
//! `sysretq` to ring 3: on the (nested) KVM of the machines this was built
//! on, a `syscall` executed in ring 3 enters the handler with the user's CS
//! still loaded and a wrong R11, so the second iteration faults; from ring 0
//! SYSCALL behaves architecturally. The hook itself (a DR0 breakpoint on
//! the LSTAR target) does not depend on the caller's ring. Stock Linux
//! kernels do not boot under this KVM either, which is why Linux guests are
//! introspected under QEMU TCG instead.

use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_guest_debug, kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// What can go wrong with the synthetic guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed (`/dev/kvm` missing, no permission, refused).
    #[error("KVM {what}: {source}")]
    Kvm {
        /// The step that failed.
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Mapping the guest's memory failed.
    #[error("mmap guest memory: {0}")]
    Mmap(#[source] std::io::Error),
    /// The MSR list for the vCPU could not be built.
    #[error("MSR list: {0}")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    /// KVM took fewer of the MSRs than given.
    #[error("only {accepted} of {given} MSRs accepted")]
    MsrsRejected { accepted: usize, given: usize },
    /// A run of zero iterations was asked for.
    #[error("a run needs at least one iteration")]
    ZeroIterations,
    /// The vCPU exited for a reason the loop never causes.
    #[error("unexpected exit {0}")]
    UnexpectedExit(String),
    /// The hook saw fewer syscalls than the guest made.
    #[error("hook saw {seen} of {made} syscalls")]
    MissedCalls { seen: u64, made: u64 },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

const MEM_SIZE: usize = 4 << 20;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const USER_CODE: u64 = 0x10000;
const HANDLER: u64 = 0x20000;
const EXIT_PORT: u16 = 0x10;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_FMASK: u32 = 0xc000_0084;

/// The caller: `loop: mov rax, rbx; syscall; dec rbx; jnz loop; out 0x10, al; jmp $`.
const USER_LOOP: &[u8] = &[
    0x48, 0x89, 0xd8, // mov rax, rbx
    0x0f, 0x05, // syscall
    0x48, 0xff, 0xcb, // dec rbx
    0x75, 0xf6, // jnz loop
    0xe6, 0x10, // out 0x10, al
    0xeb, 0xfe, // jmp $
];
/// LSTAR handler: `jmp rcx` (SYSCALL left the return address in rcx; with
/// FMASK 0 the flags are untouched).
const SYSCALL_HANDLER: &[u8] = &[0xff, 0xe1];

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// One run of the loop.
#[derive(Debug, Clone, Copy)]
pub struct RunStats {
    pub iterations: u64,
    pub elapsed: Duration,
    /// Debug exits taken (0 when unhooked).
    pub hook_exits: u64,
}

/// Guest RAM owned by the monitor.
struct GuestMemory {
    ptr: *mut u8,
}

impl GuestMemory {
    fn new() -> Result<GuestMemory> {
        // SAFETY: anonymous private mapping, checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Mmap(std::io::Error::last_os_error()));
        }
        Ok(GuestMemory { ptr: ptr.cast() })
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        assert!(gpa as usize + data.len() <= MEM_SIZE);
        // SAFETY: bounds checked; the mapping is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(gpa as usize), data.len())
        };
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

/// The synthetic syscall-loop guest.
pub struct SyscallLoopVm {
    vcpu: VcpuFd,
    // Kept alive for the vCPU; dropped after it.
    _vm: VmFd,
    _kvm: Kvm,
    _mem: GuestMemory,
}

impl SyscallLoopVm {
    /// Create the VM: identity-mapped 2 MiB page, long mode, ring 0.
    pub fn new() -> Result<SyscallLoopVm> {
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let mut mem = GuestMemory::new()?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.ptr as u64,
        };
        // SAFETY: the region stays mapped for the VM's lifetime (`_mem`).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("memory region"))?;

        // Page tables: present | writable | user at every level; one 2 MiB page.
        mem.write(PML4, &(PDPT | 7).to_le_bytes());
        mem.write(PDPT, &(PD | 7).to_le_bytes());
        mem.write(PD, &(0x87u64).to_le_bytes());
        mem.write(USER_CODE, USER_LOOP);
        mem.write(HANDLER, SYSCALL_HANDLER);

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create vCPU"))?;
        // Without a CPUID table the vCPU has no long mode and no SYSCALL.
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("supported CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        let mut sregs = vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
        let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_bindings::kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = seg(0x08, 11, 1, 0);
        let data = seg(0x10, 3, 0, 1);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.cr3 = PML4;
        sregs.cr4 = 1 << 5; // PAE
        sregs.cr0 = 0x8005_0033; // PG | WP | NE | ET | MP | PE
        sregs.efer = 0x501; // LMA | LME | SCE
        vcpu.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;

        // SYSCALL enters CS 0x08/SS 0x10 (the caller's own segments).
        let msrs = Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_STAR,
                data: (0x10u64 << 48) | (0x08u64 << 32),
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_LSTAR,
                data: HANDLER,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_FMASK,
                data: 0,
                ..Default::default()
            },
        ])
        .map_err(Error::MsrList)?;
        let n = vcpu.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
        if n != 3 {
            return Err(Error::MsrsRejected {
                accepted: n,
                given: 3,
            });
        }
        Ok(SyscallLoopVm {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            _mem: mem,
        })
    }

    /// Hook (or unhook) the syscall entry with debug register 0; `step`
    /// single-steps instead (to move past the hooked instruction).
    fn set_debug(&self, hook: bool, step: bool) -> Result<()> {
        let mut dbg = kvm_guest_debug::default();
        if hook {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[0] = HANDLER;
            dbg.arch.debugreg[7] = 0x1; // L0, execute, length 1
        }
        if step {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
        }
        self.vcpu
            .set_guest_debug(&dbg)
            .map_err(kvm_err("set guest debug"))
    }

    /// Run `iterations` syscalls. With `observer`, the entry is hooked and
    /// the observer gets each call's `rax` at the breakpoint.
    pub fn run(
        &mut self,
        iterations: u64,
        mut observer: Option<&mut dyn FnMut(u64)>,
    ) -> Result<RunStats> {
        if iterations == 0 {
            return Err(Error::ZeroIterations);
        }
        let hooked = observer.is_some();
        self.set_debug(hooked, false)?;
        let mut regs = self.vcpu.get_regs().map_err(kvm_err("get regs"))?;
        regs.rip = USER_CODE;
        regs.rbx = iterations;
        regs.rflags = 0x2;
        self.vcpu.set_regs(&regs).map_err(kvm_err("set regs"))?;
        let mut hook_exits = 0;
        let start = Instant::now();
        loop {
            match self.vcpu.run().map_err(kvm_err("KVM_RUN"))? {
                VcpuExit::IoOut(EXIT_PORT, _) => break,
                VcpuExit::Debug(d) if d.pc == HANDLER && hooked => {
                    hook_exits += 1;
                    let r = self.vcpu.get_regs().map_err(kvm_err("get regs"))?;
                    if let Some(o) = observer.as_mut() {
                        o(r.rax);
                    }
                    // Step over the hooked instruction, then re-arm: an
                    // instruction breakpoint would otherwise hit again (RF
                    // is not honoured on every KVM), as with gdb.
                    self.set_debug(false, true)?;
                    match self.vcpu.run().map_err(kvm_err("KVM_RUN"))? {
                        VcpuExit::Debug(_) => {}
                        other => {
                            return Err(Error::UnexpectedExit(format!(
                                "{other:?} after a single step"
                            )))
                        }
                    }
                    self.set_debug(true, false)?;
                }
                other => {
                    let what = format!("{other:?}");
                    let r = self.vcpu.get_regs().map_err(kvm_err("get regs"))?;
                    let sr = self.vcpu.get_sregs().map_err(kvm_err("get sregs"))?;
                    return Err(Error::UnexpectedExit(format!(
                        "{what} at rip {:#x} (rbx {}, cr2 {:#x}, efer {:#x}, cs {:#x})",
                        r.rip, r.rbx, sr.cr2, sr.efer, sr.cs.selector
                    )));
                }
            }
        }
        Ok(RunStats {
            iterations,
            elapsed: start.elapsed(),
            hook_exits,
        })
    }
}

/// Per-syscall cost, hooked and unhooked, as medians over several runs.
#[derive(Debug, Clone, Copy)]
pub struct HookCost {
    pub unhooked_ns: f64,
    pub hooked_ns: f64,
    pub added_ns: f64,
    pub runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measure the hook's cost: `runs` runs of each kind, interleaved.
pub fn measure(iterations_unhooked: u64, iterations_hooked: u64, runs: usize) -> Result<HookCost> {
    let mut vm = SyscallLoopVm::new()?;
    let (mut un, mut ho) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let s = vm.run(iterations_unhooked, None)?;
        un.push(s.elapsed.as_nanos() as f64 / s.iterations as f64);
        let mut ignore = |_rax: u64| {};
        let s = vm.run(iterations_hooked, Some(&mut ignore))?;
        if s.hook_exits != iterations_hooked {
            return Err(Error::MissedCalls {
                seen: s.hook_exits,
                made: iterations_hooked,
            });
        }
        ho.push(s.elapsed.as_nanos() as f64 / s.iterations as f64);
    }
    let (u, h) = (median(un), median(ho));
    Ok(HookCost {
        unhooked_ns: u,
        hooked_ns: h,
        added_ns: h - u,
        runs: runs.max(1),
    })
}

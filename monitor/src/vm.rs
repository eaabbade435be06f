//! One attached QEMU VM: its QMP session, its RAM and its kernel profile.

use std::path::PathBuf;

use crate::config::VmSpec;
use crate::error::{Error, Result};
use crate::gdb::Gdb;
use crate::kernel::profile::{default_cache_dir, Profile};
use crate::mem::GuestRam;
use crate::paging::Paging;
use crate::qmp::Qmp;
use crate::vmi::Kernel;

/// An attached VM.
pub struct Vm {
    pub spec: VmSpec,
    pub qmp: Qmp,
    pub ram: GuestRam,
    pub profile: Profile,
}

impl Vm {
    /// Connect to QMP, map RAM, load (or build and cache) the profile.
    pub fn attach(spec: VmSpec, cache_dir: Option<PathBuf>) -> Result<Vm> {
        let cache = cache_dir.unwrap_or_else(default_cache_dir);
        let profile = Profile::load_or_build(&spec.vmlinux, spec.system_map.as_deref(), &cache)?;
        let ram = GuestRam::open(&spec.mem)?;
        let qmp = Qmp::connect(&spec.qmp)?;
        Ok(Vm {
            spec,
            qmp,
            ram,
            profile,
        })
    }

    /// Paging state of vCPU 0, from `info registers`.
    pub fn paging(&mut self) -> Result<Paging> {
        let regs = self.qmp.registers(0)?;
        let cr3 = *regs
            .get("CR3")
            .ok_or_else(|| Error::QmpProtocol("no CR3 in info registers".into()))?;
        let cr4 = *regs
            .get("CR4")
            .ok_or_else(|| Error::QmpProtocol("no CR4 in info registers".into()))?;
        Ok(Paging::from_regs(cr3, cr4))
    }

    /// A kernel view using the given paging state.
    pub fn kernel(&self, paging: Paging) -> Result<Kernel<'_>> {
        Kernel::locate(&self.ram, &self.profile, paging)
    }

    /// Run `f` with the VM paused, resuming it afterwards only if it was
    /// running before.
    pub fn paused<R>(&mut self, f: impl FnOnce(&mut Vm) -> Result<R>) -> Result<R> {
        let was_running = self.qmp.running()?;
        if was_running {
            self.qmp.stop()?;
        }
        let r = f(self);
        if was_running {
            self.qmp.cont()?;
        }
        r
    }

    /// Open the gdbstub (which stops the VM until [`Gdb::detach`]).
    pub fn gdb(&self) -> Result<Gdb> {
        let path = self.spec.gdb.as_ref().ok_or(Error::NoGdbstub)?;
        Gdb::connect(path)
    }
}

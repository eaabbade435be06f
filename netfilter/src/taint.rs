//! The taint query the policy's `tainted` rules ask: is process (vm, pid,
//! task) tainted, i.e. has it read confidential data? Taint tracking
//! answers it (another part of the monitor); until it does, the policy's
//! `[taint] processes` list of process names stands in, which is enough to
//! write and test rules for tainted processes.

use monitor_client::taint::SocketOwner;

/// Answers "is this guest process tainted?". The process is keyed by the
/// VM, its pid and its `task_struct` address (which tells it from a later
/// process that reuses the pid); `owner` carries all three and the name.
pub trait TaintOracle: Send {
    fn is_tainted(&mut self, vm: &str, owner: &SocketOwner) -> bool;
}

/// Stand-in: processes whose name is on a list count as tainted.
pub struct NamedTaint {
    names: Vec<String>,
}

impl NamedTaint {
    pub fn new(names: Vec<String>) -> NamedTaint {
        NamedTaint { names }
    }
}

impl TaintOracle for NamedTaint {
    fn is_tainted(&mut self, _vm: &str, owner: &SocketOwner) -> bool {
        self.names.contains(&owner.name)
    }
}

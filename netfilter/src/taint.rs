//! The taint query the policy's `tainted` rules ask: is process (vm, pid,
//! task) tainted, i.e. has it read confidential data? Taint tracking answers
//! it in the monitor ([`MonitorTaint`], over `monitor-client`'s
//! `taint_query`); the policy's `[taint] processes` list of names is added
//! on top, for processes that must count as tainted whatever the tracker
//! says ([`NamedTaint`], also the whole answer when there is no monitor).
//!
//! Failing closed: when the monitor cannot answer (down, timed out, an
//! error reply), the process counts as tainted, so that a `tainted = true`
//! rule still applies; the filter logs it. A process the tracker does not
//! know is clean: taint tracking has no record of confidential data in it.

use std::path::PathBuf;
use std::time::Duration;

use monitor_client::taint::SocketOwner;
use monitor_client::taint_report::Query;
use monitor_client::{Client, ClientError};

/// Answers "is this guest process tainted?". The process is keyed by the
/// VM, its pid and its `task_struct` address (which tells it from a later
/// process that reuses the pid); `owner` carries all three and the name.
pub trait TaintOracle: Send {
    fn is_tainted(&mut self, vm: &str, owner: &SocketOwner) -> bool;
}

/// Processes whose name is on a list count as tainted.
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

/// How a taint question is answered by the tracker.
pub trait TaintSource: Send {
    fn query(&mut self, vm: &str, query: Query) -> Result<bool, ClientError>;
}

/// The monitor daemon, over its Unix socket; reconnects after a failure.
pub struct MonitorSource {
    socket: PathBuf,
    timeout: Duration,
    client: Option<Client>,
}

impl MonitorSource {
    pub fn new(socket: PathBuf, timeout: Duration) -> MonitorSource {
        MonitorSource {
            socket,
            timeout,
            client: None,
        }
    }
}

impl TaintSource for MonitorSource {
    fn query(&mut self, vm: &str, query: Query) -> Result<bool, ClientError> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self.client.insert(Client::connect(&self.socket)?),
        };
        let r = client.taint_query(vm, query, self.timeout);
        if r.as_ref().is_err_and(ClientError::is_unreachable) {
            self.client = None;
        }
        r.map(|(entry, _complete)| entry.is_some())
    }
}

/// The tracker's answer, or the names list's; fails closed.
pub struct MonitorTaint<S: TaintSource = MonitorSource> {
    source: S,
    names: NamedTaint,
    /// Questions the tracker could not answer (each counted as tainted).
    pub failures: u64,
}

impl<S: TaintSource> MonitorTaint<S> {
    pub fn new(source: S, names: Vec<String>) -> MonitorTaint<S> {
        MonitorTaint {
            source,
            names: NamedTaint::new(names),
            failures: 0,
        }
    }

    /// By pid and `task_struct` first: a process the monitor has
    /// identified. Then by pid alone: a process only fsd has reported so
    /// far (its pid from a FUSE header, not yet checked against the
    /// monitor's own view), which is tainted as far as anyone knows.
    fn ask(&mut self, vm: &str, owner: &SocketOwner) -> Result<bool, ClientError> {
        let task = (owner.task != 0).then_some(owner.task);
        if task.is_some()
            && self.source.query(
                vm,
                Query::Process {
                    pid: owner.pid,
                    task,
                },
            )?
        {
            return Ok(true);
        }
        self.source.query(
            vm,
            Query::Process {
                pid: owner.pid,
                task: None,
            },
        )
    }
}

impl<S: TaintSource> TaintOracle for MonitorTaint<S> {
    fn is_tainted(&mut self, vm: &str, owner: &SocketOwner) -> bool {
        if self.names.is_tainted(vm, owner) {
            return true;
        }
        match self.ask(vm, owner) {
            Ok(t) => t,
            Err(e) => {
                self.failures += 1;
                log::warn!(
                    "taint of pid {} ({}) in {vm} unknown, counted as tainted: {e}",
                    owner.pid,
                    owner.name
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker that knows some (pid, task) pairs, or is down.
    struct Fake {
        tainted: Vec<(u32, Option<u64>)>,
        down: bool,
        asked: Vec<(u32, Option<u64>)>,
    }

    impl TaintSource for Fake {
        fn query(&mut self, _vm: &str, q: Query) -> Result<bool, ClientError> {
            let Query::Process { pid, task } = q else {
                panic!("the filter asks about processes")
            };
            self.asked.push((pid, task));
            if self.down {
                return Err(ClientError::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )));
            }
            Ok(self.tainted.contains(&(pid, task)))
        }
    }

    fn owner(pid: u32, name: &str, task: u64) -> SocketOwner {
        SocketOwner {
            pid,
            name: name.into(),
            uid: 1000,
            exe: None,
            task,
        }
    }

    fn oracle(tainted: Vec<(u32, Option<u64>)>, down: bool) -> MonitorTaint<Fake> {
        MonitorTaint::new(
            Fake {
                tainted,
                down,
                asked: Vec::new(),
            },
            vec!["exfil".into()],
        )
    }

    #[test]
    fn identified_then_reported_pids_are_asked_and_clean_is_clean() {
        let mut o = oracle(vec![(7, Some(0xa000)), (9, None)], false);
        assert!(o.is_tainted("vm", &owner(7, "wget", 0xa000)));
        // Only fsd's word so far: tainted by pid.
        assert!(o.is_tainted("vm", &owner(9, "wget", 0xb000)));
        assert!(!o.is_tainted("vm", &owner(8, "wget", 0xc000)));
        // No task known: asked by pid alone, once.
        assert!(!o.is_tainted("vm", &owner(10, "wget", 0)));
        assert_eq!(
            o.source.asked,
            vec![
                (7, Some(0xa000)),
                (9, Some(0xb000)),
                (9, None),
                (8, Some(0xc000)),
                (8, None),
                (10, None)
            ]
        );
        assert_eq!(o.failures, 0);
    }

    #[test]
    fn names_count_without_asking_and_a_down_tracker_fails_closed() {
        let mut o = oracle(Vec::new(), true);
        assert!(o.is_tainted("vm", &owner(5, "exfil", 0x1000)));
        assert!(o.source.asked.is_empty());
        assert!(o.is_tainted("vm", &owner(6, "wget", 0x2000)));
        assert_eq!(o.failures, 1);
    }
}

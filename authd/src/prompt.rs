//! Asking the person. [`Broker`] makes sure one VM has at most one prompt on
//! screen at a time and that concurrent requests for the same VM and
//! principal share one prompt; [`Frontend`] picks the dialog or the terminal.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use zeroize::Zeroizing;

use crate::config::{Config, FrontendKind};
use crate::dialog::{parent, DialogRequest};
use crate::error::{Error, Result};
use crate::tty;

/// What the person answered.
pub enum Answer {
    Password(Zeroizing<String>),
    /// A question was allowed (once, or always).
    Allowed {
        always: bool,
    },
    Cancelled,
    TimedOut,
}

/// Where prompts are shown.
pub enum Frontend {
    Dialog {
        program: PathBuf,
        session: parent::Session,
    },
    Tty {
        path: PathBuf,
        /// One prompt on the terminal at a time, whatever the VM.
        busy: Mutex<()>,
    },
    /// Neither a display nor a terminal: every request is denied.
    None,
}

impl Frontend {
    pub fn from_config(cfg: &Config) -> Frontend {
        let env = |var| std::env::var(var).ok().filter(|v: &String| !v.is_empty());
        let x11 = |display| parent::Session::X11 {
            display,
            xauthority: cfg.xauthority.clone(),
        };
        let wayland = |socket| parent::Session::Wayland {
            socket,
            runtime_dir: cfg
                .xdg_runtime_dir
                .clone()
                .or_else(|| env("XDG_RUNTIME_DIR").map(PathBuf::from)),
            sway_socket: cfg
                .sway_socket
                .clone()
                .or_else(|| env("SWAYSOCK").map(PathBuf::from)),
        };
        // The configuration before the environment; Wayland before X11
        // (under Wayland, DISPLAY names Xwayland).
        let session = (cfg.wayland_display.clone().map(wayland))
            .or_else(|| cfg.display.clone().map(x11))
            .or_else(|| env("WAYLAND_DISPLAY").map(wayland))
            .or_else(|| env("DISPLAY").map(x11));
        let program = cfg
            .dialog_program
            .clone()
            .unwrap_or_else(default_dialog_program);
        let tty = |path: &PathBuf| Frontend::Tty {
            path: path.clone(),
            busy: Mutex::new(()),
        };
        match (cfg.frontend, session, &cfg.tty) {
            (FrontendKind::Dialog | FrontendKind::Auto, Some(session), _) => {
                Frontend::Dialog { program, session }
            }
            (FrontendKind::Tty | FrontendKind::Auto, _, Some(path)) => tty(path),
            _ => Frontend::None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Frontend::Dialog { .. } => "dialog",
            Frontend::Tty { .. } => "tty",
            Frontend::None => "none",
        }
    }

    /// Shows one prompt and waits for the answer.
    pub fn ask(&self, request: &DialogRequest, on_shown: &mut dyn FnMut()) -> Result<Answer> {
        match self {
            Frontend::Dialog { program, session } => {
                parent::ask(program, session, request, on_shown)
            }
            Frontend::Tty { path, busy } => {
                let _one = busy.lock().unwrap_or_else(|p| p.into_inner());
                tty::ask(path, request, on_shown)
            }
            Frontend::None => Err(Error::Dialog(
                "no display and no terminal configured".into(),
            )),
        }
    }
}

/// `authd-dialog` next to the running binary.
pub fn default_dialog_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("authd-dialog")))
        .unwrap_or_else(|| PathBuf::from("/usr/libexec/authd-dialog"))
}

struct Shared<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
}

struct BrokerState<T> {
    busy_vms: HashSet<String>,
    inflight: HashMap<(String, String), Arc<Shared<T>>>,
}

/// Serialises prompts per VM and coalesces identical requests.
pub struct Broker<T> {
    state: Mutex<BrokerState<T>>,
    slot_free: Condvar,
}

impl<T: Clone> Default for Broker<T> {
    fn default() -> Self {
        Broker {
            state: Mutex::new(BrokerState {
                busy_vms: HashSet::new(),
                inflight: HashMap::new(),
            }),
            slot_free: Condvar::new(),
        }
    }
}

impl<T: Clone> Broker<T> {
    /// Runs `work` as the only prompt for `vm`, or, if a prompt for the same
    /// VM and principal is already running, waits for and returns its result.
    /// If `work` panics, everyone gets `on_panic`.
    pub fn run(&self, vm: &str, principal: &str, work: impl FnOnce() -> T, on_panic: T) -> T {
        let key = (vm.to_owned(), principal.to_owned());
        let shared = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(s) = st.inflight.get(&key) {
                    let s = s.clone();
                    drop(st);
                    let mut v = s.value.lock().unwrap_or_else(|p| p.into_inner());
                    while v.is_none() {
                        v = s.ready.wait(v).unwrap_or_else(|p| p.into_inner());
                    }
                    return v.clone().expect("checked above");
                }
                if !st.busy_vms.contains(vm) {
                    break;
                }
                st = self.slot_free.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            let s = Arc::new(Shared {
                value: Mutex::new(None),
                ready: Condvar::new(),
            });
            st.busy_vms.insert(vm.to_owned());
            st.inflight.insert(key.clone(), s.clone());
            s
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or(on_panic);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.inflight.remove(&key);
            st.busy_vms.remove(vm);
        }
        *shared.value.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.clone());
        shared.ready.notify_all();
        self.slot_free.notify_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn same_principal_coalesces_and_vm_serialises() {
        let broker: Arc<Broker<u32>> = Arc::new(Broker::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let concurrent = Arc::new(AtomicUsize::new(0));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for i in 0..8 {
            let (b, r, c, m) = (
                broker.clone(),
                runs.clone(),
                concurrent.clone(),
                max_concurrent.clone(),
            );
            handles.push(std::thread::spawn(move || {
                let principal = if i % 2 == 0 { "alice" } else { "bob" };
                b.run(
                    "vm1",
                    principal,
                    || {
                        r.fetch_add(1, Ordering::SeqCst);
                        let now = c.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        c.fetch_sub(1, Ordering::SeqCst);
                        7
                    },
                    0,
                )
            }));
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in handles {
            assert_eq!(h.join().unwrap(), 7);
        }
        assert_eq!(
            max_concurrent.load(Ordering::SeqCst),
            1,
            "one prompt per VM"
        );
        // 8 requests for 2 principals: alice's first run, bob waits for the VM;
        // the rest coalesce onto a running prompt or run once more after it.
        let n = runs.load(Ordering::SeqCst);
        assert!((2..=4).contains(&n), "ran {n} times for 8 requests");
    }

    #[test]
    fn panic_in_work_gives_fallback_and_frees_slot() {
        let broker: Broker<u32> = Broker::default();
        assert_eq!(broker.run("vm", "p", || panic!("boom"), 9), 9);
        assert_eq!(broker.run("vm", "p", || 1, 9), 1);
    }
}

//! Daemon mode: one monitor per host serving requests from fsd (and
//! operators) over a Unix socket, in the protocol of the `monitor-client`
//! crate: JSON lines, one reply per request, answered in order
//! (docs/monitor.md, "Daemon protocol").
//!
//! VMs are named in the config file and attached on first use; requests
//! for one VM are serialised (they pause and single-step it), requests for
//! different VMs run in parallel, one thread per connection. A VM whose
//! QEMU connection broke is attached afresh on its next request.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::{to_line, FailureKind, Op, Reply, ReplyBody, Request, MAX_REQUEST_LINE};
use crate::sockets::SocketTable;
use crate::vm::Vm;
use crate::{freeze, pagecache, process, smbios};
use monitor_client::taint::{SocketOwner, SocketQuery};

/// How long a flush, thaw or other injection may wait for a safe point.
const INJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared daemon state: the config and the VMs attached so far.
pub struct State {
    config: Config,
    cache: Option<PathBuf>,
    vms: Mutex<BTreeMap<String, Arc<Mutex<Vm>>>>,
    /// Each VM's sockets as last seen, for ownership lookups.
    sockets: Mutex<BTreeMap<String, Arc<Mutex<SocketTable>>>>,
}

impl State {
    pub fn new(config: Config, profile_cache: Option<PathBuf>) -> State {
        State {
            config,
            cache: profile_cache,
            vms: Mutex::new(BTreeMap::new()),
            sockets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Owners of guest sockets, through the VM's [`SocketTable`]; the
    /// table is dropped with the VM's connection.
    fn socket_owners(
        &self,
        name: &str,
        queries: &[SocketQuery],
    ) -> Result<Vec<Option<SocketOwner>>> {
        let table = self
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
        let res = self.with_vm(name, |vm| table.owners(vm, queries));
        if res.as_ref().is_err_and(Error::vm_connection_lost) {
            *table = SocketTable::new();
        }
        res
    }

    fn vm(&self, name: &str) -> Result<Arc<Mutex<Vm>>> {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = vms.get(name) {
            return Ok(v.clone());
        }
        let spec = self.config.vm(name)?.clone();
        let vm = Arc::new(Mutex::new(Vm::attach(spec, self.cache.clone())?));
        vms.insert(name.to_string(), vm.clone());
        Ok(vm)
    }

    /// Runs `f` on VM `name`, alone on it; forgets the VM when its
    /// connection broke, so that the next request attaches afresh.
    fn with_vm<R>(&self, name: &str, f: impl FnOnce(&mut Vm) -> Result<R>) -> Result<R> {
        let vm = self.vm(name)?;
        let mut vm = vm.lock().unwrap_or_else(|p| p.into_inner());
        let res = f(&mut vm);
        if res.as_ref().is_err_and(Error::vm_connection_lost) {
            self.vms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
        }
        res
    }

    /// Runs one operation against the VM it names.
    pub fn handle(&self, op: &Op) -> Result<ReplyBody> {
        Ok(match op {
            Op::Ping => ReplyBody::Pong,
            Op::Uuid { vm } => ReplyBody::Identity {
                identity: self.with_vm(vm, |vm| {
                    let qmp_uuid = vm.qmp.uuid()?;
                    let found = smbios::read_uuid(&vm.ram).ok();
                    Ok(smbios::identity(&qmp_uuid, found.as_ref()))
                })?,
            },
            Op::Ps { vm } => ReplyBody::Processes {
                processes: self.with_vm(vm, |vm| {
                    vm.paused(|vm| {
                        let p = vm.paging()?;
                        process::list(&vm.kernel(p)?)
                    })
                })?,
            },
            Op::Freeze { vm, pid } => ReplyBody::Frozen {
                report: self.with_vm(vm, |vm| freeze::freeze(vm, *pid, true, INJECT_TIMEOUT))?,
            },
            Op::Thaw { vm, pid } => ReplyBody::Thawed {
                report: self.with_vm(vm, |vm| freeze::thaw(vm, *pid, INJECT_TIMEOUT))?,
            },
            Op::Flush { vm, inos } => {
                let set: BTreeSet<u64> = inos.iter().copied().collect();
                ReplyBody::Flushed {
                    report: self.with_vm(vm, |vm| pagecache::flush(vm, &set, INJECT_TIMEOUT))?,
                }
            }
            Op::SocketOwner {
                vm,
                transport,
                local,
            } => {
                let query = SocketQuery {
                    transport: *transport,
                    local: *local,
                    remote: None,
                };
                ReplyBody::SocketOwner {
                    owner: self.socket_owners(vm, &[query])?.pop().flatten(),
                }
            }
            Op::SocketOwners { vm, sockets } => ReplyBody::SocketOwners {
                owners: self.socket_owners(vm, sockets)?,
            },
            // Defined for the taint engine, which does not exist yet.
            Op::FileEvents { .. } => return Err(Error::Unsupported(op.name())),
        })
    }
}

/// How a failed operation is classed on the wire.
fn failure_kind(e: &Error) -> FailureKind {
    match e {
        Error::UnknownVm(_) => FailureKind::UnknownVm,
        Error::Unsupported(_) => FailureKind::Unsupported,
        _ => FailureKind::Failed,
    }
}

/// Answers one request line.
pub fn respond(state: &State, line: &[u8]) -> Reply {
    let req = match Request::from_line(line) {
        Ok(req) => req,
        Err(rejection) => return rejection.into_reply(),
    };
    match state.handle(&req.op) {
        Ok(body) => Reply::new(req.id, body),
        Err(e) => Reply::failure(req.id, failure_kind(&e), e.to_string()),
    }
}

fn serve_connection(state: &State, stream: UnixStream) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("read request", e))?;
        if n == 0 {
            return Ok(());
        }
        let too_long = n >= MAX_REQUEST_LINE && line.last() != Some(&b'\n');
        let reply = if too_long {
            Reply::failure(
                0,
                FailureKind::BadRequest,
                format!("bad request: line longer than {MAX_REQUEST_LINE} bytes"),
            )
        } else if line.trim_ascii().is_empty() {
            continue;
        } else {
            respond(state, &line)
        };
        let mut writer = reader.get_ref();
        writer
            .write_all(&to_line(&reply).map_err(Error::EncodeReply)?)
            .map_err(|e| Error::io("write reply", e))?;
        if too_long {
            return Ok(());
        }
    }
}

/// Accept connections forever, one thread each.
pub fn serve(listener: UnixListener, state: Arc<State>) -> Result<()> {
    for conn in listener.incoming() {
        let stream = conn.map_err(|e| Error::io("accept", e))?;
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("monitor-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(&st, stream) {
                    log::warn!("connection: {e}");
                }
            });
        if let Err(source) = spawned {
            // The connection is dropped; the daemon goes on serving others.
            log::error!(
                "{}",
                Error::ThreadSpawn {
                    what: "serve a connection",
                    source
                }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_client::taint::Transport;
    use monitor_client::{Client, ClientError};

    const T: Duration = Duration::from_secs(10);

    /// A daemon with no VMs on a fresh socket.
    fn daemon() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(State::new(Config::default(), None));
        std::thread::spawn(move || serve(listener, state));
        (dir, path)
    }

    fn failure(r: std::result::Result<impl std::fmt::Debug, ClientError>) -> (FailureKind, String) {
        match r {
            Err(ClientError::Monitor { kind, message }) => (kind, message),
            other => panic!("expected a failure reply, got {other:?}"),
        }
    }

    #[test]
    fn typed_requests_and_failures() {
        let (_dir, path) = daemon();
        let mut c = Client::connect(&path).unwrap();
        c.ping(T).unwrap();
        let (kind, message) = failure(c.flush("nope", &[1], T));
        assert_eq!(kind, FailureKind::UnknownVm);
        assert!(message.contains("no VM named nope"), "{message}");
        let local = "10.0.2.15:80".parse().unwrap();
        let (kind, _) = failure(c.socket_owner("nope", Transport::Tcp, local, T));
        assert_eq!(kind, FailureKind::UnknownVm);
        let (kind, _) = failure(c.file_events("nope", vec![], T));
        assert_eq!(kind, FailureKind::Unsupported);
        // The connection still serves after failures.
        c.ping(T).unwrap();
    }

    #[test]
    fn lines_that_are_no_request() {
        let (_dir, path) = daemon();
        let s = UnixStream::connect(&path).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut ask = |line: &[u8]| -> Reply {
            (&s).write_all(line).unwrap();
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            serde_json::from_str(&l).unwrap()
        };
        for bad in [&b"not json\n"[..], b"{}\n", b"[1,2]\n"] {
            let reply = ask(bad);
            assert_eq!(reply.id, 0);
            match reply.body {
                ReplyBody::Error { kind, message } => {
                    assert_eq!(kind, FailureKind::BadRequest);
                    assert!(message.starts_with("bad request"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Blank lines are skipped; an overlong line is refused and the
        // connection closed.
        let mut long = b"\n\n".to_vec();
        long.resize(2 + MAX_REQUEST_LINE, b'x');
        let reply = ask(&long);
        assert!(
            matches!(
                reply.body,
                ReplyBody::Error {
                    kind: FailureKind::BadRequest,
                    ..
                }
            ),
            "{reply:?}"
        );
    }
}

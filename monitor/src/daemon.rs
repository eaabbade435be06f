//! Daemon mode: one monitor per host serving requests from fsd (and
//! operators) over a Unix socket, in the protocol of the `monitor-client`
//! crate: JSON lines, one reply per request, answered in order
//! (docs/monitor.md, "Daemon protocol").
//!
//! VMs are named in the config file and attached on first use; requests
//! for one VM are serialised (they pause and single-step it), requests for
//! different VMs run in parallel, one thread per connection. A VM whose
//! QEMU connection broke is attached afresh on its next request.
//!
//! Taint tracking (docs/taint.md) lives here too: fsd's file events and the
//! guest kernel hooks' events (from a thread per VM whose configuration
//! names a plugin socket, [`crate::hook_feed`]) go to the taint engine,
//! keyed by the VM's SMBIOS UUID; `taint_watch` turns a connection into a stream of notices;
//! a leak with `freeze_on_leak` is frozen by a thread of its own, so the
//! producer's request never waits for the VM.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::hook_feed::{FeedConfig, HookSink};
use crate::hooks::{self, HookPlan};
use crate::protocol::{to_line, FailureKind, Op, Reply, ReplyBody, Request, MAX_REQUEST_LINE};
use crate::sockets::SocketTable;
use crate::taint::alert::Freezer;
use crate::taint::{EngineConfig, FreezeOrder, Input, TaintService, VmId};
use crate::vm::Vm;
use crate::{freeze, pagecache, process, smbios};
use monitor_client::taint::{SocketOwner, SocketQuery};

/// How long a flush, thaw or other injection may wait for a safe point.
const INJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Derived files one `taint_derived` answer carries at most.
const DERIVED_PER_REPLY: usize = 4096;

/// Leaks waiting to be frozen at most; more are refused (and logged).
const FREEZE_QUEUE: usize = 64;

/// Shared daemon state: the config, the VMs attached so far, taint
/// tracking.
pub struct State {
    config: Config,
    cache: Option<PathBuf>,
    vms: Mutex<BTreeMap<String, Arc<Mutex<Vm>>>>,
    taint: Arc<TaintService>,
    /// UUIDs QMP gave for VMs whose config entry names none.
    uuids: Mutex<HashMap<String, String>>,
    /// Each VM's sockets as last seen, for ownership lookups.
    sockets: Mutex<BTreeMap<String, Arc<Mutex<SocketTable>>>>,
}

impl State {
    /// A daemon whose taint state lives in memory only.
    pub fn new(config: Config, profile_cache: Option<PathBuf>) -> State {
        let taint = TaintService::in_memory(EngineConfig {
            limits: config.taint.limits.clone(),
            internal: config.internal_addrs(),
            freeze_on_leak: config.taint.freeze_on_leak,
        });
        State::with_taint(config, profile_cache, Arc::new(taint))
    }

    /// A daemon with this taint tracking (see [`TaintService::open`]).
    pub fn with_taint(
        config: Config,
        profile_cache: Option<PathBuf>,
        taint: Arc<TaintService>,
    ) -> State {
        State {
            config,
            cache: profile_cache,
            vms: Mutex::new(BTreeMap::new()),
            taint,
            uuids: Mutex::new(HashMap::new()),
            sockets: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn taint(&self) -> &Arc<TaintService> {
        &self.taint
    }

    /// Takes events of `vm` into taint tracking; the reply says how many
    /// were taken in and which files they showed to be derived.
    fn ingest(&self, vm: &str, input: Input) -> Result<ReplyBody> {
        let fx = self
            .taint
            .ingest(self.vm_id(vm)?, input)
            .map_err(Error::Taint)?;
        Ok(ReplyBody::Accepted {
            count: fx.accepted,
            derived: fx.derived,
        })
    }

    /// The VM a request names, with the UUID that keys its taint state: a
    /// configured VM's `uuid`, else QEMU's (asked once); a UUID itself; or
    /// a name the taint state still knows (for status and graphs after
    /// the VM left the configuration).
    pub fn vm_id(&self, name: &str) -> Result<VmId> {
        let id = |uuid: String, name: &str| VmId {
            uuid,
            name: name.to_string(),
        };
        if let Some(spec) = self.config.vms.get(name) {
            if let Some(u) = &spec.uuid {
                return Ok(id(u.to_ascii_lowercase(), name));
            }
            if let Some(u) = self
                .uuids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
            {
                return Ok(id(u.clone(), name));
            }
            let u = self.with_vm(name, |vm| vm.qmp.uuid())?;
            self.uuids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), u.clone());
            return Ok(id(u, name));
        }
        if is_uuid(name) {
            let u = name.to_ascii_lowercase();
            let known = self
                .config
                .name_of_uuid(&u)
                .map(str::to_owned)
                .or_else(|| self.taint.name_of(&u))
                .unwrap_or_else(|| u.clone());
            return Ok(id(u, &known));
        }
        match self.taint.uuid_of_name(name) {
            Some(u) => Ok(id(u, name)),
            None => Err(Error::UnknownVm(name.into())),
        }
    }

    /// The VM a taint query names: as [`State::vm_id`], but when QEMU
    /// cannot give the UUID of a configured VM without `uuid` (it is down,
    /// or this daemon restarted since it last asked), the UUID the taint
    /// state last knew by that name. What is known of a VM's taint must
    /// not depend on the VM running, nor be forgotten with a restart.
    /// (Events are keyed by QEMU's answer only: a VM created again under
    /// the same name is another VM.)
    fn query_id(&self, name: &str) -> Result<VmId> {
        match self.vm_id(name) {
            Err(e) if !matches!(e, Error::UnknownVm(_)) => match self.taint.uuid_of_name(name) {
                Some(uuid) => Ok(VmId {
                    uuid,
                    name: name.to_string(),
                }),
                None => Err(e),
            },
            r => r,
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
    pub fn handle(&self, op: Op) -> Result<ReplyBody> {
        Ok(match op {
            Op::Ping => ReplyBody::Pong,
            Op::Uuid { vm } => ReplyBody::Identity {
                identity: self.with_vm(&vm, |vm| {
                    let qmp_uuid = vm.qmp.uuid()?;
                    let found = smbios::read_uuid(&vm.ram).ok();
                    Ok(smbios::identity(&qmp_uuid, found.as_ref()))
                })?,
            },
            Op::Ps { vm } => {
                let processes = self.with_vm(&vm, |vm| {
                    vm.paused(|vm| {
                        let p = vm.paging()?;
                        process::list(&vm.kernel(p)?)
                    })
                })?;
                self.feed_process_view(&vm, &processes);
                ReplyBody::Processes { processes }
            }
            Op::Freeze { vm, pid } => ReplyBody::Frozen {
                report: self.with_vm(&vm, |vm| freeze::freeze(vm, pid, true, INJECT_TIMEOUT))?,
            },
            Op::Thaw { vm, pid } => ReplyBody::Thawed {
                report: self.with_vm(&vm, |vm| freeze::thaw(vm, pid, INJECT_TIMEOUT))?,
            },
            Op::Flush { vm, inos } => {
                let set: BTreeSet<u64> = inos.iter().copied().collect();
                ReplyBody::Flushed {
                    report: self.with_vm(&vm, |vm| pagecache::flush(vm, &set, INJECT_TIMEOUT))?,
                }
            }
            Op::FileEvents {
                vm,
                events,
                dropped,
            } => self.ingest(&vm, Input::Files { events, dropped })?,
            Op::GuestEvents {
                vm,
                events,
                dropped,
                seq,
            } => self.ingest(
                &vm,
                Input::Guest {
                    events,
                    dropped,
                    seq,
                },
            )?,
            Op::TaintStatus { vm } => {
                let uuid = vm.map(|v| self.query_id(&v)).transpose()?.map(|id| id.uuid);
                ReplyBody::TaintStatus {
                    status: self.taint.status(uuid.as_deref()),
                }
            }
            Op::TaintQuery { vm, query } => {
                let (tainted, complete) = self.taint.query(&self.query_id(&vm)?.uuid, &query);
                ReplyBody::TaintAnswer { tainted, complete }
            }
            Op::TaintGraph { vm } => {
                let uuid = self.query_id(&vm)?.uuid;
                ReplyBody::TaintGraph {
                    nodes: self.taint.graph(&uuid),
                    vm: uuid,
                }
            }
            Op::TaintDerived { vm, after } => {
                let (files, next) =
                    self.taint
                        .derived_after(&self.query_id(&vm)?.uuid, after, DERIVED_PER_REPLY);
                ReplyBody::Derived { files, next }
            }
            // Served by `serve_connection`, which owns the connection.
            Op::TaintWatch => {
                return Err(Error::BadRequest(
                    "taint_watch needs a connection of its own".into(),
                ))
            }
            Op::SocketOwner {
                vm,
                transport,
                local,
            } => {
                let query = SocketQuery {
                    transport,
                    local,
                    remote: None,
                };
                ReplyBody::SocketOwner {
                    owner: self.socket_owners(&vm, &[query])?.pop().flatten(),
                }
            }
            Op::SocketOwners { vm, sockets } => ReplyBody::SocketOwners {
                owners: self.socket_owners(&vm, &sockets)?,
            },
        })
    }

    /// A process list the monitor read goes to the taint engine as its own
    /// view of the VM's pids, when the VM has taint state and a UUID known
    /// without asking QEMU again.
    fn feed_process_view(&self, vm: &str, processes: &[crate::report::Process]) {
        let uuid = match self.config.vms.get(vm) {
            Some(spec) => spec
                .uuid
                .as_ref()
                .map(|u| u.to_ascii_lowercase())
                .or_else(|| {
                    self.uuids
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(vm)
                        .cloned()
                }),
            None => None,
        };
        let Some(uuid) = uuid.filter(|u| self.taint.knows(u)) else {
            return;
        };
        let id = VmId {
            uuid,
            name: vm.to_string(),
        };
        let input = Input::Processes {
            processes: processes.to_vec(),
        };
        if let Err(e) = self.taint.ingest(id, input) {
            log::warn!("process list of {vm} not given to taint tracking: {e}");
        }
    }

    /// Freezes the process a leak alert names, if that pid is still the
    /// process the alert saw.
    fn freeze_leak(&self, order: &FreezeOrder) -> Result<String> {
        self.with_vm(&order.vm.name, |vm| {
            let found = vm.paused(|vm| {
                let p = vm.paging()?;
                process::find(&vm.kernel(p)?, order.pid)
            })?;
            match found {
                Some(p) if order.task == 0 || p.task == order.task => {}
                _ => return Err(Error::NoSuchProcess(order.pid)),
            }
            let r = freeze::freeze(vm, order.pid, true, INJECT_TIMEOUT)?;
            Ok(format!("frozen: {} threads, {} woken", r.threads, r.woken))
        })
    }
}

/// Whether `s` looks like a UUID (8-4-4-4-12 hex digits).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The daemon's freezer: leaks are queued to a thread that freezes them
/// one after the other, so that the events' producer never waits for a VM.
struct QueueFreezer(SyncSender<FreezeOrder>);

impl Freezer for QueueFreezer {
    fn freeze(&self, order: FreezeOrder) {
        match self.0.try_send(order) {
            Ok(()) => {}
            Err(TrySendError::Full(o) | TrySendError::Disconnected(o)) => log::error!(
                "taint leak of pid {} in {}: the freeze queue is full, not frozen",
                o.pid,
                o.vm.name
            ),
        }
    }
}

/// Starts the thread that freezes leaking processes (`freeze_on_leak`).
pub fn start_freezer(state: Arc<State>) -> Result<()> {
    let (tx, rx) = sync_channel::<FreezeOrder>(FREEZE_QUEUE);
    let st = state.clone();
    std::thread::Builder::new()
        .name("monitor-freezer".into())
        .spawn(move || {
            for order in rx {
                let outcome = st.freeze_leak(&order).map_err(|e| e.to_string());
                st.taint.freeze_done(&order.vm, order.pid, outcome);
            }
        })
        .map_err(|source| Error::ThreadSpawn {
            what: "freeze leaking processes",
            source,
        })?;
    state.taint.set_freezer(Arc::new(QueueFreezer(tx)));
    Ok(())
}

/// The hook feeds' way into the daemon: plans are made on the VM as any
/// request's work is (serialised with the others on that VM), events go
/// through the one ingest helper.
impl HookSink for State {
    fn plan(&self, vm: &str) -> Result<HookPlan> {
        self.with_vm(vm, |v| {
            HookPlan::for_vm(v, hooks::PROCESS_AND_SOCKETS).map(|(_, plan)| plan)
        })
    }

    fn deliver(
        &self,
        vm: &str,
        events: Vec<monitor_client::taint::GuestEvent>,
        lost: u64,
        seq: Option<monitor_client::taint::PluginSeq>,
    ) -> Result<()> {
        self.ingest(
            vm,
            Input::Guest {
                events,
                dropped: lost,
                seq,
            },
        )
        .map(|_| ())
    }
}

/// Starts one hook feed per configured VM that names a plugin socket
/// (`plugin`): each arms the hooks in its VM's kernel and feeds their
/// events to taint tracking, on a thread of its own.
pub fn start_hook_feeds(state: Arc<State>) -> Result<()> {
    let feeds: Vec<(String, PathBuf)> = state
        .config
        .vms
        .iter()
        .filter_map(|(name, spec)| Some((name.clone(), spec.plugin.clone()?)))
        .collect();
    for (name, socket) in feeds {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sink: Arc<dyn HookSink> = state.clone();
        crate::hook_feed::spawn(FeedConfig::new(&name, socket), sink, stop).map_err(|source| {
            Error::ThreadSpawn {
                what: "feed hook events",
                source,
            }
        })?;
    }
    Ok(())
}

/// How a failed operation is classed on the wire.
fn failure_kind(e: &Error) -> FailureKind {
    match e {
        Error::UnknownVm(_) => FailureKind::UnknownVm,
        Error::Unsupported(_) => FailureKind::Unsupported,
        Error::BadRequest(_) => FailureKind::BadRequest,
        _ => FailureKind::Failed,
    }
}

/// Answers one request.
fn answer(state: &State, req: Request) -> Reply {
    let id = req.id;
    match state.handle(req.op) {
        Ok(body) => Reply::new(id, body),
        Err(e) => Reply::failure(id, failure_kind(&e), e.to_string()),
    }
}

/// Answers one request line (a `taint_watch` is refused here: it needs the
/// connection, see [`serve`]).
pub fn respond(state: &State, line: &[u8]) -> Reply {
    match Request::from_line(line) {
        Ok(req) => answer(state, req),
        Err(rejection) => rejection.into_reply(),
    }
}

fn write_reply(mut w: &UnixStream, reply: &Reply) -> Result<()> {
    w.write_all(&to_line(reply).map_err(Error::EncodeReply)?)
        .map_err(|e| Error::io("write reply", e))
}

/// Whether the peer hung up (checked between notices, so that a watch
/// with nothing to say still ends when its client leaves).
fn peer_gone(stream: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Streams taint notices on `stream` as replies to request `id`, until the
/// client hangs up.
fn watch(state: &State, stream: &UnixStream, id: u64) -> Result<()> {
    let sub = state.taint.watch();
    write_reply(stream, &Reply::new(id, ReplyBody::Watching))?;
    loop {
        match sub.next(Duration::from_millis(500)) {
            Some(notice) => {
                write_reply(stream, &Reply::new(id, ReplyBody::TaintNotice { notice }))?
            }
            None if peer_gone(stream) => return Ok(()),
            None => {}
        }
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
            match Request::from_line(&line) {
                Ok(Request {
                    id,
                    op: Op::TaintWatch,
                    ..
                }) => return watch(state, reader.get_ref(), id),
                Ok(req) => answer(state, req),
                Err(rejection) => rejection.into_reply(),
            }
        };
        write_reply(reader.get_ref(), &reply)?;
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
    use monitor_client::taint::{
        FileAccess, FileEvent, GuestEvent, GuestEventKind, SocketInfo, Transport,
    };
    use monitor_client::taint_report::{Query, TaintNotice};
    use monitor_client::{Client, ClientError};

    const T: Duration = Duration::from_secs(10);

    /// A daemon with no VMs on a fresh socket.
    fn daemon() -> (tempfile::TempDir, PathBuf) {
        daemon_with(Config::default())
    }

    fn daemon_with(config: Config) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(State::new(config, None));
        std::thread::spawn(move || serve(listener, state));
        (dir, path)
    }

    const UUID_A: &str = "6f1c3e2a-0000-4000-8000-00000000000a";

    /// Two VMs that need no QEMU for taint tracking: their UUIDs and
    /// addresses are in the file.
    fn taint_config() -> Config {
        serde_json::from_value(serde_json::json!({
            "vms": {
                "web": {"qmp": "/nonexistent/q", "mem": "/nonexistent/m", "vmlinux": "/k",
                        "uuid": UUID_A.to_uppercase(), "addrs": ["10.0.0.1"]},
                "db": {"qmp": "/nonexistent/q2", "mem": "/nonexistent/m2", "vmlinux": "/k",
                       "uuid": "6f1c3e2a-0000-4000-8000-00000000000b", "addrs": ["10.0.0.2"]}
            }
        }))
        .unwrap()
    }

    fn guest_event(kind: GuestEventKind) -> GuestEvent {
        GuestEvent {
            vm: UUID_A.into(),
            kind,
            pid: 31,
            tgid: 31,
            task: 0xffff_8880_0000_3100,
            start_time: 99,
            comm: "curl".into(),
        }
    }

    #[test]
    fn taint_tracking_over_the_socket() {
        let (_dir, path) = daemon_with(taint_config());
        let mut watch = Client::connect(&path).unwrap().taint_watch(T).unwrap();
        let mut c = Client::connect(&path).unwrap();
        // The hooks name the process (the plugin gives the VM's UUID).
        let exec = guest_event(GuestEventKind::Exec {
            filename: "/usr/bin/curl".into(),
        });
        assert_eq!(c.guest_events(UUID_A, vec![exec], 0, T).unwrap(), 1);
        // fsd reports a read of a source and a write.
        let ev = |ino, access, rule: Option<&str>| FileEvent {
            pid: 31,
            dev: 2051,
            ino,
            access,
            path: Some(format!("f{ino}")),
            rule: rule.map(str::to_owned),
        };
        let (count, derived) = c
            .file_events(
                "web",
                vec![
                    ev(1, FileAccess::Read, Some("secret/**")),
                    ev(2, FileAccess::Write, None),
                ],
                0,
                T,
            )
            .unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            derived
                .iter()
                .map(|d| (d.ino, d.rule.as_str()))
                .collect::<Vec<_>>(),
            vec![(2, "secret/**")]
        );
        let (files, next) = c.taint_derived("web", 0, T).unwrap();
        assert_eq!((files.len(), next), (1, 1));
        // A send to the other VM is inside; one to the world is a leak.
        let send = |peer: &str| {
            guest_event(GuestEventKind::Send {
                socket: SocketInfo::Inet {
                    transport: Transport::Tcp,
                    local: "10.0.0.1:40000".parse().unwrap(),
                    peer: Some(peer.parse().unwrap()),
                },
            })
        };
        c.guest_events(
            "web",
            vec![send("10.0.0.2:5432"), send("1.1.1.1:443")],
            0,
            T,
        )
        .unwrap();
        // Status by name and by UUID, the query a filter makes, the graph.
        let status = c.taint_status(Some("web"), T).unwrap();
        assert_eq!(status.vms.len(), 1);
        let web = &status.vms[0];
        assert_eq!((web.vm.as_str(), web.name.as_str()), (UUID_A, "web"));
        assert_eq!(
            (web.files, web.processes, web.inet_flows, web.alerts),
            (2, 1, 2, 1)
        );
        assert!(web.complete, "{:?}", web.incomplete);
        assert_eq!(c.taint_status(None, T).unwrap().vms.len(), 1);
        let (tainted, complete) = c
            .taint_query(
                UUID_A,
                Query::Process {
                    pid: 31,
                    task: None,
                },
                T,
            )
            .unwrap();
        assert!(tainted.is_some() && complete);
        let (tainted, _) = c
            .taint_query(
                "db",
                Query::Process {
                    pid: 31,
                    task: None,
                },
                T,
            )
            .unwrap();
        assert!(tainted.is_none());
        let (uuid, nodes) = c.taint_graph("web", T).unwrap();
        assert_eq!((uuid.as_str(), nodes.len()), (UUID_A, 5));
        let (kind, _) = failure(c.taint_graph("nope", T));
        assert_eq!(kind, FailureKind::UnknownVm);
        // The watcher saw every entry tainted, then the leak.
        let mut seen = Vec::new();
        loop {
            match watch.next_notice(Some(T)).unwrap() {
                TaintNotice::Leak { alert } => {
                    assert_eq!(alert.destination, "1.1.1.1:443".parse().unwrap());
                    assert_eq!(alert.chain.len(), 2);
                    break;
                }
                TaintNotice::Tainted { entry, .. } => seen.push(entry.subject),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
    }

    #[test]
    fn a_vm_qemu_cannot_name_is_still_found_by_the_name_its_taint_was_kept_under() {
        // "web" has no `uuid` in the configuration and its QEMU is not
        // there: a daemon that restarted cannot ask QEMU for the UUID.
        let config: Config = serde_json::from_value(serde_json::json!({
            "vms": {"web": {"qmp": "/nonexistent/q", "mem": "/nonexistent/m", "vmlinux": "/k"}}
        }))
        .unwrap();
        let taint = TaintService::in_memory(EngineConfig::default());
        let web = VmId {
            uuid: UUID_A.into(),
            name: "web".into(),
        };
        let ev = FileEvent {
            pid: 31,
            dev: 2051,
            ino: 1,
            access: FileAccess::Read,
            path: Some("secret/a".into()),
            rule: Some("secret/**".into()),
        };
        taint
            .ingest(
                web,
                Input::Files {
                    events: vec![ev],
                    dropped: 0,
                },
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(State::with_taint(config, None, Arc::new(taint)));
        std::thread::spawn(move || serve(listener, state));
        let mut c = Client::connect(&path).unwrap();
        assert_eq!(c.taint_status(Some("web"), T).unwrap().vms[0].files, 1);
        assert_eq!(c.taint_graph("web", T).unwrap().0, UUID_A);
        let q = Query::Process {
            pid: 31,
            task: None,
        };
        assert!(c.taint_query("web", q, T).unwrap().0.is_some());
        // New events still need QEMU's word.
        let (kind, _) = failure(c.file_events("web", vec![], 0, T));
        assert_eq!(kind, FailureKind::Failed);
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
        let (kind, _) = failure(c.file_events("nope", vec![], 0, T));
        assert_eq!(kind, FailureKind::UnknownVm);
        // A watch is a connection of its own, never a line among others.
        let r = respond(
            &State::new(Config::default(), None),
            br#"{"v":1,"id":4,"op":"taint_watch"}"#,
        );
        assert!(
            matches!(
                r.body,
                ReplyBody::Error {
                    kind: FailureKind::BadRequest,
                    ..
                }
            ),
            "{r:?}"
        );
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

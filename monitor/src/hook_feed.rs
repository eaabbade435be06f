//! Hook events of running VMs into taint tracking: the daemon's end of the
//! TCG plugin.
//!
//! For each configured VM whose QEMU loads the plugin (`plugin` in its
//! configuration), a thread of the daemon connects to the plugin's socket,
//! has the monitor find the guest kernel's KASLR slide and the hook
//! addresses ([`HookPlan::for_vm`]), arms the hooks, and hands the events to
//! the taint engine in small batches, in the engine's form
//! ([`monitor_client::taint::GuestEvent`]).
//!
//! A plugin is code in QEMU, which a guest drives: what it sends is read
//! with bounds (a line is at most [`hooks::MAX_LINE`], a batch at most
//! [`BATCH`] events) and never trusted to be well formed. What the engine
//! cannot use is counted, never fatal: a line that is no event, an event
//! whose fields could not be read in the guest, a gap in the plugin's
//! sequence numbers (its ring was full), a connection that broke. Each
//! counts as lost events, which marks the VM's tracking incomplete
//! (`taint status`). Each batch also says which of the plugin's numbers it
//! accounts for ([`PluginSeq`], the plugin named by its QEMU process), so
//! that a monitor restarted later can show where its predecessor's last
//! batch ended and count what the plugin made meanwhile as lost
//! (`taint::restart`). A plugin that goes away is connected to again, with a
//! growing pause; nothing here ever blocks the daemon's other work, since
//! each VM's feed is a thread of its own and talks to the rest only through
//! [`HookSink`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monitor_client::taint::{GuestEvent, GuestEventKind, PluginSeq, SocketInfo, Transport};

use crate::error::Result;
use crate::hooks::{self, EventKind, HookPlan, LinkError, Message, PluginLink, Reply};

/// Events per batch at most.
pub const BATCH: usize = 256;
/// How long a batch waits to fill up.
pub const LINGER: Duration = Duration::from_millis(20);
/// Longest pause between attempts to reach a plugin.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long arming may take (the plugin flushes QEMU's translations).
const ARM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long events the engine takes nothing from (other socket families,
/// the idle task) wait before a batch without events says how far the
/// numbering went: so that the state's last number stays close to the
/// plugin's, and a restart does not count them as lost.
pub const PROGRESS_LINGER: Duration = Duration::from_secs(1);

/// What a feed needs from the daemon.
pub trait HookSink: Send + Sync {
    /// The hook table for the kernel now running in VM `vm`.
    fn plan(&self, vm: &str) -> Result<HookPlan>;
    /// One batch of `vm`'s events, with the feed's count of events lost
    /// since it started (cumulative, as fsd reports its own) and the
    /// plugin's numbers the batch accounts for (when the plugin could be
    /// named).
    fn deliver(
        &self,
        vm: &str,
        events: Vec<GuestEvent>,
        lost: u64,
        seq: Option<PluginSeq>,
    ) -> Result<()>;
}

/// Why a plugin event is of no use to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// A kind the engine takes nothing from (file read/write, raw calls),
    /// or an event of the idle task (pid 0): skipped, not lost.
    NotTracked,
    /// A socket of a family the engine does not follow (netlink, packet, …):
    /// skipped, not lost.
    OtherFamily,
    /// The guest fields it needs could not be read (a fault, a bad value):
    /// lost.
    Unreadable(&'static str),
}

/// The engine's form of one plugin event of VM `vm` (its UUID or name).
/// The process is named by its leader's `task_struct` and start time: the
/// task itself for a leader, the plugin's `leader` fields for another
/// thread.
pub fn to_taint(vm: &str, e: &hooks::GuestEvent) -> std::result::Result<GuestEvent, Unusable> {
    let kind = match e.ev {
        EventKind::Fork => {
            let c = e.child.as_ref().ok_or(Unusable::Unreadable("child"))?;
            GuestEventKind::Fork {
                child_pid: pid(c.pid).ok_or(Unusable::Unreadable("child pid"))?,
                child_tgid: pid(c.tgid).ok_or(Unusable::Unreadable("child tgid"))?,
                child_task: c.leader.unwrap_or(c.ptr),
                child_start_time: c.start_ns.unwrap_or(0),
            }
        }
        EventKind::Exit => GuestEventKind::Exit,
        EventKind::Exec => GuestEventKind::Exec {
            filename: e.filename.clone().unwrap_or_default(),
        },
        EventKind::Send | EventKind::Recv => {
            let s = e.sock.as_ref().ok_or(Unusable::Unreadable("socket"))?;
            let socket = socket(s)?;
            if e.ev == EventKind::Send {
                GuestEventKind::Send { socket }
            } else {
                GuestEventKind::Recv { socket }
            }
        }
        EventKind::Read | EventKind::Write | EventKind::Call => return Err(Unusable::NotTracked),
    };
    let t = &e.task;
    // The idle task (pid 0) forks the first kernel threads at boot: no
    // process the engine follows.
    if t.pid == Some(0) {
        return Err(Unusable::NotTracked);
    }
    let (task, start_time) = match t.leader {
        Some(leader) => (leader, t.leader_start_ns.unwrap_or(0)),
        None => (t.ptr, t.start_ns.unwrap_or(0)),
    };
    Ok(GuestEvent {
        vm: vm.to_string(),
        kind,
        pid: pid(t.pid).ok_or(Unusable::Unreadable("task"))?,
        tgid: pid(t.tgid).ok_or(Unusable::Unreadable("task"))?,
        task,
        start_time,
        comm: t.comm.clone().unwrap_or_default(),
    })
}

/// A pid as the engine takes it: read, and positive.
fn pid(p: Option<i32>) -> Option<u32> {
    p.and_then(|p| u32::try_from(p).ok()).filter(|&p| p != 0)
}

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

fn socket(s: &hooks::GuestSock) -> std::result::Result<SocketInfo, Unusable> {
    match s.family {
        Some(AF_UNIX) => Ok(SocketInfo::Unix {
            local: None,
            peer: None,
            sock: s.sk.filter(|&k| k != 0),
            peer_sock: s.peer_sk.filter(|&k| k != 0),
        }),
        Some(AF_INET | AF_INET6) => {
            let transport = match s.stype {
                Some(SOCK_STREAM) => Transport::Tcp,
                Some(SOCK_DGRAM) => Transport::Udp,
                // Raw and other INET sockets are not followed.
                _ => return Err(Unusable::OtherFamily),
            };
            let addr = |a: &Option<String>| -> Option<SocketAddr> {
                a.as_deref()?.parse().ok().map(ipv4_as_such)
            };
            let local = addr(&s.local).ok_or(Unusable::Unreadable("local address"))?;
            // An unconnected socket has no peer in its `struct sock`.
            let peer = addr(&s.remote).filter(|p| p.port() != 0 && !p.ip().is_unspecified());
            Ok(SocketInfo::Inet {
                transport,
                local,
                peer,
            })
        }
        None => Err(Unusable::Unreadable("socket family")),
        Some(_) => Err(Unusable::OtherFamily),
    }
}

/// An IPv4 peer of a dual-stack socket (`[::ffff:a.b.c.d]:port`, as
/// busybox `nc -l` listens) as the IPv4 address it is, so that both ends of
/// one flow name it alike.
fn ipv4_as_such(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Where one VM's feed connects and how it paces itself.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// The VM's name in the monitor's configuration.
    pub vm: String,
    /// The plugin's socket.
    pub socket: PathBuf,
    pub batch: usize,
    pub linger: Duration,
    pub max_backoff: Duration,
}

impl FeedConfig {
    pub fn new(vm: &str, socket: PathBuf) -> FeedConfig {
        FeedConfig {
            vm: vm.to_string(),
            socket,
            batch: BATCH,
            linger: LINGER,
            max_backoff: MAX_BACKOFF,
        }
    }
}

/// The feed's own state across connections.
struct Feed {
    cfg: FeedConfig,
    sink: Arc<dyn HookSink>,
    /// Events lost since the feed started (what the engine is told).
    lost: u64,
    /// The plugin's last sequence number seen (kept across connections to
    /// the same plugin, so events made while none was connected show as a
    /// gap; a smaller number means a new plugin).
    last_seq: Option<u64>,
    /// The first sequence number seen since the last delivery.
    pending_first: Option<u64>,
    /// The last sequence number delivered, of this plugin.
    delivered: Option<u64>,
    /// The plugin of this connection ([`PluginLink::peer_instance`]).
    instance: Option<String>,
}

/// How one connection ended.
enum End {
    /// The plugin said goodbye (QEMU exits).
    Bye,
    /// Asked to stop.
    Stopped,
}

impl Feed {
    /// Counts the events a sequence number shows missing.
    fn saw_seq(&mut self, seq: u64) {
        match self.last_seq {
            Some(last) if seq > last + 1 => self.lost += seq - last - 1,
            _ => {}
        }
        self.last_seq = Some(seq);
        self.pending_first.get_or_insert(seq);
    }

    /// The numbers a delivery now accounts for: from the one after the
    /// last delivered (or the first seen, in a new connection to another
    /// plugin) to the last seen, gaps being counted in `lost`; or none, but
    /// the goodbye.
    fn take_seq(&mut self, ended: bool) -> Option<PluginSeq> {
        let instance = self.instance.clone()?;
        let last = self.last_seq?;
        let seen = self.pending_first.take();
        if seen.is_none() && !ended {
            return None;
        }
        let first = match (self.delivered, seen) {
            (Some(d), _) => d + 1,
            (None, Some(first)) => first,
            (None, None) => last + 1,
        };
        self.delivered = Some(last);
        Some(PluginSeq {
            instance,
            first,
            last,
            ended,
        })
    }

    /// Hands a batch to the sink. A batch the sink refuses is lost, and
    /// counted so: the next batch says so.
    fn deliver(&mut self, events: Vec<GuestEvent>, ended: bool) -> Result<()> {
        let seq = self.take_seq(ended);
        let n = events.len() as u64;
        let r = self.sink.deliver(&self.cfg.vm, events, self.lost, seq);
        if r.is_err() {
            self.lost += n;
        }
        r
    }

    /// One connection: connect, plan, arm, then feed until it ends.
    fn session(&mut self, stop: &AtomicBool) -> std::result::Result<End, String> {
        let vm = self.cfg.vm.clone();
        let mut link = PluginLink::connect(&self.cfg.socket, Duration::ZERO)
            .map_err(|e| format!("connect: {e}"))?;
        let instance = link.peer_instance();
        if instance.is_none() {
            log::warn!("{vm}: the plugin's QEMU process cannot be told (SO_PEERCRED, /proc): its events go without their numbers, and a restart of the monitor leaves the VM's tracking incomplete");
        }
        if instance != self.instance {
            // Another plugin: its numbers are no continuation.
            self.last_seq = None;
            self.delivered = None;
        }
        self.instance = instance;
        self.pending_first = None;
        let plan = self.sink.plan(&vm).map_err(|e| format!("plan: {e}"))?;
        let generation = link
            .arm(&plan, ARM_TIMEOUT)
            .map_err(|e| format!("arm: {e}"))?;
        log::info!(
            "{vm}: {} hooks armed in the guest kernel (generation {generation})",
            plan.hooks.len()
        );
        let mut batch: Vec<GuestEvent> = Vec::new();
        let mut first_at = Instant::now();
        // When the numbers delivered last fell behind (events of no use
        // to the engine since).
        let mut behind_since: Option<Instant> = None;
        let mut reported_lost = None;
        let mut overflow = 0;
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(End::Stopped);
            }
            let wait = if batch.is_empty() {
                Duration::from_millis(200)
            } else {
                self.cfg.linger.saturating_sub(first_at.elapsed())
            };
            let msg = link.next(wait);
            self.lost += link.overflow() - overflow;
            overflow = link.overflow();
            match msg {
                Ok(Some(Message::Event(e))) => {
                    self.saw_seq(e.seq);
                    behind_since.get_or_insert_with(Instant::now);
                    match to_taint(&vm, &e) {
                        Ok(ev) => {
                            log::trace!("{vm}: hook event #{}: {ev:?}", e.seq);
                            if batch.is_empty() {
                                first_at = Instant::now();
                            }
                            batch.push(ev);
                        }
                        Err(Unusable::NotTracked | Unusable::OtherFamily) => {}
                        Err(Unusable::Unreadable(what)) => {
                            log::debug!("{vm}: hook event #{} without its {what}", e.seq);
                            self.lost += 1;
                        }
                    }
                }
                Ok(Some(Message::Reply(Reply::Bye(stats)))) => {
                    log::info!(
                        "{vm}: the plugin said goodbye ({} hits, {} lost in the plugin)",
                        stats.hits,
                        stats.dropped_full + stats.dropped_down
                    );
                    break Ok(End::Bye);
                }
                Ok(Some(Message::Reply(_))) | Ok(None) => {}
                Err(LinkError::Malformed { line, source }) => {
                    let cut: String = line.chars().take(120).collect();
                    log::warn!("{vm}: the plugin sent no event: {source}: {cut:?}");
                    self.lost += 1;
                }
                Err(e) => {
                    // Whatever was in flight is gone.
                    self.lost += 1;
                    break Err(format!("plugin link: {e}"));
                }
            }
            let due = batch.len() >= self.cfg.batch
                || (!batch.is_empty() && first_at.elapsed() >= self.cfg.linger)
                || reported_lost != Some(self.lost)
                || behind_since.is_some_and(|t| t.elapsed() >= PROGRESS_LINGER);
            if due {
                let events = std::mem::take(&mut batch);
                behind_since = None;
                match self.deliver(events, false) {
                    Ok(()) => reported_lost = Some(self.lost),
                    Err(e) => log::warn!("{vm}: hook events not taken: {e}"),
                }
            }
        };
        let ended = matches!(result, Ok(End::Bye));
        if !batch.is_empty() || reported_lost != Some(self.lost) || ended || behind_since.is_some()
        {
            if let Err(e) = self.deliver(batch, ended) {
                log::warn!("{vm}: hook events not taken: {e}");
            }
        }
        result
    }
}

/// Feeds VM `cfg.vm`'s plugin events to `sink` until `stop` is set:
/// connects (again, after a growing pause, whenever the plugin is not there
/// or the connection ends), arms, delivers.
pub fn run(cfg: FeedConfig, sink: Arc<dyn HookSink>, stop: Arc<AtomicBool>) {
    let mut feed = Feed {
        cfg,
        sink,
        lost: 0,
        last_seq: None,
        pending_first: None,
        delivered: None,
        instance: None,
    };
    let mut pause = Duration::from_millis(100);
    let mut last_error = String::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match feed.session(&stop) {
            Ok(End::Stopped) => return,
            Ok(End::Bye) => last_error.clear(),
            Err(e) => {
                // Said once per kind of failure, not once per attempt.
                if e != last_error {
                    log::warn!("{}: hooks: {e}", feed.cfg.vm);
                    last_error = e;
                }
            }
        }
        // A connection that lasted resets the pause.
        if started.elapsed() > Duration::from_secs(30) {
            pause = Duration::from_millis(100);
        }
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(pause));
        }
        pause = (pause * 2).min(feed.cfg.max_backoff);
    }
}

/// Starts [`run`] on a thread of its own.
pub fn spawn(
    cfg: FeedConfig,
    sink: Arc<dyn HookSink>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("hooks-{}", cfg.vm))
        .spawn(move || run(cfg, sink, stop))
}

#[cfg(test)]
mod tests;

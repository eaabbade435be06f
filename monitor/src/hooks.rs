//! Hooks in the guest kernel, the monitor's half. The TCG plugin
//! (`taint-plugin/`, loaded into QEMU) instruments chosen kernel functions
//! and streams what their calls saw; the monitor tells it where those
//! functions are and how the structs it reads are laid out, and reads its
//! events. The taint engine consumes [`GuestEvent`]s.
//!
//! Addresses are the profile's kallsyms addresses plus the KASLR slide the
//! monitor finds in the running guest ([`crate::vmi::Kernel`]); the per-CPU
//! `current_task` is an offset into the per-CPU area and is not slid.
//! Offsets come from the kernel's own BTF. The plugin arms a new table
//! only after flushing QEMU's translations, and says so (`armed`); events
//! from the new hooks follow that line.
//!
//! Wire format (JSON lines on the plugin's Unix socket, described in
//! `docs/taint.md`): requests `{"op":"hooks",...}` and `{"op":"stats"}`;
//! replies carry `"reply"`, events carry `"ev"`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::Result;
use crate::kernel::Profile;
use crate::vmi::Kernel;

/// Fork: `wake_up_new_task(p)`, the child about to run for the first time;
/// the caller (`current`) is the parent.
pub const FORK: &str = "wake_up_new_task";
/// Exit: `do_exit(code)`, once per exiting task.
pub const EXIT: &str = "do_exit";
/// Exec: `begin_new_exec(bprm)`, past the point of no return.
pub const EXEC: &str = "begin_new_exec";
/// Send: `__sock_sendmsg(sock, msg)`, which the send paths of 6.1 call
/// (`sendto`, `sendmsg`, `write` on a socket, in-kernel `sock_sendmsg`),
/// except `sendmmsg` to the address of the message before (inlined
/// `sock_sendmsg_nosec`; see docs/taint.md).
pub const SEND: &str = "__sock_sendmsg";
/// Receive: `sock_recvmsg(sock, msg, flags)` (`recvfrom`, `recvmsg`, `read`
/// on a socket, in-kernel `kernel_recvmsg`; `recvmmsg` only for its first
/// message).
pub const RECV: &str = "sock_recvmsg";
/// File reads and writes at the VFS: every `read`/`write` of any file, so
/// they cost the most; left out of [`PROCESS_AND_SOCKETS`].
pub const VFS_READ: &str = "vfs_read";
pub const VFS_WRITE: &str = "vfs_write";

/// What the taint engine needs by default.
pub const PROCESS_AND_SOCKETS: &[&str] = &[FORK, EXIT, EXEC, SEND, RECV];
/// Every hook the plugin decodes.
pub const ALL: &[&str] = &[FORK, EXIT, EXEC, SEND, RECV, VFS_READ, VFS_WRITE];

/// The offsets the plugin reads: (wire name, struct, member path in BTF).
/// The members of `sock_common` are those of `struct sock`, which begins
/// with it.
pub const OFFSETS: &[(&str, &str, &str)] = &[
    ("task_struct.pid", "task_struct", "pid"),
    ("task_struct.tgid", "task_struct", "tgid"),
    ("task_struct.comm", "task_struct", "comm"),
    ("task_struct.real_parent", "task_struct", "real_parent"),
    ("task_struct.start_time", "task_struct", "start_time"),
    ("task_struct.group_leader", "task_struct", "group_leader"),
    ("linux_binprm.filename", "linux_binprm", "filename"),
    ("socket.type", "socket", "type"),
    ("socket.sk", "socket", "sk"),
    ("sock_common.skc_daddr", "sock_common", "skc_daddr"),
    ("sock_common.skc_rcv_saddr", "sock_common", "skc_rcv_saddr"),
    ("sock_common.skc_dport", "sock_common", "skc_dport"),
    ("sock_common.skc_num", "sock_common", "skc_num"),
    ("inet_sock.inet_sport", "inet_sock", "inet_sport"),
    ("sock_common.skc_family", "sock_common", "skc_family"),
    ("sock_common.skc_v6_daddr", "sock_common", "skc_v6_daddr"),
    (
        "sock_common.skc_v6_rcv_saddr",
        "sock_common",
        "skc_v6_rcv_saddr",
    ),
    ("unix_sock.peer", "unix_sock", "peer"),
    ("msghdr.msg_iter.count", "msghdr", "msg_iter.count"),
    ("file.f_inode", "file", "f_inode"),
    ("inode.i_ino", "inode", "i_ino"),
    ("inode.i_sb", "inode", "i_sb"),
    ("super_block.s_dev", "super_block", "s_dev"),
];

/// Without these no event names its process.
const REQUIRED_OFFSETS: &[&str] = &["task_struct.pid", "task_struct.tgid", "task_struct.comm"];

/// What to hook in one running kernel: run-time addresses and offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookPlan {
    /// Function name -> run-time address of its first instruction.
    pub hooks: BTreeMap<String, u64>,
    /// Wire name -> offset (see [`OFFSETS`]; plus `current_task`).
    pub offsets: BTreeMap<String, u64>,
}

impl HookPlan {
    /// Hooks for the kernel running in `vm`: pauses it, finds the KASLR
    /// slide (as every look into the guest does) and resumes. Returns the
    /// slide with the plan.
    pub fn for_vm(vm: &mut crate::vm::Vm, functions: &[&str]) -> Result<(u64, HookPlan)> {
        vm.paused(|vm| {
            let paging = vm.paging()?;
            let k = vm.kernel(paging)?;
            Ok((k.slide, HookPlan::for_kernel(&k, functions)?))
        })
    }

    /// Hooks for the located kernel `k` (its KASLR slide applied).
    pub fn for_kernel(k: &Kernel<'_>, functions: &[&str]) -> Result<HookPlan> {
        Self::with_slide(k.profile, k.slide, functions)
    }

    /// Hooks for a kernel of `profile` loaded `slide` bytes above its link
    /// address (0 when booted with `nokaslr`). Every function must be in
    /// the profile (a function missing from this build's kallsyms, e.g.
    /// inlined, is an error, never a silent gap).
    pub fn with_slide(profile: &Profile, slide: u64, functions: &[&str]) -> Result<HookPlan> {
        let mut hooks = BTreeMap::new();
        for f in functions {
            hooks.insert(f.to_string(), profile.symbol(f)?.wrapping_add(slide));
        }
        let mut offsets = BTreeMap::new();
        // A per-CPU variable: an offset from the GS base, not relocated.
        offsets.insert("current_task".to_string(), profile.symbol("current_task")?);
        for (wire, st, member) in OFFSETS {
            match profile.off(st, member) {
                Ok(o) => {
                    offsets.insert(wire.to_string(), o);
                }
                Err(e) if REQUIRED_OFFSETS.contains(wire) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(HookPlan { hooks, offsets })
    }

    /// The `{"op":"hooks",...}` request.
    pub fn request(&self) -> Value {
        json!({"op": "hooks", "hooks": self.hooks, "offsets": self.offsets})
    }

    /// The same as plugin arguments (`fn.NAME=0x...`, `off.KEY=N`), for a
    /// table armed from QEMU's start (a guest whose slide is known in
    /// advance, e.g. booted with `nokaslr`).
    pub fn plugin_args(&self) -> Vec<(String, String)> {
        let mut a: Vec<(String, String)> = self
            .hooks
            .iter()
            .map(|(f, addr)| (format!("fn.{f}"), format!("{addr:#x}")))
            .collect();
        a.extend(
            self.offsets
                .iter()
                .map(|(k, v)| (format!("off.{k}"), v.to_string())),
        );
        a
    }
}

/// What a hook reports, by hooked function.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Fork,
    Exit,
    Exec,
    Send,
    Recv,
    Read,
    Write,
    /// Any other hooked function (raw arguments).
    Call,
}

/// A task as the plugin read it; fields it could not read are absent.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GuestTask {
    /// `task_struct` address.
    pub ptr: u64,
    pub pid: Option<i32>,
    pub tgid: Option<i32>,
    /// `real_parent->tgid`, in fork events (both tasks) only.
    pub ppid: Option<i32>,
    /// Guest monotonic ns at fork (with `ptr`, tells a reused pid apart).
    pub start_ns: Option<u64>,
    pub comm: Option<String>,
    /// For a thread that does not lead its process: the leader's
    /// `task_struct` and `start_time`, which name the process.
    pub leader: Option<u64>,
    pub leader_start_ns: Option<u64>,
}

/// A socket as the plugin read it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GuestSock {
    /// `struct socket` address.
    pub ptr: u64,
    /// SOCK_STREAM 1, SOCK_DGRAM 2, ...
    #[serde(rename = "type")]
    pub stype: Option<u16>,
    /// AF_UNIX 1, AF_INET 2, AF_INET6 10, ...
    pub family: Option<u16>,
    /// AF_INET and AF_INET6: `a.b.c.d:port`, `[v6]:port` (a dual-stack
    /// socket talking IPv4 shows `[::ffff:a.b.c.d]:port`).
    pub local: Option<String>,
    pub remote: Option<String>,
    /// `socket.sk`, the `struct sock`.
    pub sk: Option<u64>,
    /// AF_UNIX: the peer's `struct sock` (`unix_peer(sk)`; 0 when not
    /// connected).
    pub peer_sk: Option<u64>,
}

/// A file as the plugin read it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GuestFile {
    /// `struct file` address.
    pub ptr: u64,
    pub ino: Option<u64>,
    /// The guest kernel's dev_t (major << 20 | minor).
    pub dev: Option<u32>,
}

/// A guest read the plugin could not make (a bad or unmapped pointer).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ReadFault {
    pub what: String,
    pub addr: u64,
}

/// One hook hit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GuestEvent {
    pub ev: EventKind,
    /// The plugin's sequence number; a gap means events were dropped.
    pub seq: u64,
    /// Host CLOCK_MONOTONIC at the hit, ns.
    pub ns: u64,
    pub vcpu: u32,
    /// The generation of the hook table that made it (0: the plugin's
    /// command line; each [`PluginLink::arm`] returns the next).
    #[serde(rename = "gen")]
    pub generation: u64,
    /// The hooked function.
    #[serde(rename = "fn")]
    pub function: String,
    /// The calling task (`current`): the parent of a fork, the task that
    /// exits, execs, sends, receives, reads or writes.
    pub task: GuestTask,
    /// Fork: the new task (its `comm` is still the parent's until it execs).
    pub child: Option<GuestTask>,
    /// Exit: the `do_exit` code (`exit(n)` gives `n << 8`).
    pub code: Option<i64>,
    /// Exec: the file name as passed to exec.
    pub filename: Option<String>,
    #[serde(default)]
    pub filename_cut: bool,
    /// Send and receive.
    pub sock: Option<GuestSock>,
    /// Read and write.
    pub file: Option<GuestFile>,
    /// Bytes offered (send, write) or asked for (receive, read) at entry.
    pub len: Option<u64>,
    /// Call: the first four arguments.
    pub args: Option<Vec<u64>>,
    #[serde(default)]
    pub faults: Vec<ReadFault>,
}

/// The plugin's counters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct PluginStats {
    pub hits: u64,
    pub sent: u64,
    pub dropped_full: u64,
    pub dropped_down: u64,
    pub faulted: u64,
    pub armed_generation: u64,
    /// Host time spent inside hook callbacks, ns (all vCPUs together).
    #[serde(default)]
    pub callback_ns: u64,
}

impl PluginStats {
    /// Mean host time of one hook callback, ns.
    pub fn ns_per_hit(&self) -> u64 {
        self.callback_ns.checked_div(self.hits).unwrap_or(0)
    }
}

/// A reply of the plugin.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// A hook table was taken; `armed` follows.
    Accepted {
        generation: u64,
        hooks: usize,
    },
    /// The table is in force (translations flushed).
    Armed {
        generation: u64,
        hooks: usize,
    },
    Stats(PluginStats),
    /// The last line before QEMU exits.
    Bye(PluginStats),
    Error {
        message: String,
    },
}

/// One line from the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Event(Box<GuestEvent>),
    Reply(Reply),
}

impl Message {
    /// Parses one line.
    pub fn parse(line: &str) -> std::result::Result<Message, serde_json::Error> {
        let v: Value = serde_json::from_str(line)?;
        if v.get("reply").is_some() {
            serde_json::from_value(v).map(Message::Reply)
        } else {
            serde_json::from_value(v).map(|e| Message::Event(Box::new(e)))
        }
    }
}

/// Why talking to the plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("plugin socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the plugin sent {line:?}: {source}")]
    Malformed {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the plugin refused the request: {0}")]
    Refused(String),
    #[error("timed out waiting for the plugin's {0}")]
    Timeout(&'static str),
    #[error("the plugin closed the connection")]
    Closed,
    #[error("the plugin sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// The longest line taken from the plugin (its events are well under 2 KiB;
/// a longer line is garbage, and the connection is dropped).
pub const MAX_LINE: usize = 64 * 1024;

/// A connection to the plugin's socket.
pub struct PluginLink {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    partial: Vec<u8>,
    /// Events that arrived while waiting for a reply (at most [`QUEUED`]).
    queued: VecDeque<Message>,
    /// Events left out of `queued` because it was full.
    overflow: u64,
}

/// Messages kept while waiting for a reply at most; more are dropped and
/// counted ([`PluginLink::overflow`]).
pub const QUEUED: usize = 4096;

impl PluginLink {
    /// Connects, retrying until `timeout` while QEMU creates the socket.
    pub fn connect(path: &Path, timeout: Duration) -> std::result::Result<PluginLink, LinkError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            ErrorKind::NotFound | ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(LinkError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        // A plugin that stops reading must not hold a request forever.
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(PluginLink {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            partial: Vec::new(),
            queued: VecDeque::new(),
            overflow: 0,
        })
    }

    /// The plugin's QEMU process, as one process of one boot
    /// ([`crate::host::process_instance`]): its event numbers continue only
    /// its own. `None` when the peer cannot be told.
    pub fn peer_instance(&self) -> Option<String> {
        crate::host::process_instance(crate::host::peer_pid(&self.writer)?)
    }

    fn send(&mut self, v: &Value) -> std::result::Result<(), LinkError> {
        let mut line = v.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        Ok(())
    }

    /// The next raw line from the socket (without its newline); `None`
    /// when `timeout` passes first. For a consumer that only counts or
    /// forwards lines; [`PluginLink::next`] parses them.
    pub fn next_line(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<Option<String>, LinkError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let room = (MAX_LINE + 1).saturating_sub(self.partial.len()) as u64;
        let got = (&mut self.reader)
            .take(room)
            .read_until(b'\n', &mut self.partial);
        if self.partial.len() > MAX_LINE {
            return Err(LinkError::LineTooLong);
        }
        match got {
            Ok(0) => Err(LinkError::Closed),
            Ok(_) if !self.partial.ends_with(b"\n") => Err(LinkError::Closed),
            Ok(_) => {
                let line = String::from_utf8_lossy(&self.partial).trim().to_string();
                self.partial.clear();
                Ok(Some(line))
            }
            // What was read so far stays in `partial` for the next call.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The next line from the socket, parsed; `None` when `timeout` passes
    /// first.
    fn read_message(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<Option<Message>, LinkError> {
        match self.next_line(timeout)? {
            None => Ok(None),
            Some(line) => Message::parse(&line)
                .map(Some)
                .map_err(|source| LinkError::Malformed { line, source }),
        }
    }

    /// The next message (events queued while waiting for a reply first);
    /// `None` when `timeout` passes first.
    pub fn next(&mut self, timeout: Duration) -> std::result::Result<Option<Message>, LinkError> {
        if let Some(m) = self.queued.pop_front() {
            return Ok(Some(m));
        }
        self.read_message(timeout)
    }

    /// Keeps a message that came while waiting for a reply, or counts it
    /// when [`QUEUED`] are kept already.
    fn keep(&mut self, m: Message) {
        if self.queued.len() < QUEUED {
            self.queued.push_back(m);
        } else {
            self.overflow += 1;
        }
    }

    /// Messages dropped while waiting for a reply (the queue was full).
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// Waits for a reply matching `want`, queueing everything else.
    fn wait_reply<T>(
        &mut self,
        what: &'static str,
        deadline: Instant,
        mut want: impl FnMut(&Reply) -> Option<T>,
    ) -> std::result::Result<T, LinkError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LinkError::Timeout(what));
            }
            match self.read_message(left)? {
                Some(Message::Reply(Reply::Error { message })) => {
                    return Err(LinkError::Refused(message))
                }
                Some(Message::Reply(r)) => match want(&r) {
                    Some(t) => return Ok(t),
                    None => self.keep(Message::Reply(r)),
                },
                Some(m) => self.keep(m),
                None => {}
            }
        }
    }

    /// Sends `plan` and waits until the plugin has it in force; returns its
    /// generation. Events of the new hooks come after this returns.
    pub fn arm(
        &mut self,
        plan: &HookPlan,
        timeout: Duration,
    ) -> std::result::Result<u64, LinkError> {
        let deadline = Instant::now() + timeout;
        self.send(&plan.request())?;
        let generation = self.wait_reply("accepted", deadline, |r| match r {
            Reply::Accepted { generation, .. } => Some(*generation),
            _ => None,
        })?;
        self.wait_reply("armed", deadline, |r| match r {
            Reply::Armed { generation: g, .. } if *g >= generation => Some(()),
            _ => None,
        })?;
        Ok(generation)
    }

    /// The plugin's counters.
    pub fn stats(&mut self, timeout: Duration) -> std::result::Result<PluginStats, LinkError> {
        let deadline = Instant::now() + timeout;
        self.send(&json!({"op": "stats"}))?;
        self.wait_reply("stats", deadline, |r| match r {
            Reply::Stats(s) => Some(s.clone()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn event_lines_parse() {
        let line = r#"{"child":{"comm":"sh","pid":71,"ppid":70,"ptr":18446612682088988672,"start_ns":5,"tgid":71},"ev":"fork","fn":"wake_up_new_task","gen":1,"ns":9,"seq":3,"task":{"comm":"sh","pid":70,"ppid":1,"ptr":18446612682088992768,"start_ns":4,"tgid":70},"vcpu":0}"#;
        let Message::Event(e) = Message::parse(line).unwrap() else {
            panic!()
        };
        assert_eq!(e.ev, EventKind::Fork);
        assert_eq!(e.child.as_ref().unwrap().pid, Some(71));
        assert_eq!(e.task.comm.as_deref(), Some("sh"));
        let line = r#"{"ev":"send","fn":"__sock_sendmsg","gen":1,"ns":1,"seq":4,"vcpu":0,"task":{"ptr":5},"sock":{"ptr":6,"type":1,"family":2,"local":"127.0.0.1:40000","remote":"127.0.0.1:5555"},"len":6,"faults":[{"what":"task","addr":5}]}"#;
        let Message::Event(e) = Message::parse(line).unwrap() else {
            panic!()
        };
        assert_eq!(e.task.pid, None);
        assert_eq!(e.sock.unwrap().remote.as_deref(), Some("127.0.0.1:5555"));
        assert_eq!(e.faults[0].what, "task");
    }

    #[test]
    fn replies_parse() {
        assert_eq!(
            Message::parse(r#"{"reply":"armed","generation":2,"hooks":5}"#).unwrap(),
            Message::Reply(Reply::Armed {
                generation: 2,
                hooks: 5
            })
        );
        let Message::Reply(Reply::Bye(s)) = Message::parse(
            r#"{"reply":"bye","hits":3,"sent":2,"dropped_full":1,"dropped_down":0,"faulted":0,"armed_generation":1}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((s.hits, s.dropped_full), (3, 1));
    }

    #[test]
    fn plan_from_a_profile() {
        let mut p = Profile {
            format: 0,
            build_id: String::new(),
            banner: String::new(),
            symbol_source: String::new(),
            symbol_count: 0,
            symbols: BTreeMap::new(),
            structs: BTreeMap::new(),
            constants: BTreeMap::new(),
        };
        p.symbols.insert(FORK.into(), 0xffffffff810e2ac0);
        p.symbols.insert("current_task".into(), 0x1fb80);
        assert!(
            HookPlan::with_slide(&p, 0x2000000, &[FORK]).is_err(),
            "no task offsets"
        );
        let task = p.structs.entry("task_struct".into()).or_default();
        for (m, o) in [("pid", 2416), ("tgid", 2420), ("comm", 2976)] {
            task.fields.insert(
                m.into(),
                crate::kernel::profile::Field { offset: o, size: 4 },
            );
        }
        let plan = HookPlan::with_slide(&p, 0x2000000, &[FORK]).unwrap();
        assert_eq!(plan.hooks[FORK], 0xffffffff830e2ac0);
        assert_eq!(
            plan.offsets["current_task"], 0x1fb80,
            "per-CPU offsets are not slid"
        );
        assert_eq!(plan.offsets["task_struct.comm"], 2976);
        assert!(!plan.offsets.contains_key("socket.sk"));
        assert!(matches!(
            HookPlan::with_slide(&p, 0, &[EXEC]),
            Err(Error::MissingSymbol(_))
        ));
        let args = plan.plugin_args();
        assert!(args.contains(&("fn.wake_up_new_task".into(), "0xffffffff830e2ac0".into())));
        assert!(args.contains(&("off.task_struct.pid".into(), "2416".into())));
        assert_eq!(plan.request()["op"], "hooks");
    }
}

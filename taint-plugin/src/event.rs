//! What one hook saw, in two forms: a fixed-size [`Event`] that a vCPU
//! callback fills and pushes into the ring without allocating, and the JSON
//! line the drain thread makes of it for the monitor.
//!
//! Every read of guest memory can fail (a hostile or buggy guest can pass
//! any pointer): a part that could not be read is left out of the line and
//! named in `"faults"` with the address that failed.

use std::borrow::Cow;
use std::net::SocketAddr;

use serde::Serialize;
use serde_json::Value;

use crate::config::Kind;

/// Length of `task_struct.comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Bytes of an exec's file name kept (longer names are cut, and say so).
pub const FILENAME_LEN: usize = 128;
/// Failed reads remembered per event.
pub const MAX_FAULTS: usize = 4;

/// A task as read from its `task_struct`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Task {
    /// The `task_struct` address (stable while the task lives; with the
    /// start time it tells a reused pid apart).
    pub ptr: u64,
    /// False when the struct could not be read (only `ptr` is meaningful).
    pub read: bool,
    pub pid: i32,
    pub tgid: i32,
    /// `real_parent->tgid` (read for the two tasks of a fork event only).
    pub ppid: Option<i32>,
    /// `start_time` (ns of monotonic guest time at fork).
    pub start_ns: Option<u64>,
    pub comm: [u8; COMM_LEN],
    /// For a thread that is not its process's leader: the leader's
    /// `task_struct` (`group_leader`) and `start_time`, which name the
    /// process (read only when `group_leader` is not the task itself).
    pub leader: Option<u64>,
    pub leader_start_ns: Option<u64>,
}

/// A socket as read from `struct socket` and its `struct sock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sock {
    pub ptr: u64,
    /// `socket.type` (SOCK_STREAM 1, SOCK_DGRAM 2, ...).
    pub stype: Option<u16>,
    /// `sk->skc_family` (AF_UNIX 1, AF_INET 2, AF_INET6 10, ...).
    pub family: Option<u16>,
    /// For AF_INET and AF_INET6: local and remote address and port.
    pub inet: Option<Inet>,
    /// `socket.sk`: the `struct sock`.
    pub sk: Option<u64>,
    /// For AF_UNIX: `unix_sk(sk)->peer`, the peer's `struct sock` (0 when
    /// not connected); with `sk` it names one conversation.
    pub peer_sk: Option<u64>,
}

/// The four-tuple of an AF_INET or AF_INET6 socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inet {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A file as read from `struct file` and its inode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct File {
    pub ptr: u64,
    pub ino: Option<u64>,
    /// `i_sb->s_dev` (the kernel's dev_t: major << 20 | minor).
    pub dev: Option<u32>,
}

/// The part of an event that depends on the hook's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Fork {
        child: Task,
    },
    Exit {
        code: i64,
    },
    Exec {
        filename: [u8; FILENAME_LEN],
        /// Bytes of `filename` used; `FILENAME_LEN` means it was cut.
        len: usize,
        read: bool,
    },
    /// Send or receive; `len` is the bytes offered (send) or asked for
    /// (receive) at entry, `msg_data_left(msg)`.
    Sock {
        sock: Sock,
        len: Option<u64>,
    },
    /// `vfs_read`/`vfs_write`; `len` is the count asked for.
    File {
        file: File,
        len: u64,
    },
    Call {
        args: [u64; 4],
    },
}

/// One failed read: what was being read and the address that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub what: &'static str,
    pub addr: u64,
}

/// One hook hit, as pushed into the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Per-plugin sequence number (gaps = events dropped).
    pub seq: u64,
    /// Host CLOCK_MONOTONIC at the hit, ns.
    pub ns: u64,
    pub vcpu: u32,
    /// The generation of the hook table that made the event (0: the
    /// command line's, then one per "set hooks").
    pub generation: u64,
    pub kind: Kind,
    /// The hooked function (its table lives for the process's lifetime).
    pub function: &'static str,
    /// The task that called the function (`current`).
    pub task: Task,
    pub detail: Detail,
    pub faults: [Option<Fault>; MAX_FAULTS],
}

impl Event {
    /// Records a failed read (the first [`MAX_FAULTS`] are kept).
    pub fn fault(&mut self, what: &'static str, addr: u64) {
        if let Some(slot) = self.faults.iter_mut().find(|f| f.is_none()) {
            *slot = Some(Fault { what, addr });
        }
    }

    /// The event as its JSON line's view (borrowing the event).
    fn line(&self) -> Line<'_> {
        let mut l = Line {
            ev: self.kind.wire_name(),
            seq: self.seq,
            ns: self.ns,
            vcpu: self.vcpu,
            generation: self.generation,
            function: self.function,
            task: TaskView::of(&self.task),
            child: None,
            code: None,
            filename: None,
            filename_cut: false,
            sock: None,
            file: None,
            len: None,
            args: None,
            faults: FaultsView(&self.faults),
        };
        match &self.detail {
            Detail::Fork { child } => l.child = Some(TaskView::of(child)),
            Detail::Exit { code } => l.code = Some(*code),
            Detail::Exec {
                filename,
                len,
                read,
            } => {
                if *read {
                    l.filename = Some(text(&filename[..*len]));
                    l.filename_cut = *len == FILENAME_LEN;
                }
            }
            Detail::Sock { sock, len } => {
                l.sock = Some(SockView::of(sock));
                l.len = *len;
            }
            Detail::File { file, len } => {
                l.file = Some(file);
                l.len = Some(*len);
            }
            Detail::Call { args } => l.args = Some(args),
        }
        l
    }

    /// Appends the event's JSON line (with its newline) to `out`. Guest
    /// strings are escaped by serde_json; nothing is allocated per field.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Serialising plain numbers and escaped strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &self.line());
        out.push(b'\n');
    }

    /// The event as one JSON object (for tests and tools).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.line()).unwrap_or(Value::Null)
    }
}

/// One event as it goes on the wire; absent parts are left out.
#[derive(Serialize)]
struct Line<'a> {
    ev: &'static str,
    seq: u64,
    ns: u64,
    vcpu: u32,
    #[serde(rename = "gen")]
    generation: u64,
    #[serde(rename = "fn")]
    function: &'a str,
    task: TaskView,
    #[serde(skip_serializing_if = "Option::is_none")]
    child: Option<TaskView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    filename_cut: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sock: Option<SockView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a [u64; 4]>,
    #[serde(skip_serializing_if = "FaultsView::is_empty")]
    faults: FaultsView<'a>,
}

/// A task: only `ptr` when the struct could not be read.
struct TaskView {
    ptr: u64,
    read: Option<TaskFields>,
}

struct TaskFields {
    pid: i32,
    tgid: i32,
    ppid: Option<i32>,
    start_ns: Option<u64>,
    comm: [u8; COMM_LEN],
    leader: Option<u64>,
    leader_start_ns: Option<u64>,
}

impl TaskView {
    fn of(t: &Task) -> TaskView {
        TaskView {
            ptr: t.ptr,
            read: t.read.then_some(TaskFields {
                pid: t.pid,
                tgid: t.tgid,
                ppid: t.ppid,
                start_ns: t.start_ns,
                comm: t.comm,
                leader: t.leader,
                leader_start_ns: t.leader_start_ns,
            }),
        }
    }
}

impl Serialize for TaskView {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("ptr", &self.ptr)?;
        if let Some(t) = &self.read {
            m.serialize_entry("pid", &t.pid)?;
            m.serialize_entry("tgid", &t.tgid)?;
            if let Some(p) = t.ppid {
                m.serialize_entry("ppid", &p)?;
            }
            if let Some(s) = t.start_ns {
                m.serialize_entry("start_ns", &s)?;
            }
            m.serialize_entry("comm", &text(&t.comm))?;
            if let Some(l) = t.leader {
                m.serialize_entry("leader", &l)?;
            }
            if let Some(s) = t.leader_start_ns {
                m.serialize_entry("leader_start_ns", &s)?;
            }
        }
        m.end()
    }
}

#[derive(Serialize)]
struct SockView {
    ptr: u64,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    stype: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sk: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_sk: Option<u64>,
}

impl SockView {
    fn of(s: &Sock) -> SockView {
        SockView {
            ptr: s.ptr,
            stype: s.stype,
            family: s.family,
            local: s.inet.map(|i| i.local),
            remote: s.inet.map(|i| i.remote),
            sk: s.sk,
            peer_sk: s.peer_sk,
        }
    }
}

impl Serialize for File {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("ptr", &self.ptr)?;
        if let Some(ino) = self.ino {
            m.serialize_entry("ino", &ino)?;
        }
        if let Some(dev) = self.dev {
            m.serialize_entry("dev", &dev)?;
        }
        m.end()
    }
}

/// The recorded faults as `[{"what":..,"addr":..}]`.
struct FaultsView<'a>(&'a [Option<Fault>; MAX_FAULTS]);

impl FaultsView<'_> {
    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

impl Serialize for FaultsView<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct One<'b>(&'b Fault);
        impl Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut m = ser.serialize_map(Some(2))?;
                m.serialize_entry("what", self.0.what)?;
                m.serialize_entry("addr", &self.0.addr)?;
                m.end()
            }
        }
        let mut seq = ser.serialize_seq(None)?;
        for f in self.0.iter().flatten() {
            seq.serialize_element(&One(f))?;
        }
        seq.end()
    }
}

/// Guest bytes up to the first NUL, as text (invalid UTF-8 replaced).
fn text(bytes: &[u8]) -> Cow<'_, str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::IpAddr;

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn task(pid: i32, name: &str) -> Task {
        Task {
            ptr: 0xffff888000001000 + pid as u64,
            read: true,
            pid,
            tgid: pid,
            ppid: Some(1),
            start_ns: Some(5),
            comm: comm(name),
            leader: None,
            leader_start_ns: None,
        }
    }

    fn event(kind: Kind, detail: Detail) -> Event {
        Event {
            seq: 7,
            ns: 99,
            vcpu: 0,
            generation: 1,
            kind,
            function: "wake_up_new_task",
            task: task(10, "sh"),
            detail,
            faults: [None; MAX_FAULTS],
        }
    }

    #[test]
    fn events_stay_small() {
        // The ring holds `ring` events up front (4096 by default: 1.4 MiB).
        let size = std::mem::size_of::<Event>();
        println!("Event: {size} bytes");
        assert!(size <= 384, "{size}");
    }

    #[test]
    fn fork_line() {
        let e = event(
            Kind::Fork,
            Detail::Fork {
                child: task(11, "sh"),
            },
        );
        assert_eq!(
            e.to_json(),
            json!({
                "ev": "fork", "seq": 7, "ns": 99, "vcpu": 0, "gen": 1, "fn": "wake_up_new_task",
                "task": {"ptr": 0xffff88800000100au64, "pid": 10, "tgid": 10, "ppid": 1,
                         "start_ns": 5, "comm": "sh"},
                "child": {"ptr": 0xffff88800000100bu64, "pid": 11, "tgid": 11, "ppid": 1,
                          "start_ns": 5, "comm": "sh"},
            })
        );
    }

    #[test]
    fn lines_escape_guest_strings() {
        let mut t = task(12, "");
        t.comm[..8].copy_from_slice(b"a\"b\\\n\x01\xff\x00");
        let mut e = event(Kind::Fork, Detail::Fork { child: t });
        e.task.comm = t.comm;
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            out.clear();
            e.write_line(&mut out);
        }
        println!("one fork line: {:?}", started.elapsed() / 10_000);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["child"]["comm"], "a\"b\\\n\u{1}\u{fffd}");
        assert_eq!(v, e.to_json());
    }

    #[test]
    fn unreadable_parts_are_left_out_and_named() {
        let mut e = event(
            Kind::Fork,
            Detail::Fork {
                child: Task {
                    ptr: 0xdead,
                    ..Task::default()
                },
            },
        );
        e.fault("child", 0xdead);
        let v = e.to_json();
        assert_eq!(v["child"], json!({"ptr": 0xdead}));
        assert_eq!(v["faults"], json!([{"what": "child", "addr": 0xdead}]));
        for i in 0..10 {
            e.fault("more", i);
        }
        assert_eq!(e.faults.iter().flatten().count(), MAX_FAULTS);
    }

    #[test]
    fn socket_and_exec_lines() {
        let e = event(
            Kind::Send,
            Detail::Sock {
                sock: Sock {
                    ptr: 1,
                    stype: Some(1),
                    family: Some(2),
                    inet: Some(Inet {
                        local: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 41000),
                        remote: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 5555),
                    }),
                    sk: None,
                    peer_sk: None,
                },
                len: Some(6),
            },
        );
        let v = e.to_json();
        assert_eq!(v["sock"]["local"], "127.0.0.1:41000");
        assert_eq!(v["sock"]["remote"], "127.0.0.1:5555");
        assert_eq!(v["len"], 6);
        let mut name = [0u8; FILENAME_LEN];
        name[..10].copy_from_slice(b"/bin/sleep");
        let e = event(
            Kind::Exec,
            Detail::Exec {
                filename: name,
                len: 10,
                read: true,
            },
        );
        assert_eq!(e.to_json()["filename"], "/bin/sleep");
        assert!(e.to_json().get("filename_cut").is_none());
    }
}

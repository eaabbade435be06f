//! What one hook saw, in two forms: a fixed-size [`Event`] that a vCPU
//! callback fills and pushes into the ring without allocating, and the JSON
//! line the drain thread makes of it for the monitor.
//!
//! Every read of guest memory can fail (a hostile or buggy guest can pass
//! any pointer): a part that could not be read is left out of the line and
//! named in `"faults"` with the address that failed.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};

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
    /// `real_parent->tgid`, when that could be read too.
    pub ppid: Option<i32>,
    /// `start_time` (ns of monotonic guest time at fork).
    pub start_ns: Option<u64>,
    pub comm: [u8; COMM_LEN],
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

    /// The event as one JSON object (no newline).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("ev".into(), self.kind.wire_name().into());
        m.insert("seq".into(), self.seq.into());
        m.insert("ns".into(), self.ns.into());
        m.insert("vcpu".into(), self.vcpu.into());
        m.insert("gen".into(), self.generation.into());
        m.insert("fn".into(), self.function.into());
        m.insert("task".into(), task_json(&self.task));
        match &self.detail {
            Detail::Fork { child } => {
                m.insert("child".into(), task_json(child));
            }
            Detail::Exit { code } => {
                m.insert("code".into(), (*code).into());
            }
            Detail::Exec {
                filename,
                len,
                read,
            } => {
                if *read {
                    m.insert("filename".into(), text(&filename[..*len]).into());
                    if *len == FILENAME_LEN {
                        m.insert("filename_cut".into(), true.into());
                    }
                }
            }
            Detail::Sock { sock, len } => {
                m.insert("sock".into(), sock_json(sock));
                if let Some(len) = len {
                    m.insert("len".into(), (*len).into());
                }
            }
            Detail::File { file, len } => {
                let mut f = Map::new();
                f.insert("ptr".into(), file.ptr.into());
                if let Some(ino) = file.ino {
                    f.insert("ino".into(), ino.into());
                }
                if let Some(dev) = file.dev {
                    f.insert("dev".into(), dev.into());
                }
                m.insert("file".into(), f.into());
                m.insert("len".into(), (*len).into());
            }
            Detail::Call { args } => {
                m.insert("args".into(), args.to_vec().into());
            }
        }
        let faults: Vec<Value> = self
            .faults
            .iter()
            .flatten()
            .map(|f| json!({"what": f.what, "addr": f.addr}))
            .collect();
        if !faults.is_empty() {
            m.insert("faults".into(), faults.into());
        }
        m.into()
    }
}

/// Guest bytes up to the first NUL, as text (invalid UTF-8 replaced).
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn task_json(t: &Task) -> Value {
    let mut m = Map::new();
    m.insert("ptr".into(), t.ptr.into());
    if t.read {
        m.insert("pid".into(), t.pid.into());
        m.insert("tgid".into(), t.tgid.into());
        if let Some(p) = t.ppid {
            m.insert("ppid".into(), p.into());
        }
        if let Some(s) = t.start_ns {
            m.insert("start_ns".into(), s.into());
        }
        m.insert("comm".into(), text(&t.comm).into());
    }
    m.into()
}

fn sock_json(s: &Sock) -> Value {
    let mut m = Map::new();
    m.insert("ptr".into(), s.ptr.into());
    if let Some(t) = s.stype {
        m.insert("type".into(), t.into());
    }
    if let Some(f) = s.family {
        m.insert("family".into(), f.into());
    }
    if let Some(i) = &s.inet {
        m.insert("local".into(), i.local.to_string().into());
        m.insert("remote".into(), i.remote.to_string().into());
    }
    m.into()
}

#[cfg(test)]
mod tests {
    use super::*;
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

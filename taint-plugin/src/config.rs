//! What to hook and where the fields a hook reads live: the plugin's
//! command-line arguments and the monitor's late "set hooks" message both
//! become one [`HookTable`].
//!
//! The kind of a hook follows from the kernel function's name, because the
//! name fixes what its arguments are (`wake_up_new_task(p)` gets the child,
//! `do_exit(code)` the exit code, ...). Any other function is a plain
//! [`Kind::Call`] hook that reports its first four arguments.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// At most this many hooked functions (a lookup per translated instruction
/// must stay cheap, and every hook costs the guest on each call).
pub const MAX_HOOKS: usize = 64;

/// Default capacity of the event ring.
pub const DEFAULT_RING: usize = 4096;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("plugin argument {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("unknown plugin argument {0:?} (known: sock, ring, fn.NAME, off.KEY)")]
    UnknownArgument(String),
    #[error("no socket path: pass sock=PATH")]
    NoSocket,
    #[error("{key}: {value:?} is not a number (decimal or 0x hex)")]
    NotANumber { key: String, value: String },
    #[error("ring={0}: must be between 16 and 1048576")]
    BadRing(usize),
    #[error("unknown offset {0:?}")]
    UnknownOffset(String),
    #[error("too many hooks ({0}; at most {MAX_HOOKS})")]
    TooManyHooks(usize),
    #[error("hook {0:?} at address 0")]
    NullAddress(String),
    #[error("hooks {0:?} and {1:?} share address {2:#x}")]
    SharedAddress(String, String, u64),
}

/// What a hooked function means, and so how its arguments are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `wake_up_new_task(struct task_struct *p)`: a new task (process or
    /// thread) is about to run; the caller is its parent.
    Fork,
    /// `do_exit(long code)`: the current task ends.
    Exit,
    /// `begin_new_exec(struct linux_binprm *bprm)`: the current task
    /// replaces its program (past the point of no return).
    Exec,
    /// `__sock_sendmsg(struct socket *, struct msghdr *)` (or
    /// `sock_sendmsg`): every send path of a socket.
    Send,
    /// `sock_recvmsg(struct socket *, struct msghdr *, int flags)`.
    Recv,
    /// `vfs_read(struct file *, char __user *, size_t, loff_t *)`.
    Read,
    /// `vfs_write(struct file *, const char __user *, size_t, loff_t *)`.
    Write,
    /// Any other function: its first four arguments are reported raw.
    Call,
}

impl Kind {
    /// The kind a function name implies. Only exact names: a compiler clone
    /// (`.isra.0`, `.constprop.0`) may take its arguments in another order.
    pub fn of_function(name: &str) -> Kind {
        match name {
            "wake_up_new_task" => Kind::Fork,
            "do_exit" => Kind::Exit,
            "begin_new_exec" => Kind::Exec,
            "__sock_sendmsg" | "sock_sendmsg" => Kind::Send,
            "sock_recvmsg" => Kind::Recv,
            "vfs_read" => Kind::Read,
            "vfs_write" => Kind::Write,
            _ => Kind::Call,
        }
    }

    /// How many argument registers the kind reads (each read is a call
    /// into QEMU, so the others are left alone).
    pub fn args_used(self) -> usize {
        match self {
            Kind::Fork | Kind::Exit | Kind::Exec => 1,
            Kind::Send | Kind::Recv => 2,
            Kind::Read | Kind::Write => 3,
            Kind::Call => 4,
        }
    }

    /// The event name on the wire (`"ev"`).
    pub fn wire_name(self) -> &'static str {
        match self {
            Kind::Fork => "fork",
            Kind::Exit => "exit",
            Kind::Exec => "exec",
            Kind::Send => "send",
            Kind::Recv => "recv",
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Call => "call",
        }
    }
}

/// Struct member offsets (from the monitor's BTF) and the per-CPU offset of
/// `current_task`. A missing one leaves the fields that need it out of the
/// events; nothing is guessed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets {
    pub current_task: Option<u64>,
    pub task_pid: Option<u64>,
    pub task_tgid: Option<u64>,
    pub task_comm: Option<u64>,
    pub task_real_parent: Option<u64>,
    pub task_start_time: Option<u64>,
    pub task_group_leader: Option<u64>,
    pub binprm_filename: Option<u64>,
    pub socket_type: Option<u64>,
    pub socket_sk: Option<u64>,
    pub skc_daddr: Option<u64>,
    pub skc_rcv_saddr: Option<u64>,
    pub skc_dport: Option<u64>,
    pub skc_num: Option<u64>,
    pub inet_sport: Option<u64>,
    pub skc_family: Option<u64>,
    pub skc_v6_daddr: Option<u64>,
    pub skc_v6_rcv_saddr: Option<u64>,
    pub unix_peer: Option<u64>,
    pub msghdr_count: Option<u64>,
    pub file_inode: Option<u64>,
    pub inode_ino: Option<u64>,
    pub inode_sb: Option<u64>,
    pub sb_dev: Option<u64>,
}

/// The offset names on the wire: `struct.member` as in BTF (the members of
/// `struct sock_common` are also those of `struct sock`, which starts with
/// it), and `current_task` for the per-CPU variable.
pub const OFFSET_KEYS: &[&str] = &[
    "current_task",
    "task_struct.pid",
    "task_struct.tgid",
    "task_struct.comm",
    "task_struct.real_parent",
    "task_struct.start_time",
    "task_struct.group_leader",
    "linux_binprm.filename",
    "socket.type",
    "socket.sk",
    "sock_common.skc_daddr",
    "sock_common.skc_rcv_saddr",
    "sock_common.skc_dport",
    "sock_common.skc_num",
    "inet_sock.inet_sport",
    "sock_common.skc_family",
    "sock_common.skc_v6_daddr",
    "sock_common.skc_v6_rcv_saddr",
    "unix_sock.peer",
    "msghdr.msg_iter.count",
    "file.f_inode",
    "inode.i_ino",
    "inode.i_sb",
    "super_block.s_dev",
];

impl Offsets {
    fn slot(&mut self, key: &str) -> Option<&mut Option<u64>> {
        Some(match key {
            "current_task" => &mut self.current_task,
            "task_struct.pid" => &mut self.task_pid,
            "task_struct.tgid" => &mut self.task_tgid,
            "task_struct.comm" => &mut self.task_comm,
            "task_struct.real_parent" => &mut self.task_real_parent,
            "task_struct.start_time" => &mut self.task_start_time,
            "task_struct.group_leader" => &mut self.task_group_leader,
            "linux_binprm.filename" => &mut self.binprm_filename,
            "socket.type" => &mut self.socket_type,
            "socket.sk" => &mut self.socket_sk,
            "sock_common.skc_daddr" => &mut self.skc_daddr,
            "sock_common.skc_rcv_saddr" => &mut self.skc_rcv_saddr,
            "sock_common.skc_dport" => &mut self.skc_dport,
            "sock_common.skc_num" => &mut self.skc_num,
            "inet_sock.inet_sport" => &mut self.inet_sport,
            "sock_common.skc_family" => &mut self.skc_family,
            "sock_common.skc_v6_daddr" => &mut self.skc_v6_daddr,
            "sock_common.skc_v6_rcv_saddr" => &mut self.skc_v6_rcv_saddr,
            "unix_sock.peer" => &mut self.unix_peer,
            "msghdr.msg_iter.count" => &mut self.msghdr_count,
            "file.f_inode" => &mut self.file_inode,
            "inode.i_ino" => &mut self.inode_ino,
            "inode.i_sb" => &mut self.inode_sb,
            "super_block.s_dev" => &mut self.sb_dev,
            _ => return None,
        })
    }

    /// Sets one offset by its wire name.
    pub fn set(&mut self, key: &str, value: u64) -> Result<(), ConfigError> {
        *self
            .slot(key)
            .ok_or_else(|| ConfigError::UnknownOffset(key.to_string()))? = Some(value);
        Ok(())
    }

    /// Offsets from a `name -> value` map.
    pub fn from_map(map: &BTreeMap<String, u64>) -> Result<Offsets, ConfigError> {
        let mut o = Offsets::default();
        for (k, v) in map {
            o.set(k, *v)?;
        }
        Ok(o)
    }
}

/// One hooked function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Kernel function name (reported in every event as `"fn"`).
    pub name: String,
    /// Guest virtual address of its first instruction (KASLR applied).
    pub addr: u64,
    pub kind: Kind,
}

/// Everything the translation and exec callbacks need, replaced as a whole
/// when the monitor sends new hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookTable {
    /// 0 for the command line's table, then 1, 2, ... per "set hooks".
    pub generation: u64,
    /// Sorted by address.
    pub hooks: Vec<Hook>,
    pub offsets: Offsets,
}

impl HookTable {
    /// A table from `name -> address` and offsets, checked.
    pub fn new(
        generation: u64,
        functions: &BTreeMap<String, u64>,
        offsets: Offsets,
    ) -> Result<HookTable, ConfigError> {
        if functions.len() > MAX_HOOKS {
            return Err(ConfigError::TooManyHooks(functions.len()));
        }
        let mut hooks: Vec<Hook> = functions
            .iter()
            .map(|(name, &addr)| Hook {
                name: name.clone(),
                addr,
                kind: Kind::of_function(name),
            })
            .collect();
        if let Some(h) = hooks.iter().find(|h| h.addr == 0) {
            return Err(ConfigError::NullAddress(h.name.clone()));
        }
        hooks.sort_by_key(|h| h.addr);
        for w in hooks.windows(2) {
            if w[0].addr == w[1].addr {
                return Err(ConfigError::SharedAddress(
                    w[0].name.clone(),
                    w[1].name.clone(),
                    w[0].addr,
                ));
            }
        }
        Ok(HookTable {
            generation,
            hooks,
            offsets,
        })
    }

    /// The hook whose first instruction is at `addr`.
    pub fn find(&self, addr: u64) -> Option<&Hook> {
        let (first, last) = (self.hooks.first()?, self.hooks.last()?);
        if addr < first.addr || addr > last.addr {
            return None;
        }
        self.hooks
            .binary_search_by_key(&addr, |h| h.addr)
            .ok()
            .map(|i| &self.hooks[i])
    }
}

/// The plugin's `-plugin libtaint_plugin.so,KEY=VALUE,...` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// `sock=PATH`: where the plugin listens for the monitor.
    pub socket: PathBuf,
    /// `ring=N`: events held between a callback and the socket.
    pub ring: usize,
    /// `fn.NAME=ADDR` and `off.KEY=VALUE`: hooks armed from the start (for a
    /// guest without KASLR, or whose slide is known in advance).
    pub table: HookTable,
}

/// A number in decimal or with a `0x` prefix.
pub fn parse_number(key: &str, value: &str) -> Result<u64, ConfigError> {
    let v = value.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| ConfigError::NotANumber {
        key: key.to_string(),
        value: value.to_string(),
    })
}

impl PluginArgs {
    /// Parses QEMU's raw `key=value` strings.
    pub fn parse(raw: &[String]) -> Result<PluginArgs, ConfigError> {
        let mut socket = None;
        let mut ring = DEFAULT_RING;
        let mut functions = BTreeMap::new();
        let mut offsets = Offsets::default();
        for arg in raw {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| ConfigError::NotKeyValue(arg.clone()))?;
            if let Some(name) = key.strip_prefix("fn.") {
                functions.insert(name.to_string(), parse_number(key, value)?);
            } else if let Some(off) = key.strip_prefix("off.") {
                offsets.set(off, parse_number(key, value)?)?;
            } else {
                match key {
                    "sock" => socket = Some(PathBuf::from(value)),
                    "ring" => {
                        let n = parse_number(key, value)? as usize;
                        if !(16..=1 << 20).contains(&n) {
                            return Err(ConfigError::BadRing(n));
                        }
                        ring = n;
                    }
                    _ => return Err(ConfigError::UnknownArgument(key.to_string())),
                }
            }
        }
        Ok(PluginArgs {
            socket: socket.ok_or(ConfigError::NoSocket)?,
            ring,
            table: HookTable::new(0, &functions, offsets)?,
        })
    }
}

/// A request from the monitor, one JSON object per line.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Replace the hooks: `{"op":"hooks","hooks":{"do_exit":ADDR,...},
    /// "offsets":{"task_struct.pid":N,...}}`. Answered `accepted` at once
    /// and `armed` once no stale translation is left.
    Hooks {
        hooks: BTreeMap<String, u64>,
        #[serde(default)]
        offsets: BTreeMap<String, u64>,
    },
    /// The counters: `{"op":"stats"}`.
    Stats {},
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_with_hooks_and_offsets() {
        let a = PluginArgs::parse(&raw(&[
            "sock=/run/t.sock",
            "ring=128",
            "fn.do_exit=0xffffffff810a7010",
            "fn.wake_up_new_task=0xffffffff810e2ac0",
            "off.task_struct.pid=2416",
            "off.current_task=0x1fb80",
        ]))
        .unwrap();
        assert_eq!(a.socket, PathBuf::from("/run/t.sock"));
        assert_eq!(a.ring, 128);
        assert_eq!(a.table.hooks.len(), 2);
        assert_eq!(a.table.hooks[0].name, "do_exit");
        assert_eq!(a.table.hooks[0].kind, Kind::Exit);
        assert_eq!(a.table.offsets.task_pid, Some(2416));
        assert_eq!(a.table.offsets.current_task, Some(0x1fb80));
        let h = a.table.find(0xffffffff810e2ac0).unwrap();
        assert_eq!(h.kind, Kind::Fork);
        assert!(a.table.find(0xffffffff810e2ac1).is_none());
        assert!(a.table.find(0).is_none());
    }

    #[test]
    fn refusals() {
        assert_eq!(
            PluginArgs::parse(&raw(&["ring=64"])),
            Err(ConfigError::NoSocket)
        );
        assert!(matches!(
            PluginArgs::parse(&raw(&["sock=/s", "bogus=1"])),
            Err(ConfigError::UnknownArgument(_))
        ));
        assert!(matches!(
            PluginArgs::parse(&raw(&["sock=/s", "off.task_struct.nope=1"])),
            Err(ConfigError::UnknownOffset(_))
        ));
        assert!(matches!(
            PluginArgs::parse(&raw(&["sock=/s", "fn.x=zz"])),
            Err(ConfigError::NotANumber { .. })
        ));
        assert!(matches!(
            PluginArgs::parse(&raw(&["sock=/s", "fn.a=0x10", "fn.b=16"])),
            Err(ConfigError::SharedAddress(..))
        ));
        assert!(matches!(
            PluginArgs::parse(&raw(&["sock=/s", "ring=1"])),
            Err(ConfigError::BadRing(1))
        ));
    }

    #[test]
    fn kinds_follow_exact_names() {
        assert_eq!(Kind::of_function("sock_recvmsg"), Kind::Recv);
        assert_eq!(Kind::of_function("__sock_sendmsg"), Kind::Send);
        assert_eq!(Kind::of_function("do_exit.cold"), Kind::Call);
        assert_eq!(Kind::of_function("__x64_sys_getpid"), Kind::Call);
    }

    #[test]
    fn every_offset_key_has_a_slot() {
        let mut o = Offsets::default();
        for (i, k) in OFFSET_KEYS.iter().enumerate() {
            o.set(k, i as u64 + 1).unwrap();
        }
        assert_eq!(o.sb_dev, Some(OFFSET_KEYS.len() as u64));
    }

    #[test]
    fn requests_parse_and_refuse_unknown_fields() {
        let r: Request = serde_json::from_str(
            r#"{"op":"hooks","hooks":{"do_exit":18446744071579529232},"offsets":{"task_struct.pid":2416}}"#,
        )
        .unwrap();
        match r {
            Request::Hooks { hooks, offsets } => {
                assert_eq!(hooks["do_exit"], 0xffffffff810a7010);
                assert_eq!(offsets["task_struct.pid"], 2416);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"stats"}"#).unwrap(),
            Request::Stats {}
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"stats","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
    }
}

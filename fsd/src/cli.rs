//! The command line, compatible with virtiofsd's.
//!
//! libvirt, Cloud Hypervisor and many scripts start virtiofsd by name, so fsd
//! takes the same flags, in both of virtiofsd's forms: separate options
//! (`--shared-dir=… --cache=…`, which libvirt uses once `--print-capabilities`
//! lists `separate-options`) and the legacy `-o source=…,cache=…,xattr`.
//! A virtiofsd flag that fsd does not implement is refused with an error
//! that names it; it is never accepted silently.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, ValueEnum};

/// Default of `--poll-max-us`: about one thread wake-up on an idle host,
/// the time a synchronous guest takes to answer (docs/benchmarks.md).
pub const DEFAULT_POLL_MAX_US: u64 = 64;

/// `--bulk-read-threads` when not given: one fewer than the cores this
/// process may run on (the queue thread has one), at most 2; measured in
/// docs/benchmarks.md.
fn default_bulk_read_threads() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get().saturating_sub(1).min(2))
}

/// Guest cache policy, with virtiofsd's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Metadata and data are cached with short timeouts (1 s); data is
    /// invalidated when a file is opened and found changed.
    Auto,
    /// Metadata and data are cached without expiry: only for shares no one
    /// else changes.
    Always,
    /// Metadata is cached, file data never (direct I/O).
    Metadata,
    /// Nothing is cached: every access reaches fsd. `none` is an alias.
    #[value(alias = "none")]
    Never,
}

/// How fsd confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// New mount, PID, IPC and network namespaces; the share becomes `/`
    /// through pivot_root. Needs CAP_SYS_ADMIN.
    Namespace,
    /// chroot(2) into the share. Needs CAP_SYS_CHROOT.
    Chroot,
    /// No confinement beyond fsd's own checks (for unprivileged use).
    None,
}

/// What the seccomp filter does with a system call not on the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// Kill the daemon.
    Kill,
    /// Log the call (audit) and allow it.
    Log,
    /// Send SIGSYS to the daemon.
    Trap,
    /// Install no filter.
    None,
}

/// Whether the passthrough layer refers to inodes by file handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    /// Keep an O_PATH descriptor per inode (can exhaust descriptors on big trees).
    Never,
    /// Use file handles where the file system supports them, O_PATH otherwise.
    Prefer,
    /// Refuse to start unless the share supports file handles.
    Mandatory,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    Off,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
            LogLevel::Off => log::LevelFilter::Off,
        }
    }
}

/// fsd: serve a host directory to a VM over vhost-user virtio-fs.
///
/// A drop-in for virtiofsd: it takes virtiofsd's flags (and its legacy
/// `-o source=…` form) and adds real POSIX/flock locks, several request
/// queues and strict checks of everything the guest sends.
#[derive(Debug, Parser)]
#[command(name = "fsd", version, about, long_about = None, max_term_width = 100, args_override_self = true)]
pub struct Opt {
    /// Directory to share with the guest.
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Listen on this vhost-user UNIX socket (created, replacing a stale one).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,

    /// Use this inherited, already listening socket (as libvirt does).
    #[arg(long, value_name = "FD")]
    pub fd: Option<i32>,

    /// Give this group ownership of the socket created with --socket-path.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Tag served in the device configuration space, for VMMs that read it
    /// from the daemon (at most 36 bytes).
    #[arg(long)]
    pub tag: Option<String>,

    /// Guest caching of metadata and data.
    #[arg(long, value_enum, default_value_t = CacheMode::Auto)]
    pub cache: CacheMode,

    /// Self-confinement.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,

    /// Action on a system call outside the allow-list.
    #[arg(long, value_enum, default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,

    /// Survive a crash of the serving process (SIGKILL, a panic, the OOM
    /// killer): the supervisor keeps the session and starts a new fsd on it
    /// (docs/rejuvenation.md). Needs file handles (the default as root).
    #[arg(long)]
    pub crash_recovery: bool,

    /// Worker threads; 0 handles requests on each queue's own thread.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub thread_pool_size: usize,

    /// Threads that take READs of 256 KiB and more off a queue's thread
    /// while other requests wait behind them, and as many helpers that read
    /// parts of such a READ when it is the only request in flight, so that
    /// page-cache copies use more than one core; 0 turns both off. Default:
    /// one fewer than the host's cores, at most 2. Unused with
    /// --thread-pool-size, whose workers take every request (docs/fsd.md,
    /// "Large reads").
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    pub bulk_read_threads: Option<u16>,

    /// Longest time a queue's thread watches for the next request before
    /// it sleeps, in microseconds; adapts down to 0 for idle or slow guests
    /// (docs/fsd.md, "Polling"). 0 turns polling off.
    #[arg(long, default_value_t = DEFAULT_POLL_MAX_US, value_name = "US", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub poll_max_us: u64,

    /// Number of request queues offered (the guest may use fewer).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub request_queues: u16,

    /// Serve extended attributes.
    #[arg(long)]
    pub xattr: bool,

    /// Tell the guest about submounts so it gives them their own st_dev.
    #[arg(long)]
    pub announce_submounts: bool,

    /// Refuse every change to the share.
    #[arg(long)]
    pub readonly: bool,

    /// Raise the open-file limit to N (default: as high as the host allows).
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,

    /// Refer to inodes by file handles rather than by open descriptors
    /// (default: wherever the host allows it, with a logged fallback).
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Prefer)]
    pub inode_file_handles: InodeFileHandles,

    /// Let the guest cache writes (FUSE writeback cache).
    #[arg(long)]
    pub writeback: bool,

    /// Do not offer READDIRPLUS.
    #[arg(long)]
    pub no_readdirplus: bool,

    /// Honour O_DIRECT opens from the guest.
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Let the guest kernel drop setuid/setgid bits on writes (FUSE killpriv v2).
    #[arg(long)]
    pub killpriv_v2: bool,

    /// Log verbosity.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log to syslog instead of stderr.
    #[arg(long)]
    pub syslog: bool,

    /// Same as --log-level=debug.
    #[arg(short = 'd')]
    pub debug: bool,

    /// Accepted for compatibility; fsd always runs in the foreground.
    #[arg(short = 'f', hide = true)]
    pub foreground: bool,

    /// Per-file access control policy (TOML; see docs/policy.md). SIGHUP reloads it.
    #[arg(long, value_name = "FILE", requires = "vm")]
    pub policy: Option<PathBuf>,

    /// Name of the VM this fsd serves, as the policy names it.
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,

    /// Append one JSON line per decision on a protected file here.
    #[arg(long, value_name = "FILE", requires = "policy")]
    pub audit_log: Option<PathBuf>,

    /// Keep inode labels here (outside the share), so they survive restarts
    /// (default: /var/lib/fsd/labels/VM.db as root, else under
    /// $XDG_STATE_HOME or ~/.local/state).
    #[arg(long, value_name = "FILE", requires = "policy")]
    pub label_db: Option<PathBuf>,

    /// authd's socket, for rules that ask.
    #[arg(long, value_name = "PATH", requires = "policy")]
    pub authd_socket: Option<PathBuf>,

    /// The monitor's socket: when a grant ends, fsd asks it to flush what
    /// the guest read under the grant from the guest's page cache; file
    /// events for taint tracking go there too (docs/taint.md).
    #[arg(long, value_name = "PATH", requires = "policy")]
    pub monitor_socket: Option<PathBuf>,

    /// Print the features understood, as JSON for libvirt, and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Legacy options: source=PATH,cache=auto|always|none,sandbox=…,xattr,…
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// virtiofsd flags that fsd does not implement (refused with a message).
    #[command(flatten)]
    pub unsupported: Unsupported,
}

/// virtiofsd flags fsd knows but does not implement.
#[derive(Debug, Default, clap::Args)]
pub struct Unsupported {
    #[arg(long, hide = true)]
    xattrmap: Option<String>,
    #[arg(long, hide = true)]
    uid_map: Option<String>,
    #[arg(long, hide = true)]
    gid_map: Option<String>,
    #[arg(long, hide = true)]
    translate_uid: Vec<String>,
    #[arg(long, hide = true)]
    translate_gid: Vec<String>,
    #[arg(long, hide = true)]
    posix_acl: bool,
    #[arg(long, hide = true)]
    security_label: bool,
    #[arg(long, hide = true)]
    preserve_noatime: bool,
    #[arg(long, hide = true)]
    modcaps: Option<String>,
    #[arg(long, hide = true)]
    allow_mmap: bool,
    #[arg(long, hide = true)]
    migration_mode: Option<String>,
    #[arg(long, hide = true)]
    migration_on_error: Option<String>,
    #[arg(long, hide = true)]
    migration_verify_handles: bool,
    #[arg(long, hide = true)]
    migration_confirm_paths: bool,
}

impl Unsupported {
    /// The first unsupported flag given, by its name.
    fn first(&self) -> Option<&'static str> {
        let flags: [(&'static str, bool); 14] = [
            ("--xattrmap", self.xattrmap.is_some()),
            ("--uid-map", self.uid_map.is_some()),
            ("--gid-map", self.gid_map.is_some()),
            ("--translate-uid", !self.translate_uid.is_empty()),
            ("--translate-gid", !self.translate_gid.is_empty()),
            ("--posix-acl", self.posix_acl),
            ("--security-label", self.security_label),
            ("--preserve-noatime", self.preserve_noatime),
            ("--modcaps", self.modcaps.is_some()),
            ("--allow-mmap", self.allow_mmap),
            ("--migration-mode", self.migration_mode.is_some()),
            ("--migration-on-error", self.migration_on_error.is_some()),
            ("--migration-verify-handles", self.migration_verify_handles),
            ("--migration-confirm-paths", self.migration_confirm_paths),
        ];
        flags.iter().find(|(_, set)| *set).map(|(n, _)| *n)
    }
}

/// Errors in the command line, beyond what clap reports itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("{0} is a virtiofsd option that fsd does not support")]
    Unsupported(String),
    #[error("unknown legacy option -o {0}")]
    UnknownLegacy(String),
    #[error("invalid value in -o {key}={value}: {why}")]
    BadLegacyValue {
        key: String,
        value: String,
        why: String,
    },
    #[error("a shared directory is required (--shared-dir DIR or -o source=DIR)")]
    NoSharedDir,
    #[error("a socket is required: --socket-path PATH or --fd N")]
    NoSocket,
    #[error("--socket-path and --fd exclude each other")]
    TwoSockets,
    #[error("--socket-group only applies to a socket created with --socket-path")]
    GroupWithoutPath,
    #[error("the tag is {0} bytes long; at most 36 fit the device configuration")]
    TagTooLong(usize),
    #[error("--vm only makes sense with --policy")]
    VmWithoutPolicy,
    /// A path that cannot be made absolute (empty, or no working directory).
    #[error("{0}: {1}")]
    Path(PathBuf, String),
}

/// Everything the daemon needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub shared_dir: PathBuf,
    pub socket: SocketSpec,
    pub socket_group: Option<String>,
    pub tag: Option<String>,
    pub cache: CacheMode,
    pub sandbox: SandboxMode,
    pub seccomp: SeccompMode,
    pub crash_recovery: bool,
    pub thread_pool_size: usize,
    pub bulk_read_threads: usize,
    pub poll_max_us: u64,
    pub request_queues: usize,
    pub xattr: bool,
    pub announce_submounts: bool,
    pub readonly: bool,
    pub rlimit_nofile: Option<u64>,
    pub inode_file_handles: InodeFileHandles,
    pub writeback: bool,
    pub readdirplus: bool,
    pub allow_direct_io: bool,
    pub killpriv_v2: bool,
    pub log_level: LogLevel,
    pub syslog: bool,
    pub access: Option<AccessControl>,
}

/// Per-file access control settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessControl {
    pub policy: PathBuf,
    pub vm: String,
    pub audit_log: Option<PathBuf>,
    /// Where labels persist: `--label-db` or [`default_label_db`].
    pub label_db: PathBuf,
    pub authd_socket: Option<PathBuf>,
    pub monitor_socket: Option<PathBuf>,
}

/// Where a VM's labels persist when `--label-db` is not given: root's
/// `/var/lib/fsd/labels/VM.db`, or `fsd/labels/VM.db` under
/// `$XDG_STATE_HOME` (default `~/.local/state`) for other users.
pub fn default_label_db(vm: &str) -> PathBuf {
    let file = format!("{}.db", vm.replace(['/', '\0'], "_"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/fsd/labels").join(file);
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("fsd/labels").join(file)
}

/// Where the vhost-user connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    Path(PathBuf),
    Fd(i32),
}

fn legacy_value<T: FromStr>(key: &str, value: &str) -> Result<T, CliError> {
    T::from_str(value).map_err(|_| CliError::BadLegacyValue {
        key: key.into(),
        value: value.into(),
        why: "not understood".into(),
    })
}

fn enum_value<T: ValueEnum>(key: &str, value: &str) -> Result<T, CliError> {
    T::from_str(value, false).map_err(|why| CliError::BadLegacyValue {
        key: key.into(),
        value: value.into(),
        why,
    })
}

impl Opt {
    /// The JSON libvirt reads to learn that fsd takes separate options.
    pub fn capabilities_json() -> &'static str {
        "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}"
    }

    /// Applies the legacy `-o` options on top of the separate ones and checks
    /// the combination.
    pub fn into_settings(mut self) -> Result<Settings, CliError> {
        if let Some(flag) = self.unsupported.first() {
            return Err(CliError::Unsupported(flag.into()));
        }
        let legacy: Vec<String> = self
            .options
            .iter()
            .flat_map(|o| o.split(','))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for item in legacy {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (item.clone(), None),
            };
            match (key.as_str(), value.as_deref()) {
                ("source", Some(v)) => self.shared_dir = Some(PathBuf::from(v)),
                ("cache", Some(v)) => self.cache = enum_value(&key, v)?,
                ("sandbox", Some(v)) => self.sandbox = enum_value(&key, v)?,
                ("seccomp", Some(v)) => self.seccomp = enum_value(&key, v)?,
                ("log_level", Some(v)) => self.log_level = enum_value(&key, v)?,
                ("thread_pool_size", Some(v)) => self.thread_pool_size = legacy_value(&key, v)?,
                ("xattr", None) => self.xattr = true,
                ("no_xattr", None) => self.xattr = false,
                ("readdirplus", None) => self.no_readdirplus = false,
                ("no_readdirplus", None) => self.no_readdirplus = true,
                ("writeback", None) => self.writeback = true,
                ("no_writeback", None) => self.writeback = false,
                ("announce_submounts", None) => self.announce_submounts = true,
                ("killpriv_v2", None) => self.killpriv_v2 = true,
                ("no_killpriv_v2", None) => self.killpriv_v2 = false,
                // Locks always work in fsd; the C virtiofsd's switches for
                // them are accepted, their "off" form too, as no-ops.
                ("flock" | "no_flock" | "posix_lock" | "no_posix_lock", None) => {}
                ("allow_direct_io", None) => self.allow_direct_io = true,
                ("xattrmap" | "modcaps" | "timeout", _) => {
                    return Err(CliError::Unsupported(format!("-o {key}")))
                }
                _ => return Err(CliError::UnknownLegacy(item.clone())),
            }
        }
        let shared_dir = self.shared_dir.ok_or(CliError::NoSharedDir)?;
        let socket = match (self.socket_path, self.fd) {
            (Some(p), None) => SocketSpec::Path(p),
            (None, Some(fd)) => SocketSpec::Fd(fd),
            (Some(_), Some(_)) => return Err(CliError::TwoSockets),
            (None, None) => return Err(CliError::NoSocket),
        };
        if self.socket_group.is_some() && !matches!(socket, SocketSpec::Path(_)) {
            return Err(CliError::GroupWithoutPath);
        }
        if self.vm.is_some() && self.policy.is_none() {
            return Err(CliError::VmWithoutPolicy);
        }
        if let Some(t) = &self.tag {
            if t.len() > 36 {
                return Err(CliError::TagTooLong(t.len()));
            }
        }
        Ok(Settings {
            shared_dir,
            socket,
            socket_group: self.socket_group,
            tag: self.tag,
            cache: self.cache,
            sandbox: self.sandbox,
            seccomp: self.seccomp,
            crash_recovery: self.crash_recovery,
            thread_pool_size: self.thread_pool_size,
            bulk_read_threads: self
                .bulk_read_threads
                .map_or_else(default_bulk_read_threads, usize::from),
            poll_max_us: self.poll_max_us,
            request_queues: self.request_queues as usize,
            xattr: self.xattr,
            announce_submounts: self.announce_submounts,
            readonly: self.readonly,
            rlimit_nofile: self.rlimit_nofile,
            inode_file_handles: self.inode_file_handles,
            writeback: self.writeback,
            readdirplus: !self.no_readdirplus,
            allow_direct_io: self.allow_direct_io,
            killpriv_v2: self.killpriv_v2,
            log_level: if self.debug {
                LogLevel::Debug
            } else {
                self.log_level
            },
            syslog: self.syslog,
            access: match self.policy {
                None => None,
                Some(policy) => {
                    let vm = self.vm.unwrap_or_default();
                    // fsd changes its working directory to the share, and
                    // reopens these later: make them absolute now.
                    let abs = |p: PathBuf| {
                        std::path::absolute(&p)
                            .map_err(|e| CliError::Path(p.clone(), e.to_string()))
                    };
                    let opt = |p: Option<PathBuf>| p.map(abs).transpose();
                    Some(AccessControl {
                        policy: abs(policy)?,
                        label_db: abs(self.label_db.unwrap_or_else(|| default_label_db(&vm)))?,
                        vm,
                        audit_log: opt(self.audit_log)?,
                        authd_socket: opt(self.authd_socket)?,
                        monitor_socket: opt(self.monitor_socket)?,
                    })
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, CliError> {
        let mut v = vec!["fsd"];
        v.extend_from_slice(args);
        Opt::try_parse_from(v)
            .expect("clap accepts")
            .into_settings()
    }

    #[test]
    fn separate_options_as_libvirt_passes_them() {
        let s = parse(&[
            "--fd=3",
            "--shared-dir",
            "/srv/share",
            "--cache",
            "never",
            "--sandbox",
            "chroot",
            "--xattr",
            "--thread-pool-size=4",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(s.socket, SocketSpec::Fd(3));
        assert_eq!(s.shared_dir, PathBuf::from("/srv/share"));
        assert_eq!(s.cache, CacheMode::Never);
        assert_eq!(s.sandbox, SandboxMode::Chroot);
        assert!(s.xattr);
        assert_eq!(s.thread_pool_size, 4);
        assert_eq!(s.log_level, LogLevel::Debug);
    }

    #[test]
    fn legacy_options() {
        let s = parse(&[
            "--fd=4",
            "-o",
            "source=/srv/x,cache=none,sandbox=none,xattr,no_readdirplus",
        ])
        .unwrap();
        assert_eq!(s.shared_dir, PathBuf::from("/srv/x"));
        assert_eq!(s.cache, CacheMode::Never);
        assert_eq!(s.sandbox, SandboxMode::None);
        assert!(s.xattr);
        assert!(!s.readdirplus);
    }

    #[test]
    fn defaults() {
        let s = parse(&["--socket-path=/tmp/s", "--shared-dir=/d"]).unwrap();
        assert_eq!(s.cache, CacheMode::Auto);
        assert_eq!(s.sandbox, SandboxMode::Namespace);
        assert_eq!(s.seccomp, SeccompMode::Kill);
        assert_eq!(s.thread_pool_size, 0);
        assert!(s.readdirplus && !s.readonly && !s.xattr);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(s.bulk_read_threads, (cores - 1).min(2));
    }

    #[test]
    fn bulk_read_threads_bounded() {
        let with = |v: &str| parse(&["--socket-path=/s", "--shared-dir=/d", v]);
        assert_eq!(with("--bulk-read-threads=0").unwrap().bulk_read_threads, 0);
        assert_eq!(
            with("--bulk-read-threads=64").unwrap().bulk_read_threads,
            64
        );
        let refused = |v: &str| {
            Opt::try_parse_from(["fsd", "--socket-path=/s", "--shared-dir=/d", v]).is_err()
        };
        assert!(refused("--bulk-read-threads=65"));
        assert!(refused("--bulk-read-threads=-1"));
    }

    #[test]
    fn unsupported_flags_are_named() {
        assert_eq!(
            parse(&[
                "--socket-path=/s",
                "--shared-dir=/d",
                "--xattrmap=:ok:all::"
            ]),
            Err(CliError::Unsupported("--xattrmap".into()))
        );
        assert_eq!(
            parse(&["--socket-path=/s", "--shared-dir=/d", "--posix-acl"]),
            Err(CliError::Unsupported("--posix-acl".into()))
        );
        assert_eq!(
            parse(&["--socket-path=/s", "-o", "source=/d,frobnicate"]),
            Err(CliError::UnknownLegacy("frobnicate".into()))
        );
        assert!(matches!(
            parse(&["--socket-path=/s", "-o", "source=/d,cache=sometimes"]),
            Err(CliError::BadLegacyValue { .. })
        ));
    }

    #[test]
    fn socket_rules() {
        assert_eq!(parse(&["--shared-dir=/d"]), Err(CliError::NoSocket));
        assert_eq!(
            parse(&["--shared-dir=/d", "--fd=3", "--socket-path=/s"]),
            Err(CliError::TwoSockets)
        );
        assert_eq!(
            parse(&["--fd=3", "--shared-dir=/d", "--socket-group=kvm"]),
            Err(CliError::GroupWithoutPath)
        );
        assert_eq!(parse(&["--socket-path=/s"]), Err(CliError::NoSharedDir));
        assert_eq!(
            parse(&[
                "--socket-path=/s",
                "--shared-dir=/d",
                &format!("--tag={}", "t".repeat(37))
            ]),
            Err(CliError::TagTooLong(37))
        );
    }

    #[test]
    fn capabilities_are_json() {
        let v: serde_json::Value = serde_json::from_str(Opt::capabilities_json()).unwrap();
        assert_eq!(v["type"], "fs");
        assert!(v["features"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("separate-options")));
    }
}

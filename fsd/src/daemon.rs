//! Start-up order and the serving loop.
//!
//! 1. the socket (it lives outside the share, so before confinement);
//! 2. the open-file limit;
//! 3. namespaces (fork; before any thread);
//! 4. the file system (while `/proc` and the host paths still exist);
//! 5. pivot_root or chroot, then fewer privileges, then seccomp;
//! 6. serve one vhost-user connection; exit when the VMM disconnects, as
//!    virtiofsd does (the VMM restarts the daemon with the VM), or when a
//!    successor took the connection over (SIGUSR2, see [`crate::handover`]).
//!
//! A successor (started by a predecessor with [`handover::TAKEOVER_ENV`])
//! takes the same steps but binds no socket: its connection comes from the
//! predecessor, with the session to continue.

use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config};
use log::info;
use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};

use crate::broker::{self, Broker, Resource};
use crate::cli::{AccessControl, CacheMode, InodeFileHandles, SandboxMode, Settings, SocketSpec};
use crate::crash::inflight::InFlightTable;
use crate::crash::keeper::KeeperLink;
use crate::dispatch::{AtomicMem, Dispatcher, GuestMem};
use crate::error::{Error, Result};
use crate::fs::hostwatch::HostWatch;
use crate::fs::nodes::Limits;
use crate::fs::{SharedFs, SharedFsOptions};
use crate::handover::launcher::Launcher;
use crate::handover::{self, predecessor, successor, transfer::Channel, SuccessorCommand};
use crate::monitor_link::MonitorLink;
use crate::policy::audit::AuditLog;
use crate::policy::grants::{GrantSource, NoGrants};
use crate::policy::guard::PolicyReader;
use crate::policy::{Guard, Missing, Policy};
use crate::vhost_user::{DeviceConfig, FsBackend, QUEUE_SIZE};
use crate::{sandbox, seccomp, signals, socket};
use authd_client::client::Client;
use authd_client::grant_cache::GrantCache;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

/// Passthrough settings for a cache mode, with virtiofsd's timeouts.
pub fn passthrough_config(s: &Settings, root_dir: &str, file_handles: bool) -> Config {
    let (policy, timeout) = match s.cache {
        CacheMode::Never => (CachePolicy::Never, Duration::ZERO),
        CacheMode::Metadata => (CachePolicy::Metadata, Duration::from_secs(86400)),
        CacheMode::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        CacheMode::Always => (CachePolicy::Always, Duration::from_secs(86400)),
    };
    Config {
        entry_timeout: timeout,
        attr_timeout: timeout,
        cache_policy: policy,
        writeback: s.writeback,
        // Every FUSE session (a guest may unmount and mount again) imports
        // the root through this name, after the sandbox is in place: the
        // share as the confined daemon names it.
        root_dir: root_dir.to_owned(),
        // xattrs are served by SharedFs itself; the flag only gates them there.
        xattr: s.xattr,
        // SharedFs imports the root itself, at each FUSE_INIT.
        do_import: false,
        killpriv_v2: s.killpriv_v2,
        inode_file_handles: file_handles,
        // Node ids are fsd's own and never reused for another inode: a host
        // inode number freed and handed to a new file while the guest still
        // holds the old node must not make the two one node (it would share
        // the old one's remembered decisions). Guests still see host inode
        // numbers (st_ino in every attribute reply, which is the guest's
        // i_ino), so host tools and the monitor can name a cached inode.
        use_host_ino: false,
        allow_direct_io: s.allow_direct_io,
        ..Default::default()
    }
}

/// Checks that the share supports file handles, for `--inode-file-handles=mandatory`.
fn file_handles_supported(dir: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .unwrap_or_default();
    let mut buf = [0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buf holds a file_handle header with room for 128 bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            0,
        )
    };
    r == 0
}

/// Whether inodes are referred to by file handles: `mandatory` insists,
/// `prefer` (the default) uses them where the host allows and says why not
/// elsewhere. Opening a handle needs CAP_DAC_READ_SEARCH and, once
/// sandboxed, the share's mount table in reach, which `--sandbox=chroot`
/// does not leave.
fn use_file_handles(s: &Settings, shared: &std::path::Path) -> Result<bool> {
    let refuse = |why: &str| Error::SharedDir {
        path: shared.to_path_buf(),
        source: std::io::Error::other(format!("{why} (--inode-file-handles=mandatory)")),
    };
    let why_not = if !file_handles_supported(shared) {
        Some("the share's file system has no file handles")
    } else if !caps::has_cap(
        None,
        caps::CapSet::Permitted,
        caps::Capability::CAP_DAC_READ_SEARCH,
    )
    .unwrap_or(false)
    {
        Some("opening file handles needs CAP_DAC_READ_SEARCH")
    } else if s.sandbox == SandboxMode::Chroot {
        // The mount table fsd would open handles through is not in reach
        // once chrooted (no /proc), nor named as the chroot names it.
        Some("under --sandbox=chroot file handles cannot be opened")
    } else {
        None
    };
    match (s.inode_file_handles, why_not) {
        (InodeFileHandles::Never, _) => Ok(false),
        (InodeFileHandles::Mandatory, Some(why)) => Err(refuse(why)),
        (InodeFileHandles::Prefer, Some(why)) => {
            log::warn!(
                "{why}: one descriptor per inode the guest knows (--inode-file-handles=never)"
            );
            Ok(false)
        }
        (_, None) => Ok(true),
    }
}

/// Loads the policy, labels the share and opens the audit log, all before
/// the sandbox hides host paths; later reopenings go through `broker`.
///
/// The grant cache takes over the grants authd lists as live for this VM
/// whenever its subscription comes up (see [`handover::grants`]): at start,
/// so that a successor (`takes_over`) honours the grants its predecessor
/// had, and each time authd is back after a restart. A successor also gets
/// its label database back unread, to read at the takeover.
fn load_guard(
    a: &AccessControl,
    shared: &std::path::Path,
    root_prefix: std::path::PathBuf,
    broker: &Arc<Broker>,
    takes_over: bool,
) -> Result<(Arc<Guard>, Option<File>)> {
    let policy = Policy::load(&a.policy)?;
    let vm = policy.vm(&a.vm).ok_or_else(|| Error::UnknownVm {
        policy: a.policy.clone(),
        vm: a.vm.clone(),
    })?;
    info!(
        "policy {}: VM {} used by {}, {} rules",
        a.policy.display(),
        vm.name,
        vm.principal,
        policy.rules.len()
    );
    let audit = match &a.audit_log {
        Some(p) => {
            let b = broker.clone();
            AuditLog::with_opener(Box::new(move || b.open(Resource::AuditLog).map(File::from)))
                .map_err(|source| Error::AuditLog {
                    path: p.clone(),
                    source,
                })?
        }
        None => AuditLog::disabled(),
    };
    let asks = policy.rules.iter().any(|r| r.without_grant == Missing::Ask);
    let b = broker.clone();
    let reread: PolicyReader = Box::new(move || {
        let mut s = String::new();
        File::from(b.open(Resource::Policy)?).read_to_string(&mut s)?;
        Ok(s)
    });
    let monitor = match &a.monitor_socket {
        Some(_) => Some(
            MonitorLink::start(broker.clone()).map_err(|source| Error::Thread {
                name: "monitor link",
                source,
            })?,
        ),
        None => None,
    };
    // The guard is needed by the grant-end callback, and the grant source by
    // the guard: the callback reaches the guard through a cell set below.
    let cell: Arc<OnceLock<Arc<Guard>>> = Arc::new(OnceLock::new());
    let grants: Arc<dyn GrantSource> = match &a.authd_socket {
        Some(socket) => {
            let b = broker.clone();
            let client = Client::with_connector(
                socket.clone(),
                Arc::new(move || b.open(Resource::Authd).map(UnixStream::from)),
            );
            let on_end = cell.clone();
            let vm = a.vm.clone();
            let adopt = move |g: &_| handover::grants::adopts(&vm, g);
            let retry = Duration::from_secs(1);
            let cache = GrantCache::start_adopting(client, retry, adopt, move |ended| {
                let g = ended.grant();
                // authd reports the ends of every VM's grants; this fsd serves one.
                let Some(guard) = on_end.get().filter(|guard| guard.vm() == g.vm) else {
                    return;
                };
                let read = guard.grant_ended(&g.principal);
                info!(
                    "grant {} of {} for VM {} ended; the guest read {} protected inodes under it",
                    g.id,
                    g.principal,
                    g.vm,
                    read.len()
                );
                if let Some(m) = &monitor {
                    m.flush(&g.vm, read.into_iter().map(|(_, ino)| ino).collect());
                }
            });
            if !cache.wait_subscribed(Duration::from_secs(2)) {
                log::warn!(
                    "authd at {} does not answer yet: rules that ask deny until it does",
                    socket.display()
                );
            }
            if takes_over {
                info!(
                    "handover: {} live grants of VM {} taken over from authd",
                    cache.live_grants().len(),
                    a.vm
                );
            }
            Arc::new(cache)
        }
        None => {
            if asks {
                log::warn!("rules that ask have no --authd-socket: they deny");
            }
            Arc::new(NoGrants)
        }
    };
    let guard = Arc::new(Guard::new(
        a.vm.clone(),
        policy,
        audit,
        grants,
        reread,
        root_prefix,
    ));
    let _ = cell.set(guard.clone());
    let n = guard.labels.scan(&guard.policy(), shared);
    // Labels persist whenever a policy is in force: a protected file moved
    // elsewhere must stay protected after a restart (a VM reboot restarts
    // fsd). A database that cannot be opened stops fsd from starting.
    let db = &a.label_db;
    let db_err = |source: std::io::Error| Error::LabelDb {
        path: db.clone(),
        source,
    };
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).map_err(db_err)?;
    }
    // Appending: during a live handover two fsd processes have the file
    // open; each write lands at the end, never over the other's lines.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .map_err(db_err)?;
    if takes_over {
        // The predecessor may still label files until it pauses: read the
        // database once it has (see `handover::successor`).
        info!(
            "labels: {n} from the rules; {} is read at the takeover",
            db.display()
        );
        return Ok((guard, Some(f)));
    }
    let from_db = guard.labels.attach_db(&guard.policy(), f).map_err(db_err)?;
    info!(
        "labels: {n} from the rules, {from_db} from {}",
        db.display()
    );
    Ok((guard, None))
}

/// The host paths the sandboxed daemon may need again later.
fn broker_paths(s: &Settings) -> broker::Paths {
    match &s.access {
        Some(a) => broker::Paths {
            policy: Some(a.policy.clone()),
            audit_log: a.audit_log.clone(),
            authd: a.authd_socket.clone(),
            monitor: a.monitor_socket.clone(),
        },
        None => broker::Paths::default(),
    }
}

/// Runs the daemon until the VMM disconnects.
pub fn run(s: Settings) -> Result<()> {
    let shared = std::fs::canonicalize(&s.shared_dir).map_err(|source| Error::SharedDir {
        path: s.shared_dir.clone(),
        source,
    })?;
    if !shared.is_dir() {
        return Err(Error::SharedDir {
            path: shared,
            source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let file_handles = use_file_handles(&s, &shared)?;
    // A crash is recovered from the journal, which names inodes by file
    // handle: without handles there is nothing to open them again by.
    let keep = s.crash_recovery && file_handles;
    if s.crash_recovery && !file_handles {
        log::warn!("crash recovery needs file handles (see above); a crash will not be recovered");
    }
    // Recorded now: later, the path may name a new binary (that is the point).
    let successor_cmd = SuccessorCommand::of_this_process().ok();
    let takeover = handover::takeover_fd().map(Channel::from_fd);
    // A successor binds nothing: the predecessor holds the socket (and its
    // path) and hands over the connection itself.
    let listener = match (&takeover, &s.socket) {
        (Some(_), _) => None,
        (None, SocketSpec::Path(p)) => Some(socket::bind(p, s.socket_group.as_deref())?),
        (None, SocketSpec::Fd(fd)) => Some(socket::adopt(*fd)?),
    };
    let nofile = sandbox::raise_nofile(s.rlimit_nofile)?;
    // SIGHUP is taken by a thread of its own (reload), SIGUSR2 (handover)
    // by the main thread; block both everywhere else before any thread
    // exists.
    signals::block_sighup();
    handover::block_signal();
    // Successors are started from outside the seccomp filter and the
    // sandbox: by a launcher forked now, while fsd has one thread, or, when
    // sandboxed, by the broker parent (see `handover::launcher`).
    let forked_launcher = match (&successor_cmd, s.sandbox) {
        (Some(cmd), SandboxMode::None) => match Launcher::start(cmd.clone(), keep) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("handover: no launcher ({e}); SIGUSR2 will be refused");
                None
            }
        },
        _ => None,
    };
    let (forked_launcher, launcher_keeper) = match forked_launcher {
        Some((l, k)) => (Some(l), k),
        None => (None, None),
    };
    let (broker, broker_keeper) = sandbox::prepare(
        s.sandbox,
        &shared,
        broker_paths(&s),
        successor_cmd.clone(),
        takeover.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
        keep,
    )?;
    let broker = Arc::new(broker);
    let keeper = launcher_keeper
        .or(broker_keeper)
        .map(|c| Arc::new(KeeperLink::new(c)));
    let launcher = match (forked_launcher, &*broker) {
        (Some(l), _) => Some(l),
        (None, Broker::Parent(_)) if successor_cmd.is_some() => {
            Some(Launcher::Broker(broker.clone()))
        }
        _ => None,
    };
    let (guard, label_db) = match &s.access {
        Some(a) => {
            let (g, db) = load_guard(
                a,
                &shared,
                sandbox::root_prefix(s.sandbox, &shared),
                &broker,
                takeover.is_some(),
            )?;
            (Some(g), db)
        }
        None => (None, None),
    };
    // File events for the monitor's taint tracking: only with a monitor.
    let taint = match &s.access {
        Some(a) if a.monitor_socket.is_some() => Some(
            crate::taint_link::start(a.vm.clone(), crate::taint_link::via_broker(broker.clone()))
                .map_err(|source| Error::Thread {
                name: "taint link",
                source,
            })?,
        ),
        _ => None,
    };

    let root_prefix = sandbox::root_prefix(s.sandbox, &shared);
    // Only a policy needs to know of renames on the host.
    let host_watch = match guard {
        Some(_) => HostWatch::start(&shared),
        None => HostWatch::disabled(),
    };
    let cfg = passthrough_config(&s, &root_prefix.to_string_lossy(), file_handles);
    let limits = Limits::for_nofile(nofile, !cfg.inode_file_handles);
    info!(
        "a guest may hold {} nodes and {} open files",
        limits.nodes, limits.handles
    );
    let fs = sandbox::confine(s.sandbox, &shared, |share_root| {
        SharedFs::new(
            cfg,
            share_root,
            SharedFsOptions {
                readonly: s.readonly,
                xattr: s.xattr,
                announce_submounts: s.announce_submounts,
                readdirplus: s.readdirplus,
                root_prefix,
                guard: guard.clone(),
                limits,
                host_watch,
                taint: taint.as_ref().map(|(tap, _)| tap.clone()),
            },
        )
        .map_err(Error::FileSystem)
    })?;
    let fs = Arc::new(fs);
    if let Some((_, view)) = &taint {
        let _ = view.set(fs.clone() as Arc<dyn crate::taint_link::FsView>);
    }
    sandbox::drop_privileges(file_handles)?;
    if s.sandbox == SandboxMode::None {
        info!("running without a sandbox (--sandbox=none)");
    }

    let dispatcher = Arc::new(Dispatcher::new(fs.clone()));
    let backend = Arc::new(
        FsBackend::new(
            DeviceConfig {
                tag: s.tag.clone(),
                request_queues: s.request_queues,
                thread_pool_size: s.thread_pool_size,
                bulk_read_threads: s.bulk_read_threads,
                poll_max: Duration::from_micros(s.poll_max_us),
            },
            dispatcher,
        )
        .map_err(Error::Device)?,
    );
    // The bulk-read threads take large READs when others wait behind them;
    // as many helpers split a lone one (`fs::split_read`).
    if s.bulk_read_threads > 0 && s.thread_pool_size == 0 {
        let quiesce = backend.quiesce().clone();
        fs.split_large_reads(s.bulk_read_threads, Box::new(move || quiesce.in_flight()))
            .map_err(Error::FileSystem)?;
    }
    let mem = AtomicMem::new(GuestMem::new());
    let mut daemon =
        VhostUserDaemon::new("fsd".into(), backend.clone(), mem).map_err(Error::VhostUser)?;
    // Crash recovery: requests in flight, in shared memory the supervisor
    // holds (see `crash`).
    if keeper.is_some() {
        fs.prepare_journal().map_err(Error::FileSystem)?;
    }
    let inflight = match &keeper {
        Some(_) => Some(Arc::new(
            InFlightTable::create(backend.queue_count(), QUEUE_SIZE).map_err(Error::FileSystem)?,
        )),
        None => None,
    };
    let start_keeping = || -> std::io::Result<()> {
        if let (Some(k), Some(t)) = (&keeper, &inflight) {
            let [a, b] = fs.start_journal()?;
            k.journal(vec![a, b, t.dup_fd()?]);
            fs.keep_locks_with(k.clone());
            info!("crash recovery: the session is journaled; the supervisor keeps it");
        }
        Ok(())
    };
    if let Some(g) = &guard {
        signals::spawn_reloader(g.clone()).map_err(|source| Error::Thread {
            name: "SIGHUP reloader",
            source,
        })?;
    }
    let peers = s
        .access
        .as_ref()
        .is_some_and(|a| a.authd_socket.is_some() || a.monitor_socket.is_some());
    let direct = matches!(*broker, Broker::Direct(_));
    seccomp::install(
        s.seccomp,
        seccomp::UnixConnect(s.syslog || (direct && peers)),
    )?;
    info!(
        "serving {} ({} request queues, cache={:?}, sandbox={:?}, open-file limit {nofile})",
        shared.display(),
        s.request_queues,
        s.cache,
        s.sandbox
    );
    let connection = match (takeover, listener) {
        (Some(chan), _) => {
            successor::greet(&chan).map_err(Error::Handover)?;
            let mut label_db = label_db;
            let mut read_labels = || {
                if let (Some(g), Some(f)) = (&guard, label_db.take()) {
                    let n = g.labels.attach_db(&g.policy(), f)?;
                    info!("handover: {n} labels from the label database");
                }
                start_keeping()
            };
            // The supervisor gets the device before any queue runs.
            let mut device_ready = |d: &handover::vhost::Daemon, conn: &UnixStream| {
                if let Some(k) = &keeper {
                    k.refresh_device(d, &backend, conn);
                }
            };
            successor::take_over(
                &chan,
                &mut daemon,
                &backend,
                successor::Hooks {
                    before_serving: &mut read_labels,
                    device_ready: &mut device_ready,
                },
                inflight.clone(),
            )
            .map_err(Error::Handover)?
        }
        (None, Some(listener)) => {
            let (conn, _) = listener.accept().map_err(Error::Accept)?;
            let served = conn.try_clone().map_err(Error::Accept)?;
            start_keeping().map_err(Error::FileSystem)?;
            if let Some(t) = &inflight {
                backend.track_in_flight(t.clone());
            }
            daemon.start_on_stream(served).map_err(Error::VhostUser)?;
            info!("VMM connected");
            conn
        }
        (None, None) => unreachable!("a daemon without a successor channel binds a socket"),
    };
    let r = serve(
        &mut daemon,
        &backend,
        &connection,
        launcher.as_ref(),
        keeper.as_deref(),
    );
    // Not a crash: the supervisor must not start another fsd.
    if let Some(k) = &keeper {
        k.release();
    }
    r
}

/// Serves until the VMM disconnects or a successor took over.
fn serve(
    daemon: &mut handover::vhost::Daemon,
    backend: &Arc<FsBackend>,
    connection: &UnixStream,
    launcher: Option<&Launcher>,
    keeper: Option<&KeeperLink>,
) -> Result<()> {
    loop {
        if let Some(k) = keeper {
            // Within 200 ms of each change, the supervisor has the device
            // as the front-end set it up (memory, rings, eventfds).
            k.refresh_device(daemon, backend, connection);
        }
        if handover::wait_for_request(Duration::from_millis(200)) {
            match launcher {
                Some(launcher) => {
                    let serving = predecessor::Serving {
                        daemon,
                        backend,
                        connection,
                    };
                    match predecessor::hand_over(serving, launcher) {
                        Ok(r) => {
                            info!(
                                "handover: done; pid {} serves now (requests paused {:?}, {} descriptors, {} inodes)",
                                r.successor_pid, r.paused, r.descriptors, r.inodes
                            );
                            if let Some(k) = keeper {
                                k.release();
                            }
                            // Without destructors: nothing here may touch
                            // the session any more.
                            std::process::exit(0);
                        }
                        Err(e) => log::warn!("handover failed, still serving: {e}"),
                    }
                }
                None => log::warn!("handover: no launcher (see above); SIGUSR2 ignored"),
            }
        }
        if daemon.is_finished() {
            break;
        }
    }
    let result = daemon.wait();
    match result {
        Ok(()) => Ok(()),
        Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => {
            info!("VMM disconnected");
            Ok(())
        }
        Err(e) => Err(Error::VhostUser(e)),
    }
}

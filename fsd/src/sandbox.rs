//! Self-confinement: namespaces, pivot_root or chroot, fewer privileges.
//!
//! A bug in the file system code must not give a guest the host. With the
//! default `--sandbox=namespace`, fsd moves into new mount, PID, IPC and
//! network namespaces and makes the shared directory its root with
//! pivot_root, so that no host path outside the share exists for it at all;
//! `--sandbox=chroot` only changes its root. Either way it then drops
//! supplementary groups (a guest must not act with the daemon's groups) and
//! every capability a file server does not need.
//!
//! The order matters and is driven by `daemon`: [`prepare`] (fork into the
//! new namespaces, before any thread exists), then [`confine`], which builds
//! the file system while `/proc` is still reachable, then
//! [`drop_privileges`], then seccomp.

use std::ffi::CString;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::broker::{self, Broker};
use crate::cli::SandboxMode;
use crate::crash::keeper::Keeper;
use crate::handover::launcher::Successors;
use crate::handover::transfer::Channel;
use crate::handover::SuccessorCommand;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot create namespaces ({0}); --sandbox=namespace needs root (CAP_SYS_ADMIN); use --sandbox=none to run unprivileged")]
    Unshare(io::Error),
    #[error("fork: {0}")]
    Fork(io::Error),
    #[error("{what}: {source}")]
    Mount { what: String, source: io::Error },
    #[error("pivot_root into {0}: {1}")]
    PivotRoot(PathBuf, io::Error),
    #[error("chroot into {0}: {1} (--sandbox=chroot needs CAP_SYS_CHROOT)")]
    Chroot(PathBuf, io::Error),
    #[error("dropping supplementary groups: {0}")]
    Groups(io::Error),
    #[error("dropping capabilities: {0}")]
    Caps(String),
    #[error("raising the open-file limit to {0}: {1}")]
    Rlimit(u64, io::Error),
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from the command line have no NUL")
}

fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    what: &str,
) -> Result<(), SandboxError> {
    let src = src.map(|s| CString::new(s).unwrap());
    let fstype = fstype.map(|s| CString::new(s).unwrap());
    let target = cstr(target);
    // SAFETY: all pointers are valid C strings or NULL.
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    })
    .map_err(|source| SandboxError::Mount {
        what: what.into(),
        source,
    })
}

/// How the daemon names the share root once confined.
pub fn root_prefix(mode: SandboxMode, shared_dir: &Path) -> PathBuf {
    match mode {
        SandboxMode::Namespace => PathBuf::from(STAGED_SHARE),
        SandboxMode::Chroot => PathBuf::from("/"),
        SandboxMode::None => shared_dir.to_path_buf(),
    }
}

/// First step, before any thread exists. With a sandbox, fsd forks: the
/// child becomes the daemon (for `namespace`, PID 1 of a new PID namespace,
/// in new mount, IPC and network namespaces with its own `/proc`); the
/// parent stays outside, forwards signals, opens the host resources of
/// `paths` for the child when asked ([`broker`]) and exits with the child's
/// status. Without a sandbox nothing happens and fsd opens them itself.
///
/// With `successor`, the parent also starts successors for a live handover
/// ([`crate::handover::launcher`]); `child_only` is a descriptor only the
/// child keeps (a successor's handover channel). With `keep`, the parent
/// also keeps the child's session for a crash ([`crate::crash`]); the
/// child's end of that channel comes back.
pub fn prepare(
    mode: SandboxMode,
    shared_dir: &Path,
    paths: broker::Paths,
    successor: Option<SuccessorCommand>,
    child_only: Option<RawFd>,
    keep: bool,
) -> Result<(Broker, Option<Channel>), SandboxError> {
    if mode == SandboxMode::None {
        return Ok((Broker::Direct(paths), None));
    }
    let (parent_end, child_end) = UnixStream::pair().map_err(SandboxError::Fork)?;
    let keeper = match keep && successor.is_some() {
        true => Some(
            crate::handover::transfer::pair()
                .map_err(|e| SandboxError::Fork(io::Error::other(e.to_string())))?,
        ),
        false => None,
    };
    // Opened before this process's children get a PID namespace of their
    // own: successors must be born outside it (see `Successors`).
    let own_pidns = match (&successor, mode) {
        (Some(_), SandboxMode::Namespace) => Some(
            std::fs::File::open("/proc/self/ns/pid")
                .map(std::os::fd::OwnedFd::from)
                .map_err(SandboxError::Fork)?,
        ),
        _ => None,
    };
    if mode == SandboxMode::Namespace {
        // Only the PID namespace is entered before the fork (it applies to
        // children); the parent keeps the host's mounts to broker paths.
        // SAFETY: plain syscall.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) }).map_err(SandboxError::Unshare)?;
    }
    // SAFETY: no other thread exists yet, so fork is safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SandboxError::Fork(io::Error::last_os_error()));
    }
    if pid > 0 {
        drop(child_end);
        if let Some(fd) = child_only {
            // SAFETY: closing a descriptor this process no longer uses.
            unsafe { libc::close(fd) };
        }
        forward_signals_to(pid);
        let mut successors = successor.map(|cmd| Successors::new(cmd, own_pidns));
        let keeper = keeper.map(|(k, child_end)| {
            drop(child_end);
            Keeper::new(k)
        });
        // On this thread: after unshare(CLONE_NEWPID) the parent cannot
        // start threads. The child's end closes when it exits.
        let recovered = broker::serve(paths, parent_end, successors.as_mut(), keeper);
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                std::process::exit(1);
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        if let Some(s) = successors {
            s.finish();
        }
        // After a crash recovered, the new fsd serves: this service did not fail.
        std::process::exit(if recovered { 0 } else { code });
    }
    drop(parent_end);
    drop(own_pidns);
    let keeper = keeper.map(|(k, child_end)| {
        drop(k);
        Channel::from_fd(child_end)
    });
    // Child: die with the parent, so a supervisor killing fsd kills it all.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if mode == SandboxMode::Namespace {
        let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;
        // SAFETY: plain syscall.
        check(unsafe { libc::unshare(flags) }).map_err(SandboxError::Unshare)?;
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_SLAVE,
            "making / a slave mount",
        )?;
        mount(
            Some("proc"),
            Path::new("/proc"),
            Some("proc"),
            libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_RELATIME,
            "mounting /proc for the new PID namespace",
        )?;
        // The share becomes a mount of its own now, before anything of it is
        // opened: descriptors then refer to this mount, which pivot_root
        // turns into the root, never to the host's tree left behind.
        mount(
            Some(&shared_dir.to_string_lossy()),
            shared_dir,
            None,
            libc::MS_BIND | libc::MS_REC,
            "bind-mounting the shared directory",
        )?;
        // As PID 1 of its namespace the daemon ignores signals it has no
        // handler for; SIGTERM and SIGINT (forwarded by the parent) end it.
        exit_on(&[libc::SIGTERM, libc::SIGINT]);
        // SIGUSR2 (handover) is taken with sigtimedwait; without a handler
        // the kernel would drop it on the way to a namespace's PID 1.
        handle(&[libc::SIGUSR2], ignore, 0);
    }
    Ok((Broker::Parent(std::sync::Mutex::new(child_end)), keeper))
}

extern "C" fn ignore(_sig: libc::c_int) {}

extern "C" fn exit_now(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

/// Installs `handler` for `signals`; handlers here only make
/// async-signal-safe calls (`_exit`, `kill`).
fn handle(signals: &[libc::c_int], handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction with a valid handler and flags.
    unsafe {
        for &sig in signals {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = flags;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn exit_on(signals: &[libc::c_int]) {
    handle(signals, exit_now, 0);
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

/// The parent left outside the namespaces is what supervisors see: pass
/// SIGHUP (reload), SIGUSR2 (handover), SIGTERM and SIGINT on to the daemon.
fn forward_signals_to(child: libc::pid_t) {
    CHILD.store(child, std::sync::atomic::Ordering::Relaxed);
    handle(
        &[libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGUSR2],
        forward,
        libc::SA_RESTART,
    );
    // SAFETY: unblocking SIGHUP and SIGUSR2 in this (single-threaded) parent.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Second step: make the share the root (pivot_root or chroot), building
/// the file system with `build` at the one moment where both the share and
/// `/proc` are reachable and `/proc/self/mountinfo` already lists mounts as
/// the confined daemon will name them (file handles are opened through the
/// mount point named there). `build` gets the share root, opened before
/// anything moved (in the pivot window, every path names the old root).
pub fn confine<T>(
    mode: SandboxMode,
    shared_dir: &Path,
    build: impl FnOnce(std::fs::File) -> crate::Result<T>,
) -> crate::Result<T> {
    let root = std::fs::File::open(shared_dir).map_err(|source| crate::Error::SharedDir {
        path: shared_dir.into(),
        source,
    })?;
    match mode {
        SandboxMode::None => build(root),
        SandboxMode::Chroot => {
            let built = build(root)?;
            let d = cstr(shared_dir);
            let chroot_err = |e| SandboxError::Chroot(shared_dir.into(), e);
            // SAFETY: a valid C string.
            check(unsafe { libc::chroot(d.as_ptr()) }).map_err(chroot_err)?;
            // SAFETY: a valid C string.
            check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(chroot_err)?;
            Ok(built)
        }
        SandboxMode::Namespace => {
            drop(root);
            stage_root(shared_dir)?;
            let d = cstr(shared_dir);
            let pivot_err = |e| SandboxError::PivotRoot(shared_dir.into(), e);
            // The documented way to pivot onto the current directory and
            // drop the old root: chdir, pivot_root(".", "."), umount2(".").
            // SAFETY: a valid C string.
            check(unsafe { libc::chdir(d.as_ptr()) }).map_err(pivot_err)?;
            // SAFETY: valid C strings.
            check(unsafe {
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
            })
            .map_err(pivot_err)?;
            // SAFETY: a valid C string.
            check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) }).map_err(pivot_err)?;
            // SAFETY: a valid C string.
            check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(pivot_err)?;
            // The root is now the staging tmpfs: `/share` and `/proc`. Mount
            // tables opened now name the share `/share`.
            let share =
                std::fs::File::open(STAGED_SHARE).map_err(|source| crate::Error::SharedDir {
                    path: shared_dir.into(),
                    source,
                })?;
            let built = build(share)?;
            // SAFETY: valid C string.
            check(unsafe { libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) }).map_err(
                |source| SandboxError::Mount {
                    what: "unmounting /proc".into(),
                    source,
                },
            )?;
            Ok(built)
        }
    }
}

/// Where the share is once `--sandbox=namespace` is in place.
pub const STAGED_SHARE: &str = "/share";

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Builds the namespace's future root on the share's path (in this mount
/// namespace only): a small tmpfs holding the share (a clone of its mount
/// tree) at `share` and a proc at `proc`. After pivot_root the daemon sees
/// nothing of the host but the share, and, until the file system is built,
/// its own `/proc`.
fn stage_root(shared_dir: &Path) -> Result<(), SandboxError> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |source| SandboxError::Mount { what, source }
    };
    let d = cstr(shared_dir);
    // SAFETY: valid C string; the returned fd is owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            d.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(fail(
            "cloning the share's mount (open_tree, Linux 5.2 or later)",
        )(io::Error::last_os_error()));
    }
    // SAFETY: a descriptor the kernel just returned.
    let tree = unsafe { std::os::fd::OwnedFd::from_raw_fd(tree as i32) };
    mount(
        Some("tmpfs"),
        shared_dir,
        Some("tmpfs"),
        libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOSUID,
        "mounting the sandbox's root",
    )?;
    for sub in ["share", "proc"] {
        let p = cstr(&shared_dir.join(sub));
        // SAFETY: valid C string.
        check(unsafe { libc::mkdir(p.as_ptr(), 0o755) })
            .map_err(fail("populating the sandbox's root"))?;
    }
    let target = cstr(&shared_dir.join("share"));
    // SAFETY: a detached mount fd we own and a valid C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            std::os::fd::AsRawFd::as_raw_fd(&tree),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) as libc::c_int
    })
    .map_err(fail(
        "attaching the share in the sandbox's root (move_mount)",
    ))?;
    mount(
        Some("proc"),
        &shared_dir.join("proc"),
        Some("proc"),
        libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_RELATIME,
        "mounting /proc in the sandbox's root",
    )
}

/// Capabilities a passthrough file server needs: acting on files of any
/// owner (as the guest's root would) and creating device nodes, nothing more.
fn kept_caps(file_handles: bool) -> caps::CapsHashSet {
    use caps::Capability::*;
    let mut set: caps::CapsHashSet = [
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_FOWNER,
        CAP_FSETID,
        CAP_SETGID,
        CAP_SETUID,
        CAP_MKNOD,
        CAP_SETFCAP,
    ]
    .into_iter()
    .collect();
    if file_handles {
        set.insert(CAP_DAC_READ_SEARCH);
    }
    set
}

/// Third step: no supplementary groups, only the capabilities needed.
pub fn drop_privileges(file_handles: bool) -> Result<(), SandboxError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    // SAFETY: an empty group list (size 0, no pointer read).
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(SandboxError::Groups)?;
    let keep = kept_caps(file_handles);
    let err = |e: caps::errors::CapsError| SandboxError::Caps(e.to_string());
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::clear(None, caps::CapSet::Ambient).map_err(err)?;
    caps::clear(None, caps::CapSet::Inheritable).map_err(err)?;
    caps::set(None, caps::CapSet::Effective, &keep).map_err(err)?;
    caps::set(None, caps::CapSet::Permitted, &keep).map_err(err)?;
    Ok(())
}

/// Raises RLIMIT_NOFILE: to `want`, or else as high as `fs.nr_open` allows
/// (capped at one million), since each inode the guest knows may hold a
/// descriptor. Unprivileged, the hard limit is the ceiling.
pub fn raise_nofile(want: Option<u64>) -> Result<u64, SandboxError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })
        .map_err(|e| SandboxError::Rlimit(want.unwrap_or(0), e))?;
    let set = |n: u64| {
        let l = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit reads `l`.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) })
    };
    if let Some(n) = want {
        set(n).map_err(|e| SandboxError::Rlimit(n, e))?;
        return Ok(n);
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    let target = nr_open.min(1_000_000).max(lim.rlim_cur);
    if set(target).is_ok() {
        return Ok(target);
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads `soft`.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) })
        .map_err(|e| SandboxError::Rlimit(lim.rlim_max, e))?;
    Ok(lim.rlim_max)
}

//! Where the rig finds and keeps things.
//!
//! `scripts/install-deps.sh` fills `$FSD_CACHE` (default `~/.cache/fsd`):
//!
//! ```text
//! guest/root/boot/vmlinuz-<release>       Debian guest kernel (dpkg -x of the .deb)
//! guest/root/boot/config-<release>        its configuration (to skip built-in modules)
//! guest/root/lib/modules/<release>/...    its modules
//! guest/release                           <release>
//! guest/vmlinux                           decompressed ELF kernel with .BTF
//! virtiofsd/bin/virtiofsd                 reference daemon
//! qemu10/root/usr/bin/qemu-system-x86_64  QEMU 10 (bookworm-backports, dpkg -x)
//! qemu10/root/usr/share/{qemu,seabios}    its firmware
//! qemu10/root/usr/lib/x86_64-linux-gnu/qemu  its modules
//! initramfs/<sha256>.cpio                 initramfs images built by the rig
//! ```
//!
//! `FSD_GUEST_DIR` replaces `$FSD_CACHE/guest` (same layout inside).
//!
//! The project's own programs (fsd, authd, monitor) are found in the cargo
//! target directory the running test or tool was built into, so that a test
//! never runs a binary of another checkout; one variable each overrides that:
//! `FSD_BIN`, `AUTHD_BIN_DIR` (authd and authd-dialog) and `MONITOR_BIN`.

use std::path::{Path, PathBuf};

/// The cache root: `$FSD_CACHE`, else `$HOME/.cache/fsd`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env_path("FSD_CACHE") {
        return dir;
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/fsd")
}

/// The unpacked guest kernel: `$FSD_GUEST_DIR`, else `<cache>/guest`.
pub fn guest_dir() -> PathBuf {
    env_path("FSD_GUEST_DIR").unwrap_or_else(|| cache_dir().join("guest"))
}

/// The reference daemon: `$FSD_VIRTIOFSD` (`$VIRTIOFSD_BIN`, its older
/// name, is still read), else the one `scripts/install-deps.sh` installs with
/// `cargo install --root <cache>/virtiofsd`, else a distribution's
/// (`/usr/libexec/virtiofsd`). When none exists this is the cache path, so
/// that messages name where it is expected.
pub fn virtiofsd() -> PathBuf {
    if let Some(p) = env_path("FSD_VIRTIOFSD").or_else(|| env_path("VIRTIOFSD_BIN")) {
        return p;
    }
    let cached = cache_dir().join("virtiofsd/bin/virtiofsd");
    [
        cached.clone(),
        PathBuf::from("/usr/libexec/virtiofsd"),
        PathBuf::from("/usr/lib/qemu/virtiofsd"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or(cached)
}

/// The decompressed guest kernel with `.BTF` (`<guest dir>/vmlinux`), which
/// the monitor reads symbols and structure layouts from.
pub fn vmlinux() -> PathBuf {
    guest_dir().join("vmlinux")
}

/// The fsd binary: `$FSD_BIN`, else `fsd` in the target directory (see
/// [`built_binary`]). The error says how to build it.
pub fn fsd() -> Result<PathBuf, String> {
    built_binary("fsd", "FSD_BIN", "cargo build -p fsd")
}

/// The monitor binary: `$MONITOR_BIN`, else `monitor` in the target directory.
pub fn monitor() -> Result<PathBuf, String> {
    built_binary("monitor", "MONITOR_BIN", "cargo build -p monitor")
}

/// The packet filter: `$NETFILTER_BIN`, else `netfilter` in the target
/// directory.
pub fn netfilter() -> Result<PathBuf, String> {
    built_binary("netfilter", "NETFILTER_BIN", "cargo build -p netfilter")
}

/// authd and its dialog program: both in `$AUTHD_BIN_DIR`, else in the
/// target directory.
pub fn authd() -> Result<(PathBuf, PathBuf), String> {
    let build = "cargo build -p authd";
    let Some(dir) = env_path("AUTHD_BIN_DIR") else {
        return Ok((
            target_binary("authd", build)?,
            target_binary("authd-dialog", build)?,
        ));
    };
    let (authd, dialog) = (dir.join("authd"), dir.join("authd-dialog"));
    if let Some(p) = [&authd, &dialog].into_iter().find(|p| !p.is_file()) {
        return Err(format!(
            "AUTHD_BIN_DIR={}: {} does not exist (`{build}`)",
            dir.display(),
            p.display()
        ));
    }
    Ok((authd, dialog))
}

/// A binary of this workspace: `$var` when set (it must exist), else
/// [`target_binary`]. The error names `build`, the command that makes it.
pub fn built_binary(name: &str, var: &str, build: &str) -> Result<PathBuf, String> {
    match env_path(var) {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(format!("{var}={} does not exist (`{build}`)", p.display())),
        None => target_binary(name, build),
    }
}

/// `<target>/<profile>/name`, where `<target>` is `CARGO_TARGET_DIR`, the
/// target directory holding the running executable (tests and benchmarks
/// live in `<target>/<profile>/deps/`) or `<workspace>/target`. The profile
/// the running executable was built with is tried first, so that a stale
/// binary of the other profile is never picked up before it.
pub fn target_binary(name: &str, build: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env_path("CARGO_TARGET_DIR").into_iter().collect();
    for anc in exe.ancestors().skip(1).take(3) {
        if anc.join("debug").is_dir() || anc.join("release").is_dir() {
            dirs.push(anc.to_path_buf());
        }
    }
    dirs.push(workspace_root().join("target"));
    dirs.dedup();
    let profiles = if exe.components().any(|c| c.as_os_str() == "release") {
        ["release", "debug"]
    } else {
        ["debug", "release"]
    };
    for d in &dirs {
        for profile in profiles {
            let p = d.join(profile).join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "{name} not found in {}: build it first with `{build}`",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Built initramfs images, named by the SHA-256 of their content.
pub fn initramfs_cache() -> PathBuf {
    cache_dir().join("initramfs")
}

/// The static busybox that goes into every guest (`busybox-static`).
pub fn busybox() -> PathBuf {
    env_path("FSD_BUSYBOX").unwrap_or_else(|| PathBuf::from("/bin/busybox"))
}

/// The QEMU binary: `FSD_QEMU`, else QEMU 10 when [`guests_on_qemu10`],
/// else the system QEMU on `PATH` (Debian 12's 7.2).
pub fn qemu() -> PathBuf {
    if let Some(p) = env_path("FSD_QEMU") {
        return p;
    }
    if guests_on_qemu10() {
        return qemu10();
    }
    PathBuf::from("qemu-system-x86_64")
}

/// Whether every guest of this run boots on QEMU 10 ([`qemu10`]) instead
/// of the system QEMU: `FSD_GUEST_QEMU=10`. scripts/test.sh runs the main
/// guest tests once on each, so both front-ends stay supported.
pub fn guests_on_qemu10() -> bool {
    std::env::var("FSD_GUEST_QEMU").is_ok_and(|v| v == "10")
}

/// Where `scripts/install-deps.sh` unpacks QEMU 10 (beside the system QEMU).
pub fn qemu10_root() -> PathBuf {
    cache_dir().join("qemu10/root")
}

/// A QEMU whose TCG plugin API can read registers and guest memory (API v4,
/// QEMU >= 9.2): `FSD_QEMU10`, else the one unpacked under [`qemu10_root`].
pub fn qemu10() -> PathBuf {
    match std::env::var_os("FSD_QEMU10").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => qemu10_root().join("usr/bin/qemu-system-x86_64"),
    }
}

/// Firmware directories (`-L`) of the unpacked QEMU 10; empty when the
/// binary came from `FSD_QEMU10` (an installed QEMU finds its own).
pub fn qemu10_data_dirs() -> Vec<PathBuf> {
    if std::env::var_os("FSD_QEMU10").is_some_and(|v| !v.is_empty()) {
        return Vec::new();
    }
    ["usr/share/qemu", "usr/share/seabios"]
        .iter()
        .map(|d| qemu10_root().join(d))
        .filter(|d| d.is_dir())
        .collect()
}

/// Module directory (`QEMU_MODULE_DIR`) of the unpacked QEMU 10, so it never
/// loads the system QEMU's modules of another version.
pub fn qemu10_module_dir() -> Option<PathBuf> {
    if std::env::var_os("FSD_QEMU10").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    Some(qemu10_root().join("usr/lib/x86_64-linux-gnu/qemu")).filter(|d| d.is_dir())
}

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory in use (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    env_path("CARGO_TARGET_DIR").unwrap_or_else(|| workspace_root().join("target"))
}

/// A non-empty environment variable as a path.
fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Finds `program` on `PATH` (or checks it directly when it has a slash).
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

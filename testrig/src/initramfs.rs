//! The guest's initramfs: busybox, the virtio-fs module closure, optional
//! extra files and a generated `/init`.
//!
//! Two modes:
//! - [`InitMode::RunScript`]: mount the share (default at `/mnt`), run a shell
//!   script in it, print its output between [`BEGIN_MARKER`] and
//!   [`END_PREFIX`]`<rc>@@`, power off.
//! - [`InitMode::SwitchRoot`]: mount the share as the new root and
//!   `switch_root` into it (diskless guest; see [`crate::rootfs`]). The modules
//!   must be loaded before the share can be mounted, which is why this is done
//!   here and not with `root=TAG rootfstype=virtiofs` alone.
//!
//! Images are cached under `$FSD_CACHE/initramfs/<sha256>.cpio`: the archive
//! is built in memory (cheap), hashed, and only written when new.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::error::{Error, Result};
use crate::kernel::GuestKernel;
use crate::modules::{self, VIRTIOFS_MODULES};
use crate::paths;

/// Printed by `/init` just before the script's output.
pub const BEGIN_MARKER: &str = "@@RIG-BEGIN@@";
/// Printed after the script's output, followed by its exit code and `@@`.
pub const END_PREFIX: &str = "@@RIG-END rc=";
/// Printed by `/init` when it cannot do its job (module, mount, switch_root).
pub const ERROR_PREFIX: &str = "RIG-ERROR:";

/// The guest's own `/etc/passwd`, recognizable in tests that must prove a path
/// resolved inside the guest and not on the host.
pub const GUEST_PASSWD: &str = "root:x:0:0:fsd-rig guest root:/root:/bin/sh\n\
                                nobody:x:65534:65534:fsd-rig guest nobody:/nonexistent:/bin/false\n";

/// What `/init` does once the modules are loaded.
#[derive(Debug, Clone)]
pub enum InitMode {
    /// Mount the share and run this shell script with the share as cwd.
    RunScript(String),
    /// Mount the share as root and exec this init program inside it.
    SwitchRoot(String),
}

#[derive(Debug, Clone)]
enum Source {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

/// Describes an initramfs; [`InitramfsBuilder::build`] makes (or reuses) it.
#[derive(Debug, Clone)]
pub struct InitramfsBuilder {
    mode: InitMode,
    tag: String,
    mount_point: String,
    modules: Vec<String>,
    files: Vec<(String, u32, Source)>,
    busybox: PathBuf,
}

impl InitramfsBuilder {
    /// Runs `script` (busybox `sh`) with the share mounted at `/mnt`.
    pub fn run_script(tag: &str, script: &str) -> Self {
        Self::new(tag, InitMode::RunScript(script.to_string()))
    }

    /// Mounts the share as root and starts `/sbin/init` from it.
    pub fn switch_root(tag: &str) -> Self {
        Self::new(tag, InitMode::SwitchRoot("/sbin/init".to_string()))
    }

    fn new(tag: &str, mode: InitMode) -> Self {
        InitramfsBuilder {
            mode,
            tag: tag.to_string(),
            mount_point: "/mnt".to_string(),
            modules: VIRTIOFS_MODULES.iter().map(|m| m.to_string()).collect(),
            files: Vec::new(),
            busybox: paths::busybox(),
        }
    }

    /// Mount point of the share in [`InitMode::RunScript`] mode.
    pub fn mount_point(mut self, path: &str) -> Self {
        self.mount_point = path.to_string();
        self
    }

    /// Loads one more module (after the virtio-fs ones, with its dependencies).
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_string());
        self
    }

    /// Adds a file with the given content.
    pub fn file(mut self, guest_path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        self.files
            .push((guest_path.to_string(), mode, Source::Bytes(data.into())));
        self
    }

    /// Adds a copy of a host file (read when the image is built).
    pub fn host_file(mut self, guest_path: &str, mode: u32, host: impl Into<PathBuf>) -> Self {
        self.files
            .push((guest_path.to_string(), mode, Source::Host(host.into())));
        self
    }

    /// Adds every guest helper from [`crate::guest_tools`] as `/bin/<name>`.
    pub fn guest_tools(mut self, tools: &crate::guest_tools::GuestTools) -> Self {
        for (name, path) in tools.binaries() {
            self = self.host_file(&format!("/bin/{name}"), 0o755, path);
        }
        self
    }

    /// Builds the archive, or reuses the cached one with the same content.
    pub fn build(&self, kernel: &GuestKernel) -> Result<PathBuf> {
        let bytes = self.archive(kernel)?;
        let digest = Sha256::digest(&bytes);
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let dir = paths::initramfs_cache();
        let path = dir.join(format!("{name}.cpio"));
        if path.is_file() {
            // Mark as recently used, for pruning.
            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            return Ok(path);
        }
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        // Unique per process and call: parallel tests may build the same image.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        prune(&dir, KEEP_IMAGES, &path);
        Ok(path)
    }

    /// The archive's bytes.
    pub fn archive(&self, kernel: &GuestKernel) -> Result<Vec<u8>> {
        let names: Vec<&str> = self.modules.iter().map(String::as_str).collect();
        let mods = modules::resolve(kernel, &names)?;
        let busybox = std::fs::read(&self.busybox).map_err(|_| Error::Missing {
            what: "static busybox (busybox-static)".into(),
            path: self.busybox.clone(),
        })?;
        let applets = applets(&self.busybox)?;

        let mut a = Archive::new();
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "mnt", "etc",
            "root", "newroot",
        ] {
            a.dir(d)?;
        }
        a.w.char_device("dev/console", 0o600, 5, 1)
            .map_err(cpio_err)?;
        a.w.char_device("dev/null", 0o666, 1, 3).map_err(cpio_err)?;
        a.file("bin/busybox", 0o755, &busybox)?;
        for applet in &applets {
            if !a.has(applet) {
                a.parents(applet)?;
                a.w.symlink(applet, "/bin/busybox").map_err(cpio_err)?;
                a.seen.insert(applet.clone());
            }
        }
        a.file("etc/passwd", 0o644, GUEST_PASSWD.as_bytes())?;
        a.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
        let mut order = String::new();
        for m in &mods {
            let data = std::fs::read(&m.path).map_err(Error::io(&m.path))?;
            a.file(&format!("lib/modules/rig/{}.ko", m.name), 0o644, &data)?;
            order.push_str(&m.name);
            order.push('\n');
        }
        a.file("rig/modules", 0o644, order.as_bytes())?;
        if let InitMode::RunScript(script) = &self.mode {
            a.file("rig/script.sh", 0o755, script.as_bytes())?;
        }
        for (guest_path, mode, source) in &self.files {
            let data = match source {
                Source::Bytes(b) => b.clone(),
                Source::Host(p) => std::fs::read(p).map_err(Error::io(p))?,
            };
            a.file(guest_path, *mode, &data)?;
        }
        a.file("init", 0o755, self.init_script().as_bytes())?;
        a.w.finish().map_err(cpio_err)
    }

    /// The generated `/init`.
    pub fn init_script(&self) -> String {
        let tag = shell_quote(&self.tag);
        let mut s = String::from(
            "#!/bin/sh\n\
             # /init generated by testrig::initramfs\n\
             export PATH=/sbin:/bin:/usr/sbin:/usr/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             mount -t tmpfs tmpfs /tmp\n",
        );
        s.push_str(&format!(
            "fail() {{ echo \"{ERROR_PREFIX} $*\"; sync; poweroff -f; }}\n\
             while read -r m; do\n\
             \x20   insmod /lib/modules/rig/$m.ko || fail \"insmod $m\"\n\
             done < /rig/modules\n"
        ));
        match &self.mode {
            InitMode::RunScript(_) => {
                let mnt = shell_quote(&self.mount_point);
                s.push_str(&format!(
                    "mkdir -p {mnt}\n\
                     mount -t virtiofs {tag} {mnt} || fail \"mount -t virtiofs {tag} {mnt}\"\n\
                     # Keep kernel messages from interleaving with the script output.\n\
                     echo 1 > /proc/sys/kernel/printk\n\
                     echo '{BEGIN_MARKER}'\n\
                     (cd {mnt} && exec sh /rig/script.sh) </dev/null 2>&1\n\
                     echo \"{END_PREFIX}$?@@\"\n\
                     sync\n\
                     umount {mnt} || echo \"{ERROR_PREFIX} umount {mnt}\"\n\
                     poweroff -f\n"
                ));
            }
            InitMode::SwitchRoot(init) => {
                let init = shell_quote(init);
                s.push_str(&format!(
                    "mount -t virtiofs {tag} /newroot || fail \"mount -t virtiofs {tag} /newroot\"\n\
                     [ -e /newroot{init} ] || fail \"no {init} on the share\"\n\
                     umount /tmp /sys /proc\n\
                     umount /dev\n\
                     exec switch_root /newroot {init}\n\
                     fail \"switch_root\"\n"
                ));
            }
        }
        s
    }
}

/// Lists `busybox --list-full` (paths like `usr/bin/md5sum`), without the
/// `init`/`linuxrc` applets that would shadow the rig's own init.
pub fn applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| Error::Spawn {
            program: busybox.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Missing {
            what: "busybox with --list-full".into(),
            path: busybox.to_path_buf(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !matches!(l.rsplit('/').next(), Some("init" | "linuxrc")))
        .map(str::to_string)
        .collect())
}

/// How many cached images to keep: each distinct script makes a new one
/// (a few MiB), so the least recently used beyond this are removed.
pub const KEEP_IMAGES: usize = 64;

/// Removes the least recently used `*.cpio` images beyond `keep`, never
/// `current`. Best effort: another process may be pruning at the same time.
fn prune(dir: &Path, keep: usize, current: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpio") && p != current)
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    if images.len() < keep {
        return;
    }
    images.sort();
    let excess = images.len() + 1 - keep;
    for (_, p) in images.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
}

/// Single-quotes a word for `sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn cpio_err(source: std::io::Error) -> Error {
    Error::Io {
        path: PathBuf::from("<initramfs archive>"),
        source,
    }
}

/// The archive under construction, remembering which directories exist (the
/// kernel's unpacker does not create missing parents).
struct Archive {
    w: CpioWriter<Vec<u8>>,
    seen: BTreeSet<String>,
}

impl Archive {
    fn new() -> Self {
        Archive {
            w: CpioWriter::new(Vec::new()),
            seen: BTreeSet::new(),
        }
    }

    fn has(&self, path: &str) -> bool {
        self.seen.contains(path)
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.seen.insert(prefix.clone()) {
                self.w.dir(&prefix, 0o755).map_err(cpio_err)?;
            }
        }
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        self.parents(path)?;
        let path = path.trim_matches('/').to_string();
        if self.seen.insert(path.clone()) {
            let perm = if path == "tmp" { 0o1777 } else { 0o755 };
            self.w.dir(&path, perm).map_err(cpio_err)?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let path = path.trim_start_matches('/');
        self.parents(path)?;
        self.seen.insert(path.to_string());
        self.w.file(path, mode, data).map_err(cpio_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_most_recent_and_the_current_image() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for i in 0..5u64 {
            let p = dir.path().join(format!("{i}.cpio"));
            let f = std::fs::File::create(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i))
                .unwrap();
        }
        std::fs::write(dir.path().join("other.txt"), "").unwrap();
        // "0" is the oldest but is the image just built: it stays.
        prune(dir.path(), 3, &dir.path().join("0.cpio"));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["0.cpio", "3.cpio", "4.cpio", "other.txt"]);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    #[test]
    fn init_runs_script_between_markers() {
        let init = InitramfsBuilder::run_script("share", "echo hi").init_script();
        let begin = init.find(BEGIN_MARKER).unwrap();
        let run = init.find("sh /rig/script.sh").unwrap();
        let end = init.find(END_PREFIX).unwrap();
        assert!(begin < run && run < end);
        assert!(init.contains("mount -t virtiofs 'share' '/mnt'"));
    }

    #[test]
    fn switch_root_init_execs_the_share_init() {
        let init = InitramfsBuilder::switch_root("rootfs").init_script();
        assert!(init.contains("exec switch_root /newroot '/sbin/init'"));
        assert!(!init.contains(BEGIN_MARKER));
    }
}

//! A private libvirt for tests: Debian 12's libvirtd and virtlogd (9.0),
//! started by hand (these machines run no systemd) inside a mount namespace
//! of their own. Their configuration, state, logs and sockets are bind
//! mounts of a temporary directory over `/etc/libvirt`, `/run/libvirt`,
//! `/var/lib/libvirt`, `/var/log/libvirt` and `/var/cache/libvirt`, so a
//! test neither uses nor changes the host's libvirt, and leaves nothing
//! behind. `virsh` reaches the daemon from outside through its socket in
//! that directory.
//!
//! `qemu.conf` runs QEMU and the virtio-fs daemon as root with no security
//! driver (the test's files are root's; SELinux and AppArmor are not what
//! is tested). libvirtd still looks up its compiled-in user and group
//! (`libvirt-qemu`, `kvm`) at start; `scripts/install-deps.sh` creates them
//! when the Debian packages did not (they do so only with systemd).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::wait_for;

/// The directories of libvirt's that get a private copy.
const PRIVATE: &[(&str, &str)] = &[
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

const QEMU_CONF: &str = "user = \"root\"\n\
group = \"root\"\n\
security_driver = \"none\"\n\
dynamic_ownership = 0\n";

/// Programs a private libvirt needs.
pub const PROGRAMS: &[&str] = &["libvirtd", "virtlogd", "virsh", "unshare"];

/// A running private libvirtd (and its virtlogd); stopped, with every
/// domain destroyed, on drop.
pub struct Libvirt {
    dir: PathBuf,
    child: Child,
    uri: String,
}

impl Libvirt {
    /// Starts libvirtd and virtlogd with their state under `dir` and waits
    /// (up to a minute) until `virsh` gets an answer.
    pub fn start(dir: &Path) -> Result<Libvirt, String> {
        for (sub, _) in PRIVATE {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.join(sub).display()))?;
        }
        // The packaged configuration, then ours.
        if Path::new("/etc/libvirt").is_dir() {
            let status = Command::new("cp")
                .arg("-a")
                .arg("/etc/libvirt/.")
                .arg(dir.join("etc"))
                .status()
                .map_err(|e| format!("cp: {e}"))?;
            if !status.success() {
                return Err("copying /etc/libvirt failed".into());
            }
        }
        std::fs::write(dir.join("etc/qemu.conf"), QEMU_CONF)
            .map_err(|e| format!("qemu.conf: {e}"))?;
        let mut script = String::from("set -e\n");
        for (sub, target) in PRIVATE {
            script.push_str(&format!(
                "mkdir -p {target}\nmount --bind '{}' {target}\n",
                dir.join(sub).display()
            ));
        }
        script.push_str(&format!(
            "virtlogd >'{log}/virtlogd.out' 2>&1 &\n\
             exec libvirtd >'{log}/libvirtd.out' 2>&1\n",
            log = dir.display()
        ));
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(&script)
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("unshare: {e}"))?
        };
        let uri = format!(
            "qemu:///system?socket={}",
            dir.join("run/libvirt-sock").display()
        );
        let mut lv = Libvirt {
            dir: dir.to_path_buf(),
            child,
            uri,
        };
        let up = wait_for(Duration::from_secs(60), || {
            lv.child.try_wait().ok().flatten().is_none() && lv.virsh(&["version"]).is_ok()
        });
        if !up {
            return Err(format!(
                "libvirtd did not answer within 60 s:\n{}",
                lv.log_tail()
            ));
        }
        Ok(lv)
    }

    /// The URI `virsh -c` connects with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `virsh -c URI ARGS`; its standard output, or an error with both
    /// outputs.
    pub fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("virsh: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "virsh {}: {}{stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A domain's state as `virsh domstate` says it (`running`, `shut off`).
    pub fn state(&self, domain: &str) -> String {
        self.virsh(&["domstate", domain])
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| e)
    }

    /// Where libvirt writes its per-domain logs (QEMU's and the virtio-fs
    /// daemon's: `qemu/<domain>.log`, `qemu/<domain>-fs0-virtiofsd.log`).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The last lines of libvirtd's own output and of the domain logs.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        let mut files = vec![self.dir.join("libvirtd.out")];
        if let Ok(rd) = std::fs::read_dir(self.dir.join("log/qemu")) {
            files.extend(rd.flatten().map(|e| e.path()));
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {} ---\n", f.display()));
            for l in &lines[lines.len().saturating_sub(15)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if let Ok(list) = self.virsh(&["list", "--name"]) {
            for d in list.lines().filter(|l| !l.trim().is_empty()) {
                let _ = self.virsh(&["destroy", d.trim()]);
            }
        }
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) with a negative pid signals the process group the
        // daemons were started in; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let _ = wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

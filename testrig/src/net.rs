//! Networking for test guests without root or a tap device: passt (user-mode
//! networking) as a daemon, and a `virtio-net-pci` device on QEMU's
//! `-netdev stream` Unix socket (QEMU ≥ 7.2: each frame preceded by its
//! 4-byte big-endian length), connected to passt directly or to a filter in
//! between. passt maps the gateway address it announces to the host's
//! loopback, so a guest reaches a test server on 127.0.0.1 through the
//! gateway, and nothing leaves the machine.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::daemon::DaemonSpec;
use crate::qemu::QemuConfig;

/// The modules a guest needs for `virtio-net-pci` (dependencies are
/// resolved by the rig).
pub const NET_MODULES: &[&str] = &["virtio_net"];

/// passt: `$FSD_PASST`, else `passt` on `PATH`.
pub fn passt_program() -> PathBuf {
    std::env::var_os("FSD_PASST")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("passt"))
}

/// The guest side of one passt instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNet {
    /// The guest's address.
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The gateway passt announces; it stands for the host's loopback.
    pub gateway: Ipv4Addr,
}

impl GuestNet {
    /// One shell command line that brings `iface` up with this address
    /// and route (the guest configures itself statically; no DHCP client
    /// needed).
    pub fn guest_setup(&self, iface: &str, default_route: bool) -> String {
        let mut s = format!(
            "ip link set {iface} up && ip addr add {}/{} dev {iface}",
            self.address, self.prefix
        );
        if default_route {
            s.push_str(&format!(
                " && ip route add default via {} dev {iface}",
                self.gateway
            ));
        }
        s
    }
}

/// A directory for passt's socket under `parent`: started as root, passt
/// runs as nobody before it binds, so the directory must be reachable and
/// writable for everyone (`parent` is opened for traversal, the directory
/// gets the sticky mode of /tmp).
pub fn socket_dir(parent: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join("passt");
    std::fs::create_dir_all(&dir)?;
    let mode = std::fs::metadata(parent)?.permissions().mode();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
    Ok(dir)
}

/// `passt` in the foreground on `socket` (in a [`socket_dir`]), handing
/// out `net`, logging to `log`; start it with `Daemon::spawn_on_path`.
pub fn passt_spec(socket: &Path, net: &GuestNet, log: impl Into<PathBuf>) -> DaemonSpec {
    let args: Vec<OsString> = vec![
        "--foreground".into(),
        "--stderr".into(),
        "--socket".into(),
        socket.into(),
        "--address".into(),
        net.address.to_string().into(),
        "--netmask".into(),
        net.prefix.to_string().into(),
        "--gateway".into(),
        net.gateway.to_string().into(),
        // No DNS servers or search list of the host's handed to the guest.
        "--no-dhcp-dns".into(),
        "--no-dhcp-search".into(),
    ];
    DaemonSpec::new(passt_program(), args, log)
}

/// Adds a `virtio-net-pci` device with MAC `mac` whose back end is the
/// stream socket `socket` (QEMU connects to it).
pub fn add_nic(cfg: &mut QemuConfig, id: &str, socket: &Path, mac: &str) {
    for a in [
        "-netdev".to_string(),
        format!(
            "stream,id={id},server=off,addr.type=unix,addr.path={}",
            socket.display()
        ),
        "-device".to_string(),
        format!("virtio-net-pci,netdev={id},mac={mac}"),
    ] {
        cfg.extra_args.push(a.into());
    }
}

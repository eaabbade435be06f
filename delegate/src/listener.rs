//! The sockets QEMU connects to: one per user VM and one per helper VM.
//!
//! Each VM's QEMU has a `virtserialport` on a socket chardev in client
//! mode with `reconnect=1`, pointed at the broker's socket for that VM, so
//! the socket a connection arrives on *is* the VM's identity, and a
//! restarted broker is found again within a second. Sockets are mode 0600
//! (root's QEMU), or 0770 for `--socket-group` (QEMU under libvirt runs as
//! `libvirt-qemu`); they are created as fsd creates its own.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use crate::error::StartError;
use crate::helper::HelperLink;
use crate::session::{serve_vm, Broker};

/// Binds `path`, replacing a stale socket (never another kind of file).
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, StartError> {
    let l = fsd::socket::bind(path, group).map_err(|e| StartError::Config(e.to_string()))?;
    if group.is_none() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StartError::Io {
                what: "chmod",
                path: path.display().to_string(),
                source,
            },
        )?;
    }
    Ok(l)
}

/// Serves a user VM's socket: one connection at a time (QEMU makes one).
pub fn user_vm(broker: Arc<Broker>, vm: String, listener: UnixListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => serve_vm(&broker, &vm, s),
            Err(e) => log::warn!("vm {vm}: accept: {e}"),
        }
    }
}

/// Serves a helper VM's socket: the newest connection is the helper's.
pub fn helper_vm(link: Arc<HelperLink>, listener: UnixListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                if let Err(e) = link.attach(s) {
                    log::warn!("helper {}: {e}", link.name);
                }
            }
            Err(e) => log::warn!("helper {}: accept: {e}", link.name),
        }
    }
}

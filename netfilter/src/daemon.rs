//! Sockets and threads: the guest side (QEMU's `-netdev stream` connects to
//! the filter's listening socket), the host side (the filter connects to
//! passt's socket), one thread per direction, and the control socket.
//!
//! The egress thread reads a batch, decides and writes what passes to
//! passt in one write; the ingress thread passes passt's frames back by the
//! table. When either side hangs up, both connections are closed and the
//! filter waits for QEMU to connect again.

use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::ask::Asker;
use crate::audit::Audit;
use crate::engine::{self, Egress, Output, Shared};
use crate::error::{Error, Result};
use crate::frame::{self, FrameReader};
use crate::owner::OwnerSource;
use crate::taint::TaintOracle;

/// Where the filter's sockets are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The filter listens here; QEMU connects (`server=off`).
    pub guest: PathBuf,
    /// passt's socket, connected to for each guest connection.
    pub passt: PathBuf,
    /// Status and switches, when given.
    pub control: Option<PathBuf>,
}

/// Binds a Unix socket, replacing a stale socket file.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|e| Error::io(format!("bind {}", path.display()), e))
}

/// Runs the filter until the guest listener fails.
pub fn run(
    ends: &Endpoints,
    shared: Arc<Shared>,
    owners: Box<dyn OwnerSource>,
    taint: Box<dyn TaintOracle>,
    asker: Box<dyn Asker>,
    audit: Audit,
) -> Result<()> {
    let guest_listener = bind(&ends.guest)?;
    if let Some(ctl) = &ends.control {
        let listener = bind(ctl)?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("netfilter-control".into())
            .spawn(move || crate::control::serve(listener, s))
            .map_err(|source| Error::ThreadSpawn {
                what: "serve the control socket",
                source,
            })?;
    }
    let mut egress = Egress::new(shared.clone(), owners, taint, asker, audit);
    log::info!("waiting for QEMU on {}", ends.guest.display());
    for conn in guest_listener.incoming() {
        let guest = conn.map_err(|e| Error::io("accept QEMU", e))?;
        shared.stats.add(&shared.stats.c.connections, 1);
        match serve_guest(guest, &ends.passt, &shared, &mut egress) {
            Ok(()) => log::info!("guest connection ended"),
            Err(e) => log::warn!("guest connection ended: {e}"),
        }
        shared.table().clear();
    }
    Ok(())
}

/// Carries one guest connection until either side hangs up.
fn serve_guest(
    guest: UnixStream,
    passt: &Path,
    shared: &Arc<Shared>,
    egress: &mut Egress,
) -> Result<()> {
    let host = UnixStream::connect(passt)
        .map_err(|e| Error::io(format!("connect to passt at {}", passt.display()), e))?;
    let guest_writer = Arc::new(Mutex::new(
        guest
            .try_clone()
            .map_err(|e| Error::io("clone guest socket", e))?,
    ));
    let ingress = {
        let shared = shared.clone();
        let mut host_reader = host
            .try_clone()
            .map_err(|e| Error::io("clone passt socket", e))?;
        let guest_writer = guest_writer.clone();
        let guest_end = guest
            .try_clone()
            .map_err(|e| Error::io("clone guest socket", e))?;
        std::thread::Builder::new()
            .name("netfilter-in".into())
            .spawn(move || {
                let mut reader = FrameReader::new(true);
                let mut out = Vec::new();
                let r = loop {
                    match reader.read_batch(&mut host_reader) {
                        Ok(Some(frames)) => {
                            out.clear();
                            engine::ingress(&shared, &frames, &mut out);
                            let mut w = guest_writer.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = frame::write_all(&mut *w, &out) {
                                break Err(e);
                            }
                        }
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                // Wake the egress side, which may be blocked reading the guest.
                let _ = guest_end.shutdown(Shutdown::Both);
                r
            })
            .map_err(|source| Error::ThreadSpawn {
                what: "carry frames to the guest",
                source,
            })?
    };
    let mut guest_reader = guest;
    let mut host_writer = host
        .try_clone()
        .map_err(|e| Error::io("clone passt socket", e))?;
    let mut reader = FrameReader::new(shared.switches.batching());
    let mut out = Output::default();
    let r = loop {
        reader.set_batching(shared.switches.batching());
        match reader.read_batch(&mut guest_reader) {
            Ok(Some(frames)) => {
                out.clear();
                egress.process(&frames, &mut out);
                if let Err(e) = frame::write_all(&mut host_writer, &out.to_host) {
                    break Err(e);
                }
                if !out.to_guest.is_empty() {
                    let mut w = guest_writer.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = frame::write_all(&mut *w, &out.to_guest) {
                        break Err(e);
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = host.shutdown(Shutdown::Both);
    let _ = guest_reader.shutdown(Shutdown::Both);
    match ingress.join() {
        Ok(Err(e)) => log::debug!("host side: {e}"),
        Err(_) => log::error!("the ingress thread panicked"),
        Ok(Ok(())) => {}
    }
    r
}

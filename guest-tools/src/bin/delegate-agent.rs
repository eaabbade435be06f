//! `delegate-agent`: the job agent of a helper VM (docs/delegation.md).
//!
//! ```text
//! delegate-agent [--root DIR] [--port DEVICE]
//! ```
//! `--root` is the helper's root as the agent sees it (jobs are chrooted
//! there; `/` when the share is the guest's root), `--port` the
//! virtio-serial port (default `/dev/virtio-ports/org.fsd.delegate.agent`).
//! Runs until killed.

use guest_tools::delegate::agent::{serve, Options};

fn main() {
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => opts.root = args.next().unwrap_or_default(),
            "--port" => opts.port = args.next().unwrap_or_default(),
            _ => {
                eprintln!("usage: delegate-agent [--root DIR] [--port DEVICE]");
                std::process::exit(64);
            }
        }
    }
    if let Err(e) = serve(&opts) {
        eprintln!("delegate-agent: {e}");
        std::process::exit(1);
    }
}

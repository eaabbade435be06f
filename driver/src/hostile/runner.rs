//! Running the battery: one case against a fresh daemon on the standard
//! share, the probe that tells what state the attack left the daemon in,
//! and the Markdown table that compares daemons (`fsdrive hostile`).

use std::fmt::Write as _;
use std::path::Path;

use super::sizes::FD_FILES;
use super::{cases, After, Case, CaseResult, Ctx, Finding, PROBE_WAIT};
use crate::daemon::DaemonKind;
use crate::error::{Error, Result};
use crate::fuse::ROOT_ID;
use crate::harness::{Harness, HarnessOptions, Unavailable};
use crate::session::Session;

/// The standard share: a file, a directory with a file, many small files.
pub fn populate(share: &Path) -> std::io::Result<()> {
    std::fs::write(share.join("a.txt"), vec![b'a'; 10_000])?;
    std::fs::create_dir(share.join("d"))?;
    std::fs::write(share.join("d").join("x"), b"x")?;
    std::fs::create_dir(share.join("many"))?;
    for i in 0..FD_FILES {
        std::fs::write(share.join("many").join(format!("f{i}")), b"")?;
    }
    Ok(())
}

/// Runs one case against a fresh `kind` daemon.
pub fn run_case(kind: DaemonKind, case: &Case) -> Result<CaseResult> {
    let opts = HarnessOptions {
        rlimit_nofile: case.rlimit_nofile,
        ..Default::default()
    };
    let mut h = Harness::start(kind, &opts, populate)?;
    Session::new(h.device.queue(1)?).init()?;
    let finding = match (case.run)(&mut Ctx { h: &mut h }) {
        Ok(f) => f,
        Err(e) => Finding {
            observed: format!("driver error: {e}"),
            ok: false,
        },
    };
    let after = probe(&mut h);
    let escaped = h.escaped();
    if after != After::Answers {
        log::warn!(
            "{} after {}: {after}; daemon log:\n{}",
            kind.name(),
            case.name,
            h.daemon.log_tail()
        );
    }
    let after_ok = match after {
        After::Answers => true,
        After::HiprioOnly | After::Exited(_) => case.ring,
        After::Silent | After::Crashed(_) | After::RootLost(_) => false,
    };
    Ok(CaseResult {
        name: case.name,
        pass: finding.ok && after_ok && escaped.is_empty(),
        finding,
        after,
        escaped,
    })
}

/// Is the daemon alive and answering? GETATTR on queue 1, then on hiprio.
fn probe(h: &mut Harness) -> After {
    for q in [1usize, 0] {
        if let Some(a) = dead(h) {
            return a;
        }
        let Ok(queue) = h.device.queue(q) else {
            continue;
        };
        // Chains the daemon dropped would otherwise hold their buffers.
        queue.abandon_in_flight();
        let mut s = Session::new(queue);
        s.timeout = PROBE_WAIT;
        match s.getattr(ROOT_ID) {
            Ok(_) if q == 1 => return After::Answers,
            Ok(_) => return After::HiprioOnly,
            Err(Error::Fuse { errno, .. }) => return After::RootLost(errno),
            Err(_) => {}
        }
    }
    dead(h).unwrap_or(After::Silent)
}

fn dead(h: &mut Harness) -> Option<After> {
    use std::os::unix::process::ExitStatusExt;
    h.daemon.status().map(|st| match st.signal() {
        Some(sig) => After::Crashed(sig),
        None => After::Exited(st.code().unwrap_or(-1)),
    })
}

/// Runs the battery against each daemon and renders a Markdown table.
pub fn compare(kinds: &[DaemonKind], filter: Option<&str>) -> Result<String> {
    let mut avail = Vec::new();
    for &k in kinds {
        match Harness::available(k) {
            Ok(_) => avail.push(k),
            Err(Unavailable::Skip(m) | Unavailable::Fail(m)) => {
                eprintln!("skipping {}: {m}", k.name())
            }
        }
    }
    let mut t = String::new();
    let _ = write!(t, "| case | attack |");
    for k in &avail {
        let _ = write!(t, " {} |", k.name());
    }
    let _ = write!(t, "\n|---|---|");
    for _ in &avail {
        let _ = write!(t, "---|");
    }
    t.push('\n');
    for case in cases() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let _ = write!(t, "| {} | {} |", case.name, case.attack);
        for &k in &avail {
            let cell = match run_case(k, &case) {
                Ok(r) => r.cell(),
                Err(e) => format!("**FAIL** harness: {e}"),
            };
            let _ = write!(t, " {} |", cell.replace('|', "\\|"));
        }
        t.push('\n');
    }
    Ok(t)
}

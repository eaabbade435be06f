//! The hostile-guest battery (see `driver::hostile`) against fsd, where
//! every case must pass, and against virtiofsd, where it documents the
//! reference daemon's behaviour and checks that the harness itself works.

mod common;

use driver::hostile::{cases, run_case};
use driver::DaemonKind;

fn run_all(kind: DaemonKind) -> Vec<driver::hostile::CaseResult> {
    let filter = std::env::var("HOSTILE_FILTER").ok();
    let mut out = Vec::new();
    for case in cases() {
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let r = run_case(kind, &case)
            .unwrap_or_else(|e| panic!("{}: harness failed on {}: {e}", kind.name(), case.name));
        println!("{:<26} {}", r.name, r.cell());
        out.push(r);
    }
    out
}

#[test]
fn fsd_survives_every_hostile_request() {
    if !driver::Harness::require(DaemonKind::Fsd) {
        return;
    }
    let failed: Vec<String> = run_all(DaemonKind::Fsd)
        .into_iter()
        .filter(|r| !r.pass)
        .map(|r| format!("{}: {}", r.name, r.cell()))
        .collect();
    assert!(failed.is_empty(), "fsd failed:\n{}", failed.join("\n"));
}

#[test]
fn battery_runs_against_virtiofsd() {
    if !driver::Harness::require(DaemonKind::Virtiofsd) {
        return;
    }
    let results = run_all(DaemonKind::Virtiofsd);
    assert_eq!(results.len(), cases().len().min(results.len()));
    // The reference daemon's own weaknesses are documented, not asserted;
    // what must hold is that the driver could deliver every attack.
    let broken: Vec<String> = results
        .iter()
        .filter(|r| r.finding.observed.starts_with("driver error"))
        .map(|r| format!("{}: {}", r.name, r.finding.observed))
        .collect();
    assert!(broken.is_empty(), "driver failures:\n{}", broken.join("\n"));
    // Cases every daemon must get right, or the battery is not measuring
    // anything: an unknown opcode is ENOSYS, a 4096-byte name is refused.
    for name in ["unknown-opcode", "name-4096", "unknown-nodeid"] {
        let r = results.iter().find(|r| r.name == name).expect("case ran");
        assert!(r.pass, "{name}: {}", r.cell());
    }
}

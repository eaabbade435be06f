//! Measurements for docs/authd.md ("Measured"). Ignored by default; run with
//! `cargo test --release -p authd --test measure -- --ignored --nocapture`.
//! Prints medians; asserts nothing about time.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use authd::config::PromptRateConfig;
use authd_client::client::AuthRequest;
use common::{median, Daemon, PASSWORD};

const RUNS: usize = 31;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "measurement; run explicitly with --release"]
fn argon2_verify_time() {
    let phc = authd::password::hash(PASSWORD.as_bytes()).unwrap();
    let mut ms = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        assert!(authd::password::verify(PASSWORD.as_bytes(), &phc).unwrap());
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "argon2id verify (m=19456 KiB, t=2, p=1): median {:.1} ms over {RUNS} runs (min {:.1}, max {:.1}; load average {})",
        median(&mut ms.clone()),
        ms.iter().cloned().fold(f64::INFINITY, f64::min),
        ms.iter().cloned().fold(0.0, f64::max),
        loadavg()
    );
}

#[test]
#[ignore = "measurement; run explicitly with --release"]
fn prompt_to_window_latency() {
    let Some(x) = common::xvfb("prompt_to_window_latency") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Daemon::config(tmp.path());
    cfg.display = Some(x.display.clone());
    cfg.prompt_rate = PromptRateConfig {
        max_prompts: 1000,
        window_secs: 60,
    };
    let d = Daemon::start(tmp.path(), cfg);
    d.enroll("alice", PASSWORD);

    let mut client_ms = Vec::new();
    for _ in 0..RUNS {
        let c = d.client();
        let req = AuthRequest {
            vm: "vm-bench".into(),
            principal: "alice".into(),
            reason: common::reason(),
            lifetime: Duration::from_secs(60),
        };
        let t = Instant::now();
        let h = thread::spawn(move || c.authenticate(&req, Duration::from_secs(60)));
        let win = x.wait_dialog(Duration::from_secs(30)).expect("dialog");
        client_ms.push(t.elapsed().as_secs_f64() * 1e3);
        x.focus(&win);
        x.key("Escape");
        h.join().unwrap();
        assert!(common::wait_for(Duration::from_secs(10), || x
            .dialogs()
            .is_empty()));
    }
    let mut shown: Vec<f64> = d
        .audit("prompt_shown")
        .iter()
        .map(|r| r["latency_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(shown.len(), RUNS);
    println!(
        "prompt to first frame on screen (daemon: spawn authd-dialog .. first present): median {:.1} ms over {RUNS}",
        median(&mut shown)
    );
    println!(
        "request to window found by xdotool (client side, includes ~20 ms polling): median {:.1} ms over {RUNS}; load average {}",
        median(&mut client_ms),
        loadavg()
    );
}

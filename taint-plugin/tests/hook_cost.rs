//! What a hook costs the guest, timed inside the guest: the same loop of
//! getpid, read, write, fork, sendto and recvfrom (`hookprobe cost`) under
//! QEMU 10 without the plugin, with the plugin loaded and hooking only a
//! function the loop never calls, and with a hook on each call's path.
//! Prints a table (µs per call, added µs, ratios); never asserts a time.
//!
//! Two guests run side by side (one without the plugin, one with it) and
//! take turns, run after run, so that load from elsewhere on the machine
//! falls on all three configurations alike; the medians are shown. Each
//! arming flushes QEMU's translations, so a short warm-up run (not timed)
//! follows it. Not part of the default run:
//!
//! ```text
//! cargo test --release -p taint-plugin --test hook_cost -- --ignored --nocapture
//! ```
//! `HOOK_COST_N` (default 20000) calls per operation, `HOOK_COST_FORKS`
//! (300) forks, `HOOK_COST_REPS` (5) runs per configuration;
//! `scripts/bench-smoke.sh` runs it with tiny counts.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use monitor::hooks::{self, Message, PluginLink, PluginStats, Reply};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The hooked function on each operation's path (fork also ends in the
/// child's `do_exit`).
const ON_PATH: &[(&str, &[&str])] = &[
    ("getpid", &["__x64_sys_getpid"]),
    ("read", &[hooks::VFS_READ]),
    ("write", &[hooks::VFS_WRITE]),
    ("fork", &[hooks::FORK, hooks::EXIT]),
    ("sendto", &[hooks::SEND]),
    ("recvfrom", &[hooks::RECV]),
];

/// The guest side: runs what the control port says, between markers.
fn script(n: u64, forks: u64) -> String {
    format!(
        r#"
while read -r cmd tag <&3; do
  case "$cmd" in
    warm) hookprobe cost {wn} {wf} >/dev/null; echo "WARM-DONE $tag" ;;
    run) echo "RUN-BEGIN $tag"; hookprobe cost {n} {forks}; echo "RUN-END $tag" ;;
    *) break ;;
  esac
done
echo COST-DONE
"#,
        wn = (n / 10).max(100),
        wf = (forks / 10).max(5)
    )
}

/// `op -> ns per call` of the run tagged `tag`.
fn run_costs(console: &str, tag: &str) -> BTreeMap<String, f64> {
    let begin = format!("RUN-BEGIN {tag}");
    let end = format!("RUN-END {tag}");
    let mut inside = false;
    let mut out = BTreeMap::new();
    for line in console.lines().map(str::trim) {
        if line == begin {
            inside = true;
        } else if line == end {
            break;
        } else if inside {
            let f = common::fields(line);
            if let (Some(op), Some(ns)) = (f.get("op"), f.get("ns_per_op")) {
                out.insert(op.clone(), ns.parse().unwrap());
            }
        }
    }
    assert_eq!(out.len(), ON_PATH.len(), "run {tag}: {out:?}");
    out
}

/// Reads plugin lines (counting events, not parsing them, so this reader
/// keeps up with the guest) until `stop` holds while the socket is quiet,
/// or the plugin says `bye`.
fn pump(
    link: &mut PluginLink,
    events: &mut u64,
    mut stop: impl FnMut() -> bool,
) -> Option<PluginStats> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        assert!(Instant::now() < deadline, "the guest did not finish");
        match link.next_line(Duration::from_millis(50)) {
            Ok(Some(line)) if line.starts_with("{\"ev\"") => *events += 1,
            Ok(Some(line)) => {
                if let Ok(Message::Reply(Reply::Bye(s))) = Message::parse(&line) {
                    return Some(s);
                }
            }
            Ok(None) if stop() => return None,
            Ok(None) => {}
            Err(hooks::LinkError::Closed) => return None,
            Err(e) => panic!("plugin link: {e}"),
        }
    }
}

/// Sends `cmd tag` and waits for `marker tag`, reading the plugin's events
/// meanwhile when there is a link.
fn turn(g: &mut common::Guest, link: Option<(&mut PluginLink, &mut u64)>, cmd: &str, tag: &str) {
    let marker = format!(
        "{} {tag}",
        if cmd == "run" { "RUN-END" } else { "WARM-DONE" }
    );
    g.send(&format!("{cmd} {tag}"));
    match link {
        Some((link, events)) => {
            pump(link, events, || g.vm.console().contains(&marker));
        }
        None => assert!(
            g.vm.wait_for_console(&marker, Duration::from_secs(1800)),
            "no {marker}:\n{}",
            g.vm.console()
        ),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore = "two guest boots; run with --ignored (scripts/bench-smoke.sh does, with tiny counts)"]
fn hook_cost_in_the_guest() {
    let n = env_or("HOOK_COST_N", 20_000);
    let forks = env_or("HOOK_COST_FORKS", 300);
    let reps = env_or("HOOK_COST_REPS", 5);
    // Prerequisites first, so a machine without QEMU 10 skips before the
    // plugin is built.
    if common::require().is_none() {
        return;
    }
    let Some(so) = common::plugin() else { return };
    let script = script(n, forks);
    let Some(mut bare) = common::boot(&script, None, &[]) else {
        return;
    };
    // A ring large enough for a whole run, should this reader fall behind
    // (a full ring drops events; it never slows the guest).
    let ring = [("ring".to_string(), "65536".to_string())];
    let Some(mut plug) = common::boot(&script, Some(&so), &ring) else {
        return;
    };
    let mut link =
        PluginLink::connect(plug.plugin_sock.as_ref().unwrap(), Duration::from_secs(30)).unwrap();
    bare.wait_ready();
    plug.wait_ready();

    // "loaded": a table whose only hook the loop never reaches.
    let (slide, idle) = plug.plan(&[hooks::EXEC]);
    let on_path: Vec<&str> = ON_PATH
        .iter()
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    let (_, hooked) = plug.plan(&on_path);
    let mut events = 0u64;

    turn(&mut bare, None, "warm", "w0");
    let mut figures: BTreeMap<(&'static str, &'static str), Vec<f64>> = BTreeMap::new();
    let mut hooked_events = 0;
    let mut hooked_time = Duration::ZERO;
    for r in 0..reps {
        let tag = format!("b{r}");
        turn(&mut bare, None, "run", &tag);
        for (op, ns) in run_costs(&bare.vm.console(), &tag) {
            figures
                .entry(("no plugin", op_name(op)))
                .or_default()
                .push(ns);
        }
        for (config, plan) in [("loaded", &idle), ("hooked", &hooked)] {
            link.arm(plan, Duration::from_secs(60)).expect("arm");
            turn(
                &mut plug,
                Some((&mut link, &mut events)),
                "warm",
                &format!("w{config}{r}"),
            );
            let before = events;
            let tag = format!("{config}{r}");
            let t = Instant::now();
            turn(&mut plug, Some((&mut link, &mut events)), "run", &tag);
            if config == "hooked" {
                hooked_events += events - before;
                hooked_time += t.elapsed();
            }
            for (op, ns) in run_costs(&plug.vm.console(), &tag) {
                figures.entry((config, op_name(op))).or_default().push(ns);
            }
        }
    }
    bare.send("quit");
    plug.send("quit");
    let stats = pump(&mut link, &mut events, || false).expect("bye with the counters");

    println!(
        "\nhook cost in the guest (Debian 6.1, QEMU 10.0 TCG, KASLR slide {slide:#x}): \
         {n} calls per op ({forks} forks), median of {reps} interleaved runs, per call, measured in the guest"
    );
    println!(
        "{:<9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8}",
        "op", "no plugin", "loaded", "hooked", "+us loaded", "+us hooked", "x loaded", "x hooked"
    );
    for (op, _) in ON_PATH {
        let mut m = |c: &'static str| median(figures.get_mut(&(c, *op)).unwrap()) / 1e3;
        let (b, l, h) = (m("no plugin"), m("loaded"), m("hooked"));
        println!(
            "{:<9} {:>9.2}us {:>9.2}us {:>9.2}us {:>11.2} {:>11.2} {:>8.2} {:>8.2}",
            op,
            b,
            l,
            h,
            l - b,
            h - b,
            l / b,
            h / b
        );
    }
    let hooks_of: Vec<String> = ON_PATH
        .iter()
        .map(|(op, f)| format!("{op}: {}", f.join("+")))
        .collect();
    println!("hooks on the path: {}", hooks_of.join("; "));
    println!(
        "events: {hooked_events} in the hooked runs ({:.0} a second, read here as they came); \
         {} ns of host time per hook callback on average",
        hooked_events as f64 / hooked_time.as_secs_f64(),
        stats.ns_per_hit()
    );
    println!(
        "plugin counters at exit {stats:?}; load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

/// The six operation names, as `'static` keys.
fn op_name(op: String) -> &'static str {
    ON_PATH
        .iter()
        .map(|(o, _)| *o)
        .find(|o| *o == op)
        .unwrap_or_else(|| panic!("unknown operation {op}"))
}

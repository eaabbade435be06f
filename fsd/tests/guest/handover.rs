//! Live handover under a real guest: fsd is handed over 20 times (once to
//! another copy of the binary) while the guest works on the share, and the
//! guest must notice nothing. And crash recovery: fsd (`--crash-recovery`)
//! is killed with SIGKILL 10 times at random moments of the same load; the
//! guest loop goes on after each pause, and the only errors it may see are
//! those docs/rejuvenation.md lists (EIO for a request that changes the
//! tree and was in flight at the kill).
//!
//! The guest loop reads and checksums a file, writes, renames and reads back
//! files, reads the next line of a file it keeps open (so the open file's
//! offset must survive too), and checks that a flock and a POSIX lock held
//! by two guest processes since before the first handover still exclude
//! others; a file denied by the policy must stay denied. Beside it, a tight
//! loop of small requests (a LOOKUP and a READ each, `--cache=never` so
//! that every one reaches fsd) records the time after each, from which the
//! longest pause the guest saw comes. For comparison the test also reports
//! how long the guest took from power-on to the mounted share: what a
//! reboot and remount would cost instead.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{denying_policy, guest_tools, TAG};
use testrig::rejuvenation::{handed_over, recovered, serving_daemon};
use testrig::{
    require, rootfs, Daemon, DaemonSpec, InitramfsBuilder, Need, QemuConfig, Sandbox, Vm,
};

const HANDOVERS: usize = 20;
const KILLS: usize = 10;

/// What happens to fsd under the guest's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// SIGUSR2: a live handover.
    Handover,
    /// SIGKILL of the serving daemon, at a random moment.
    Crash,
}
/// The handover (1-based) that goes to another copy of the binary.
const TO_OTHER_BINARY: usize = 10;

const SCRIPT: &str = r#"
echo "MOUNTED"
expect=$(cat big.sha)
exec 3< held.txt
lockprobe --label F --until /tmp/release flock flk > /tmp/f.log &
lockprobe --label P --until /tmp/release posix plk > /tmp/p.log &
until grep -q '^F: locked' /tmp/f.log && grep -q '^P: locked' /tmp/p.log; do sleep 0.1; done
( while [ ! -e stop ]; do read x < small; read up rest < /proc/uptime; echo "$up"; done > /tmp/ticks ) &
echo "READY-FOR-HANDOVER"
i=0
errs=0
err() { echo "ERR $*"; errs=$((errs+1)); }
# A step that may fail: its tools' messages ride on its ERR line
# ("ERR what round: message"), so that the test can tell a listed error
# from one that follows from it in the same round.
step() { what=$1; shift; "$@" 2>/tmp/e || err "$what $i: $(head -c 200 /tmp/e | tr '\n' ' ')"; }
wr() { echo "round $i of the guest" > w.tmp; }
rb() { [ "$(cat w.$((i % 3)))" = "round $i of the guest" ]; }
pg() { echo "$i" > progress.tmp && mv progress.tmp progress; }
while [ ! -e stop ]; do
  i=$((i+1))
  read line <&3 || err "held file read $i:"
  [ "$line" = "line $i" ] || err "held file line $i: $line"
  sha=$(sha256sum big.bin | cut -d' ' -f1)
  [ "$sha" = "$expect" ] || err "checksum $i:"
  step write wr
  step rename mv w.tmp w.$((i % 3))
  step "read back" rb
  lockprobe --label B flock flk > /dev/null; [ $? = 1 ] || err "flock not held at $i:"
  lockprobe --label Q posix plk > /dev/null; [ $? = 1 ] || err "posix lock not held at $i:"
  cat secret > /dev/null 2>&1 && err "protected file readable at $i:"
  step progress pg
done
echo "rounds $i errors $errs"
wait_ticks=$(awk 'NR == 1 { f = $1 } NR > 1 { d = $1 - p; if (d > m) m = d } { p = $1; n++ } END { printf "%d %.2f %.3f", n, m, (p - f) / (n - 1) }' /tmp/ticks)
echo "ticks $wait_ticks"
touch /tmp/release
wait
cat /tmp/f.log /tmp/p.log
echo "held file still open: $(read l <&3 && echo yes)"
"#;

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

fn populate(share: &Path) {
    let big: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(share.join("big.bin"), &big).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(share.join("big.bin"))
        .output()
        .unwrap();
    let sha = String::from_utf8(out.stdout).unwrap();
    std::fs::write(
        share.join("big.sha"),
        format!("{}\n", sha.split_whitespace().next().unwrap()),
    )
    .unwrap();
    let held: String = (1..=100_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(share.join("held.txt"), held).unwrap();
    std::fs::write(share.join("small"), b"tiny\n").unwrap();
    std::fs::write(share.join("flk"), b"").unwrap();
    std::fs::write(share.join("plk"), b"").unwrap();
    std::fs::write(share.join("secret"), b"not for the guest\n").unwrap();
}

#[test]
fn guest_notices_nothing_of_twenty_handovers() {
    twenty_handovers(Sandbox::None, false);
}

/// The same with fsd confined as deployed (namespaces, pivot_root, seccomp).
#[test]
fn guest_notices_nothing_of_twenty_handovers_as_deployed() {
    twenty_handovers(Sandbox::Namespace, false);
}

/// The diskless deployment: the guest's root file system is on fsd (the
/// loop's files in `/data`), fsd confined as deployed.
#[test]
fn guest_with_its_root_on_fsd_notices_nothing_of_twenty_handovers() {
    twenty_handovers(Sandbox::Namespace, true);
}

/// The diskless deployment again, with fsd killed instead of handed over.
#[test]
fn guest_with_its_root_on_fsd_goes_on_after_ten_crashes() {
    under_load(Sandbox::Namespace, true, Event::Crash);
}

fn twenty_handovers(sandbox: Sandbox, root_on_fsd: bool) {
    under_load(sandbox, root_on_fsd, Event::Handover);
}

/// Error messages of the guest's tools that name an error the docs list
/// for a crash (a changing request in flight answers EIO).
fn listed_crash_error(line: &str) -> bool {
    line.contains("I/O error") || line.contains("Interrupted system call")
}

fn under_load(sandbox: Sandbox, root_on_fsd: bool, event: Event) {
    let Some(env) = require(&[Need::Busybox]) else {
        return;
    };
    let tools = guest_tools();
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    // What the loop works on: the share itself, or `/data` of a root on fsd.
    let data = if root_on_fsd {
        rootfs::populate_busybox_root(&share).unwrap();
        for (name, bin) in tools.binaries() {
            std::fs::copy(bin, share.join("bin").join(name)).unwrap();
        }
        rootfs::set_script(&share, &format!("cd /data\n{SCRIPT}")).unwrap();
        share.join("data")
    } else {
        share.clone()
    };
    std::fs::create_dir_all(&data).unwrap();
    populate(&data);
    // fsd runs from a copy, so that the test can put another binary there.
    let exe = dir.path().join("fsd");
    testrig::process::install_executable(Path::new(crate::common::FSD), &exe).unwrap();
    let policy = dir.path().join("policy.toml");
    let secret = if root_on_fsd { "data/secret" } else { "secret" };
    std::fs::write(&policy, denying_policy(&[secret])).unwrap();
    let socket = dir.path().join("fsd.sock");
    let log = dir.path().join("fsd.log");
    let mut extra = vec![
        format!("--policy={}", policy.display()),
        "--vm=vm1".to_string(),
        format!("--label-db={}", dir.path().join("labels.db").display()),
    ];
    if event == Event::Crash {
        extra.push("--crash-recovery".into());
    }
    let mut spec = DaemonSpec::fsd(&exe, &socket, &share, sandbox, &extra, &log);
    // Every request reaches fsd: the guest's tight loop then measures fsd.
    for a in spec.args.iter_mut() {
        if a == "--cache=auto" {
            *a = "--cache=never".into();
        }
    }
    let daemon = Daemon::spawn_on_path(&spec, &socket).unwrap_or_else(|e| panic!("{e}"));
    let builder = if root_on_fsd {
        InitramfsBuilder::switch_root(TAG)
    } else {
        InitramfsBuilder::run_script(TAG, SCRIPT).guest_tools(&tools)
    };
    let initrd = builder.build(&env.kernel).unwrap_or_else(|e| panic!("{e}"));
    let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&socket, TAG);
    cfg.timeout = Duration::from_secs(600);
    let booted = Instant::now();
    let mut vm = Vm::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let fail = |what: &str| -> ! {
        panic!(
            "{what}\n--- fsd log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    if !vm.wait_for_console("MOUNTED", Duration::from_secs(300)) {
        fail("the guest did not mount the share");
    }
    let to_mounted = booted.elapsed();
    if !vm.wait_for_console("READY-FOR-HANDOVER", Duration::from_secs(120)) {
        fail("the guest loop did not start");
    }

    let mut serving = daemon.pid();
    let mut took = Vec::new();
    // The guest loop's last finished round, as it wrote it to the share.
    let progress = || -> u64 {
        std::fs::read_to_string(data.join("progress"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut last_round = 0;
    let events = match event {
        Event::Handover => HANDOVERS,
        Event::Crash => KILLS,
    };
    // A small generator for the kill moments; the seed is printed, so a
    // failing run can be told apart.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    if event == Event::Crash {
        println!("kill moments from seed {seed}");
    }
    for n in 1..=events {
        // Each handover falls into a different round of the guest loop:
        // wait until it finished one more since the last handover.
        let deadline = Instant::now() + Duration::from_secs(120);
        while progress() <= last_round {
            if Instant::now() > deadline {
                fail(&format!("the guest loop stalled before handover {n}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last_round = progress();
        if event == Event::Crash {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(seed % 400));
            let before = recovered(&std::fs::read_to_string(&log).unwrap()).len();
            let victim = serving_daemon(serving, sandbox).unwrap_or_else(|| {
                fail(&format!(
                    "no serving daemon under {serving} before kill {n}"
                ))
            });
            let t = Instant::now();
            // SAFETY: killing the daemon this test started (or its successor).
            assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            serving = loop {
                let done = recovered(&std::fs::read_to_string(&log).unwrap());
                if done.len() > before {
                    break done[before];
                }
                if Instant::now() > deadline {
                    fail(&format!("no recovery after kill {n}"));
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            took.push(t.elapsed());
            continue;
        }
        if n == TO_OTHER_BINARY {
            // Another copy of the binary at the same path (an upgrade
            // replaces the file by renaming over it).
            testrig::process::install_executable(Path::new(crate::common::FSD), &exe).unwrap();
        }
        let before = handed_over(&std::fs::read_to_string(&log).unwrap()).len();
        let t = Instant::now();
        // SAFETY: signalling the daemon this test started (or its successor).
        assert_eq!(unsafe { libc::kill(serving as i32, libc::SIGUSR2) }, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let next = loop {
            let done = handed_over(&std::fs::read_to_string(&log).unwrap());
            if done.len() > before {
                break done[before];
            }
            if Instant::now() > deadline {
                fail(&format!("handover {n} did not happen"));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        took.push(t.elapsed());
        let gone = Instant::now() + Duration::from_secs(10);
        while alive(serving) {
            if Instant::now() > gone {
                fail(&format!("the predecessor of handover {n} did not exit"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        serving = next;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress() <= last_round {
        if Instant::now() > deadline {
            fail("the guest loop stalled after the last handover");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(data.join("stop"), b"").unwrap();
    let transcript = vm.wait().unwrap_or_else(|e| fail(&e.to_string()));
    let out = transcript
        .output()
        .unwrap_or_else(|e| fail(&e.to_string()))
        .to_owned();
    if alive(serving) {
        // The guest powered off; the last successor exits with it.
        let end = Instant::now() + Duration::from_secs(10);
        while alive(serving) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("{out}");
    let rounds = out
        .lines()
        .find_map(|l| l.strip_prefix("rounds "))
        .unwrap_or_else(|| fail(&format!("no summary in:\n{out}")));
    match event {
        Event::Handover => {
            assert!(
                rounds.ends_with(" errors 0"),
                "the guest saw errors:\n{out}"
            );
            assert!(!out.contains("ERR "), "{out}");
        }
        Event::Crash => {
            // Never a wrong byte, a lost lock, a lost open file or a
            // protected file let through; a change in flight at a kill may
            // fail with EIO (and what depends on it in that round).
            let may_fail = [
                "ERR write ",
                "ERR rename ",
                "ERR read back ",
                "ERR progress ",
            ];
            for l in out.lines().filter(|l| l.starts_with("ERR ")) {
                assert!(
                    may_fail.iter().any(|p| l.starts_with(p)),
                    "an error the docs do not list for a crash: {l}\n{out}"
                );
            }
            let tool_errors: Vec<&str> = out
                .lines()
                .filter(|l| {
                    (l.contains("can't") || l.contains("error") || l.contains("No such"))
                        && !["ERR ", "rounds ", "ticks "]
                            .iter()
                            .any(|p| l.starts_with(p))
                })
                .collect();
            for l in &tool_errors {
                assert!(
                    listed_crash_error(l),
                    "an error the docs do not list for a crash: {l}\n{out}"
                );
            }
            // Each round with errors: its first error is one the docs list
            // (EIO for a change in flight, EINTR for a waiting lock); later
            // errors of that round may follow from it (a rename of the
            // file whose creation failed finds no file).
            let mut failed_rounds: Vec<&str> = Vec::new();
            for l in out.lines().filter(|l| l.starts_with("ERR ")) {
                let (head, message) = l.split_once(':').unwrap_or((l, ""));
                let round = head.rsplit(' ').next().unwrap_or("");
                if failed_rounds.contains(&round) {
                    continue;
                }
                assert!(
                    listed_crash_error(message),
                    "the first error of round {round} is not one the docs list for a crash: {l}\n{out}"
                );
                failed_rounds.push(round);
            }
            // What the new fsd found in flight, from its log lines
            // "crash recovery: N requests in flight run again, M answered with an error".
            let (mut rerun, mut failed) = (0usize, 0usize);
            for l in std::fs::read_to_string(&log).unwrap_or_default().lines() {
                if let Some((_, rest)) = l.split_once("crash recovery: ") {
                    let nums: Vec<usize> = rest
                        .split_whitespace()
                        .filter_map(|w| w.parse().ok())
                        .collect();
                    if rest.contains("run again") && nums.len() == 2 {
                        rerun += nums[0];
                        failed += nums[1];
                    }
                }
            }
            println!(
                "crash recovery under a guest: {rerun} requests in flight run again and {failed} answered with an error by the new fsd; {} guest rounds with an EIO across {KILLS} kills; tool messages: {tool_errors:?}",
                failed_rounds.len()
            );
            assert!(failed_rounds.len() <= KILLS, "{out}");
        }
    }
    let n: usize = rounds.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        n > events,
        "a round of the guest loop between each two events: {out}"
    );
    for line in ["F: releasing", "P: releasing", "held file still open: yes"] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    let ticks = out
        .lines()
        .find_map(|l| l.strip_prefix("ticks "))
        .unwrap()
        .to_owned();
    took.sort();
    println!(
        "{event:?} under a guest ({sandbox:?}, root on fsd: {root_on_fsd}): {events} events; signal to successor serving: median {:?}, max {:?}; \
         guest tight loop (samples, longest gap s, mean gap s; /proc/uptime has 10 ms steps): {ticks}; guest power-on to mounted share: {:?}",
        took[took.len() / 2],
        took[took.len() - 1],
        to_mounted
    );
}

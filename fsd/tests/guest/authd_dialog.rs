//! Rules that ask, end to end: a real guest (root in a QEMU TCG VM) reads a
//! protected file, fsd asks the real authd, authd shows its real dialog on
//! a real X server (Xvfb), and the test plays the person at the screen with
//! xdotool. Nothing in between is simulated.
//!
//! The guest script and the test take turns (testrig's step handshake): the
//! guest prints `@@STEP <name>` on its console when it reaches a point the
//! test waits for, and waits for the test (`await <name>`) until the test
//! creates `.go-<name>` in the share's root when it is done with its part.
//! Each attempt in the guest prints one line, `<name>: ok|fail <output>`.
//!
//! fsd runs with its default sandbox (mount namespace, seccomp; it reaches
//! authd through its unsandboxed broker) in some tests and with
//! `--sandbox=none` in others, so both ways to reach authd are covered.
//!
//! | test | what the person does | sandbox |
//! |---|---|---|
//! | `grant_serves_the_guest_until_it_expires` | right password; screenshot of the dialog | namespace |
//! | `grant_serves_the_guest_until_it_expires_unsandboxed` | the same | none |
//! | `wrong_password_is_refused_and_locks_out` | wrong password, twice | none |
//! | `prompt_flood_from_the_guest_is_rate_limited` | Esc once, then nothing | none |
//! | `authd_killed_mid_prompt_fails_closed_and_recovers` | nothing; authd is killed, restarted, killed | namespace |
//!
//! Needs QEMU, the guest kernel, busybox (testrig), Xvfb, xdotool, xwd,
//! ImageMagick and the DejaVu font; without them each test prints
//! `SKIP: …` and returns, except under `CI=true`. authd's binaries come from
//! the same target directory (`cargo build -p authd`; `cargo test
//! --workspace` builds them) or `$AUTHD_BIN_DIR`; the tests fail saying so
//! when they are missing. `AUTHD_GUEST_SCREENSHOT=FILE` keeps the
//! screenshot of the live dialog. Run with `--nocapture` to see the
//! measured prompt-to-window latency and the guest transcripts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use authd::dialog::render::{HEIGHT, SEAL_BAND, WIDTH};
use authd::dialog::window::TITLE;
use authd::dialog::FONT_PATH;
use serde_json::{json, Value};
use testrig::authd::Authd;
use testrig::script::with_prelude;
use testrig::x11::Xvfb;
use testrig::{
    require, wait_for, Daemon, InitramfsBuilder, Need, Prereqs, QemuConfig, Sandbox, ScriptedGuest,
};

use crate::common::{asking_policy, fsd_spec, TAG};

const MARKER: &str = "CONFIDENTIAL-5c1e7d-MARKER";
const PUBLIC: &str = "public-text-ok";
const PASSWORD: &str = "tulip seventy 4";
const PHRASE: &str = "green kite over the harbour";
const SEAL_COLOR: &str = "#0b7a4c";
const SEAL_RGB: u32 = 0x0b7a4c;
/// OK and Enter stay inert this long after the dialog gains focus.
const FOCUS_DELAY_MS: u64 = 500;
/// Longest the test waits for the guest to reach a step (boot included)
/// or for a dialog to appear: generous, for a loaded 2-core machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const DIALOG_TIMEOUT: Duration = Duration::from_secs(120);

/// What one test sets up.
struct Setup<'a> {
    test: &'a str,
    sandbox: Sandbox,
    /// Lifetime of a grant for the protected rule.
    grant_secs: u64,
    /// How long fsd waits for authd's answer.
    ask_timeout_secs: u64,
    /// authd configuration fields on top of the rig's.
    authd: Value,
    /// The guest script (after testrig's prelude); runs in the share's root.
    script: &'a str,
}

/// One guest against fsd against authd, with the test at the screen.
struct Rig {
    work: tempfile::TempDir,
    x: Xvfb,
    authd: Authd,
    _fsd: Daemon,
    fsd_audit: PathBuf,
    guest: ScriptedGuest,
}

impl Rig {
    /// Starts Xvfb, authd (alice enrolled), fsd with an asking policy on
    /// `secret/**`, and boots the guest. None (after SKIP) when something
    /// is missing.
    fn start(s: Setup) -> Option<Rig> {
        let env: Prereqs = require(&[Need::Qemu, Need::Kernel, Need::Busybox])?;
        let x = Xvfb::start(s.test, TITLE, &[Path::new(FONT_PATH)])?;
        let work = tempfile::tempdir().unwrap();

        let (authd_bin, dialog_bin) = testrig::paths::authd().unwrap_or_else(|e| {
            panic!(
                "{e} (with the same CARGO_TARGET_DIR as this test), or point \
                 AUTHD_BIN_DIR at a directory holding authd and authd-dialog"
            )
        });
        let mut authd_cfg = json!({
            "frontend": "dialog",
            "display": x.display,
            "dialog_program": dialog_bin,
            "prompt_timeout_secs": 60,
            "focus_delay_ms": FOCUS_DELAY_MS,
        });
        for (k, v) in s.authd.as_object().unwrap() {
            authd_cfg[k] = v.clone();
        }
        let mut authd = Authd::configure(authd_bin, &work.path().join("authd"), authd_cfg);
        authd.enroll("alice", PASSWORD, PHRASE, SEAL_COLOR);
        authd.start();

        let share = crate::common::share_in(work.path(), "share");
        std::fs::create_dir_all(share.join("secret")).unwrap();
        std::fs::create_dir_all(share.join("public")).unwrap();
        std::fs::write(share.join("secret/doc.txt"), MARKER).unwrap();
        std::fs::write(share.join("public/ok.txt"), PUBLIC).unwrap();
        let policy = work.path().join("policy.toml");
        let policy_text = asking_policy(s.ask_timeout_secs, "direct", s.grant_secs);
        std::fs::write(&policy, policy_text).unwrap();
        let fsd_audit = work.path().join("fsd-audit.jsonl");
        let socket = work.path().join("fsd.sock");
        let spec = fsd_spec(
            s.sandbox,
            &socket,
            &share,
            &work.path().join("fsd.log"),
            &[
                format!("--policy={}", policy.display()),
                "--vm=vm1".into(),
                format!("--audit-log={}", fsd_audit.display()),
                format!("--authd-socket={}", authd.socket.display()),
            ],
        );
        let fsd = Daemon::spawn_on_path(&spec, &socket).unwrap_or_else(|e| panic!("{e}"));

        let initrd = InitramfsBuilder::run_script(TAG, &with_prelude(s.script))
            .build(&env.kernel)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = QemuConfig::new(&env.kernel, &initrd).fs(&socket, TAG);
        // The script waits for the test at each step; the test bounds each
        // wait itself, this only catches a guest that never powers off.
        cfg.timeout = Duration::from_secs(900);
        cfg.console_log = Some(work.path().join("console.log"));
        let guest = ScriptedGuest::start(&cfg, &share)
            .unwrap_or_else(|e| panic!("{e}"))
            .timeout(STEP_TIMEOUT)
            .log("fsd log", fsd.log_path())
            .log("fsd audit", &fsd_audit)
            .log("authd audit", &authd.audit_log)
            .log("authd log", authd.log_path());
        println!(
            "{}: fsd sandbox {:?}, X on {}, files in {}",
            s.test,
            s.sandbox,
            x.display,
            work.path().display()
        );
        Some(Rig {
            work,
            x,
            authd,
            _fsd: fsd,
            fsd_audit,
            guest,
        })
    }

    /// Fails the test with everything needed to see why.
    fn fail(&self, what: &str) -> ! {
        self.guest.fail(what)
    }

    /// Asserts attempt `name` succeeded and printed `want`.
    fn expect_ok(&mut self, name: &str, want: &str) {
        let a = self.guest.attempt(name);
        if !a.ok || a.output != want {
            self.fail(&format!(
                "{name}: expected success with {want:?}, got {a:?}"
            ));
        }
    }

    /// Asserts attempt `name` failed with EACCES.
    fn expect_eacces(&mut self, name: &str) {
        let a = self.guest.attempt(name);
        if a.ok || !a.output.contains("Permission denied") {
            self.fail(&format!(
                "{name}: expected EACCES, got {a:?} (content leaked: {})",
                a.output.contains(MARKER)
            ));
        }
    }

    /// The window of authd's `nth` prompt (counted from 1 in its audit
    /// log), once it is the only dialog on screen. X reuses window ids, so
    /// the count tells this prompt's window from the one before.
    fn dialog(&mut self, nth: usize, what: &str) -> String {
        let deadline = Instant::now() + DIALOG_TIMEOUT;
        let mut last: Option<String> = None;
        loop {
            let shown = self.authd.audit("prompt_shown").len();
            if shown > nth {
                self.fail(&format!("prompt {nth} ({what}) was followed by more"));
            }
            let now = self.x.dialogs();
            if shown == nth && now.len() == 1 {
                if last.as_ref() == Some(&now[0]) {
                    return now[0].clone();
                }
                last = Some(now[0].clone());
            } else {
                last = None;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no dialog appeared for prompt {nth} ({what})"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Focuses the dialog, waits past the focus delay, types `text` and
    /// presses Enter, as the person would.
    fn answer(&self, win: &str, text: &str) {
        self.x.focus(win);
        std::thread::sleep(Duration::from_millis(FOCUS_DELAY_MS + 400));
        self.x.type_text(text);
        self.x.key("Return");
    }

    /// Dismisses the dialog with Esc.
    fn cancel(&self, win: &str) {
        self.x.focus(win);
        self.x.key("Escape");
    }

    /// Waits for the dialog to go away.
    fn gone(&mut self, win: &str) {
        if !self.x.wait_gone(win, Duration::from_secs(30)) {
            self.fail(&format!("dialog {win} stayed up"));
        }
    }

    /// fsd's audit records.
    fn fsd_audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.fsd_audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("fsd audit lines are JSON"))
            .collect()
    }

    /// fsd audit outcomes for `op` on the protected file, in order.
    fn fsd_outcomes(&self, op: &str) -> Vec<String> {
        self.fsd_audit()
            .iter()
            .filter(|v| v["op"] == op && v["path"] == "secret/doc.txt")
            .map(|v| v["outcome"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Waits for the guest to power off and returns the script's output.
    fn finish(&mut self) -> String {
        let out = self.guest.finish().output.unwrap_or_default();
        for (what, text) in [
            (
                "fsd audit",
                std::fs::read_to_string(&self.fsd_audit).unwrap_or_default(),
            ),
            ("authd audit", self.authd.audit_text()),
            ("guest output", out.clone()),
        ] {
            assert!(!text.contains(PASSWORD), "the password is in the {what}");
        }
        out
    }
}

/// Asserts that `outcomes` are exactly `want`, in order.
fn assert_outcomes(rig: &mut Rig, op: &str, want: &[&str]) {
    let got = rig.fsd_outcomes(op);
    if got != want {
        rig.fail(&format!(
            "fsd audit for {op}: expected {want:?}, got {got:?}"
        ));
    }
}

/// The person types the right password; the guest reads; the grant expires
/// and takes with it a descriptor opened under it. Also: fsd serves other
/// files while a prompt is open, a live grant needs no second prompt, the
/// live dialog shows the user's seal (checked on a screenshot of it).
///
/// fsd as deployed: namespace sandbox, authd reached through the broker.
#[test]
fn grant_serves_the_guest_until_it_expires() {
    grant_flow(
        "grant_serves_the_guest_until_it_expires",
        Sandbox::Namespace,
    );
}

/// The same with `--sandbox=none`: fsd connects to authd itself.
#[test]
fn grant_serves_the_guest_until_it_expires_unsandboxed() {
    grant_flow(
        "grant_serves_the_guest_until_it_expires_unsandboxed",
        Sandbox::None,
    );
}

fn grant_flow(test: &str, sandbox: Sandbox) {
    const GRANT_SECS: u64 = 15;
    let Some(mut rig) = Rig::start(Setup {
        test,
        sandbox,
        grant_secs: GRANT_SECS,
        ask_timeout_secs: 120,
        authd: json!({"prompt_rate": {"max_prompts": 10, "window_secs": 300}}),
        script: r#"
step ask
cat secret/doc.txt >/tmp/held 2>&1 &
held=$!
echo "held-pid: $held"
await dialog-up
t pub-during-prompt cat public/ok.txt
step pub-done
wait $held; rc=$?
report grant-read $rc "$(cat /tmp/held)"
t reread cat secret/doc.txt
t open-under-grant sh -c 'exec 3< secret/doc.txt'
exec 3< secret/doc.txt
exec 4< secret/doc.txt
t fd-under-grant sh -c 'head -c 100 <&4'
t pub-under-grant cat public/ok.txt
step granted
await expired
# dd reads once (cat would retry a failed sendfile with read).
t fd-after-expiry sh -c 'dd bs=4096 count=1 <&3'
t open-after-expiry cat secret/doc.txt
t pub-after-expiry cat public/ok.txt
step done
"#,
    }) else {
        return;
    };
    let t0 = Instant::now();

    rig.guest.step("ask");
    let asked = Instant::now();
    let win = rig.dialog(1, "the first read");
    let to_window = asked.elapsed();
    assert_eq!(rig.x.dialogs().len(), 1, "one dialog");

    // fsd keeps serving the guest while one request waits for the person.
    rig.guest.go("dialog-up");
    rig.guest.step("pub-done");
    rig.expect_ok("pub-during-prompt", PUBLIC);
    if !rig.x.dialogs().contains(&win) || rig.guest.console().contains("grant-read") {
        rig.fail("the protected read finished before anyone answered");
    }

    // The request shown is this guest's, as fsd reported it.
    let prompts = rig.authd.audit("prompt");
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    let p = &prompts[0];
    assert_eq!(
        (&p["vm"], &p["principal"]),
        (&json!("vm1"), &json!("alice"))
    );
    assert_eq!(p["reason"]["operation"], "open");
    assert_eq!(p["reason"]["path"], "secret/doc.txt");
    assert_eq!(p["frontend"], "dialog");
    // The pid is guest-reported (shown as unverified), and it is the cat's.
    let pid = rig.guest.line("held-pid");
    assert_eq!(p["reason"]["pid"].to_string(), pid, "{p}");
    let shown_ms = rig.authd.audit("prompt_shown")[0]["latency_ms"].clone();
    println!(
        "prompt to window: {:.0} ms from the guest's step marker to a visible window; \
         authd's own measure (request to window shown): {shown_ms} ms",
        to_window.as_secs_f64() * 1e3
    );

    // The person: focus, wait past the focus delay, type; screenshot the
    // live dialog (password typed, OK armed) before confirming.
    rig.x.focus(&win);
    std::thread::sleep(Duration::from_millis(FOCUS_DELAY_MS + 400));
    rig.x.type_text(PASSWORD);
    std::thread::sleep(Duration::from_millis(200));
    let png = rig.work.path().join("dialog-live.png");
    let shot = rig.x.screenshot(&win, &png);
    if let Some(dest) = std::env::var_os("AUTHD_GUEST_SCREENSHOT") {
        std::fs::copy(&png, PathBuf::from(dest)).unwrap();
    }
    // The band is 520x62 px; the phrase covers part of it.
    let seal_px = shot.count(SEAL_RGB);
    // A point inside the seal band, clear of the phrase's glyphs.
    let probe = ((SEAL_BAND.x + 4) as u32, (SEAL_BAND.y + 4) as u32);
    let seal_ok = shot.pixel(probe.0, probe.1) == SEAL_RGB && seal_px > 20_000;
    if (shot.width, shot.height) != (WIDTH, HEIGHT) || !seal_ok {
        // Kept: the temporary directory goes with the test.
        let keep = std::env::temp_dir().join(format!("{test}-dialog.png"));
        std::fs::copy(&png, &keep).unwrap();
        rig.fail(&format!(
            "the live dialog is {}x{} (want {WIDTH}x{HEIGHT}) with {seal_px} pixels of \
             alice's seal colour (want its band, over 20000): see {}",
            shot.width,
            shot.height,
            keep.display()
        ));
    }
    println!(
        "live dialog: {}x{}, {seal_px} pixels of the seal colour ({} while the test runs; \
         set AUTHD_GUEST_SCREENSHOT=FILE to keep it)",
        shot.width,
        shot.height,
        png.display()
    );
    rig.x.key("Return");

    rig.guest.step("granted");
    rig.expect_ok("grant-read", MARKER);
    rig.expect_ok("reread", MARKER);
    rig.expect_ok("open-under-grant", "");
    rig.expect_ok("fd-under-grant", MARKER);
    rig.expect_ok("pub-under-grant", PUBLIC);
    rig.gone(&win);
    assert_eq!(
        rig.authd.audit("prompt").len(),
        1,
        "a live grant needs no prompt"
    );
    let granted = rig.authd.audit("granted");
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(granted[0]["grant"]["lifetime_secs"], GRANT_SECS);
    assert_eq!(granted[0]["reused"], false);

    // The grant runs out (authd says so); nobody consents again.
    let expired = Duration::from_secs(GRANT_SECS + 60);
    if !wait_for(expired, || {
        rig.authd
            .audit("grant_ended")
            .iter()
            .any(|e| e["cause"] == "expired")
    }) {
        rig.fail("the grant did not expire");
    }
    // fsd heard the end (pushed on its subscription).
    if !wait_for(Duration::from_secs(30), || {
        rig.fsd_audit().iter().any(|v| v["op"] == "grant-end")
    }) {
        rig.fail("fsd did not record the grant's end");
    }
    rig.guest.go("expired");
    // The descriptor opened under the grant: its read is refused at once,
    // without a new prompt (only opening again asks).
    rig.expect_eacces("fd-after-expiry");
    let win = rig.dialog(2, "the open after expiry");
    // Two prompts in all: the first open and this one; none for the read.
    let prompts = rig.authd.audit("prompt");
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert_eq!(prompts[1]["reason"]["operation"], "open");
    rig.cancel(&win);
    rig.expect_eacces("open-after-expiry");
    rig.expect_ok("pub-after-expiry", PUBLIC);
    rig.guest.step("done");
    let out = rig.finish();
    println!("{out}");

    assert_outcomes(
        &mut rig,
        "open",
        &[
            "allowed: granted by authd",
            "allowed",
            "allowed",
            "allowed",
            "allowed",
            "denied: refused: Cancelled",
        ],
    );
    // Reads under a grant are not logged one by one; the refused one is.
    assert_outcomes(
        &mut rig,
        "read",
        &["denied: the grant this handle was opened under has ended"],
    );
    let denied = rig.authd.audit("denied");
    let why: Vec<&str> = denied.iter().filter_map(|d| d["why"].as_str()).collect();
    assert_eq!(why, ["cancelled"]);
    println!(
        "grant flow (fsd sandbox {sandbox:?}): {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Wrong passwords are refused, and count: after `faillock.deny` of them
/// the principal is locked and the next request is refused without a
/// prompt, right password or not.
#[test]
fn wrong_password_is_refused_and_locks_out() {
    let Some(mut rig) = Rig::start(Setup {
        test: "wrong_password_is_refused_and_locks_out",
        sandbox: Sandbox::None,
        grant_secs: 300,
        ask_timeout_secs: 120,
        authd: json!({
            "faillock": {
                "deny": 2,
                "fail_interval_secs": 900,
                "unlock_time_secs": 600,
                "delay_base_ms": 200,
                "delay_max_ms": 1000
            }
        }),
        script: r#"
step wrong1
t wrong1 cat secret/doc.txt
step wrong2
t wrong2 cat secret/doc.txt
step locked
t locked cat secret/doc.txt
t pub cat public/ok.txt
step done
"#,
    }) else {
        return;
    };
    let t0 = Instant::now();
    for (nth, attempt) in [(1, "wrong1"), (2, "wrong2")] {
        rig.guest.step(attempt);
        let win = rig.dialog(nth, attempt);
        rig.answer(&win, "not alice's password");
        rig.expect_eacces(attempt);
    }
    rig.guest.step("locked");
    rig.expect_eacces("locked");
    rig.expect_ok("pub", PUBLIC);
    assert!(rig.x.dialogs().is_empty(), "no prompt while locked");
    rig.guest.step("done");
    let out = rig.finish();
    println!("{out}");

    assert_eq!(rig.authd.audit("prompt").len(), 2, "no prompt while locked");
    let verified: Vec<Value> = rig
        .authd
        .audit("verified")
        .iter()
        .map(|v| v["ok"].clone())
        .collect();
    assert_eq!(verified, [json!(false), json!(false)]);
    let why: Vec<Value> = rig
        .authd
        .audit("denied")
        .iter()
        .map(|v| v["why"].clone())
        .collect();
    assert_eq!(
        why,
        [
            json!("wrong_password"),
            json!("wrong_password"),
            json!("locked")
        ]
    );
    assert!(rig.authd.audit("granted").is_empty());
    assert_outcomes(
        &mut rig,
        "open",
        &[
            "denied: refused: WrongPassword",
            "denied: refused: WrongPassword",
            "denied: refused: Locked",
        ],
    );
    println!(
        "wrong password and lockout: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// A guest that floods: six concurrent opens, then ten in a row, nobody
/// answering. Concurrent requests share a prompt; in all, no more prompts
/// appear than authd's per-VM rate allows, the rest are refused at once.
#[test]
fn prompt_flood_from_the_guest_is_rate_limited() {
    const MAX_PROMPTS: usize = 3;
    let Some(mut rig) = Rig::start(Setup {
        test: "prompt_flood_from_the_guest_is_rate_limited",
        sandbox: Sandbox::None,
        grant_secs: 300,
        ask_timeout_secs: 60,
        authd: json!({
            "prompt_timeout_secs": 6,
            "prompt_rate": {"max_prompts": MAX_PROMPTS, "window_secs": 600}
        }),
        script: r#"
step burst
i=0
while [ $i -lt 6 ]; do
    i=$((i+1))
    (t burst$i cat secret/doc.txt) &
done
wait
step loop
i=0
while [ $i -lt 10 ]; do i=$((i+1)); t loop$i cat secret/doc.txt; done
t pub cat public/ok.txt
step done
"#,
    }) else {
        return;
    };
    let t0 = Instant::now();
    rig.guest.step("burst");
    let watcher = rig.x.watch();
    let win = rig.dialog(1, "the burst");
    // Let every concurrent open reach authd (six forks and execs take a
    // while under TCG), then decline once, well within the prompt timeout.
    std::thread::sleep(Duration::from_millis(2000));
    rig.cancel(&win);
    for i in 1..=6 {
        rig.expect_eacces(&format!("burst{i}"));
    }
    let burst_prompts = rig.authd.audit("prompt").len();
    // Nobody at the screen from here on: prompts time out by themselves.
    rig.guest.step("loop");
    for i in 1..=10 {
        rig.expect_eacces(&format!("loop{i}"));
    }
    rig.expect_ok("pub", PUBLIC);
    rig.guest.step("done");
    let (appeared, most) = watcher.finish();
    let out = rig.finish();
    println!("{out}");

    let prompts = rig.authd.audit("prompt").len();
    let limited = rig
        .fsd_outcomes("open")
        .iter()
        .filter(|o| o.as_str() == "denied: refused: RateLimited")
        .count();
    println!(
        "16 protected opens (6 concurrent, 10 in a row): {burst_prompts} prompt(s) for the \
         concurrent six, {prompts} prompts in all, {appeared} dialog windows seen (at most \
         {most} at once), {limited} opens refused by the rate limit without a prompt; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(most, 1, "one dialog per VM at a time");
    assert_eq!(prompts, MAX_PROMPTS, "the rate limit caps the prompts");
    assert!(
        (1..=MAX_PROMPTS).contains(&appeared),
        "{appeared} dialog windows appeared"
    );
    assert!(burst_prompts < 6, "concurrent requests were not coalesced");
    assert!(
        limited >= 10 - (MAX_PROMPTS - 1),
        "{limited} rate-limited refusals"
    );
    assert!(rig.authd.audit("granted").is_empty());
}

/// authd dies while its dialog is up: the waiting guest request is refused
/// at once (fail closed, not after a timeout), the dialog goes away with
/// its daemon, fsd keeps serving, requests while authd is down are
/// refused without a prompt, and a restarted authd (same credential
/// store) grants again. Killing authd once more ends that grant in fsd at
/// once (its subscription breaks), long before the grant's own expiry:
/// both a new open and a descriptor opened under the grant are refused.
/// Started again, authd still holds the grant (it keeps live grants across
/// a restart), fsd takes it back, and the guest reads again without a
/// prompt.
#[test]
fn authd_killed_mid_prompt_fails_closed_and_recovers() {
    let Some(mut rig) = Rig::start(Setup {
        test: "authd_killed_mid_prompt_fails_closed_and_recovers",
        sandbox: Sandbox::Namespace,
        grant_secs: 300,
        // Long enough that a refusal within them cannot be a timeout.
        ask_timeout_secs: 600,
        authd: json!({"prompt_timeout_secs": 300}),
        script: r#"
step ask
t killed cat secret/doc.txt
t pub-after-kill cat public/ok.txt
t while-down cat secret/doc.txt
step down
await restarted
rc=1; i=0
while [ $i -lt 60 ]; do
    i=$((i+1))
    if out=$(cat secret/doc.txt 2>&1); then rc=0; break; fi
    sleep 0.5
done
report after-restart $rc "$out"
echo "attempts after restart: $i"
exec 3< secret/doc.txt
step granted
await killed-again
t open-after-second-kill cat secret/doc.txt
t fd-after-second-kill sh -c 'dd bs=4096 count=1 <&3'
t pub-end cat public/ok.txt
step down-again
await restarted-again
t after-second-restart cat secret/doc.txt
step done
"#,
    }) else {
        return;
    };
    let t0 = Instant::now();
    rig.guest.step("ask");
    let win = rig.dialog(1, "the read before the kill");
    rig.authd.kill();
    let killed = Instant::now();
    rig.expect_eacces("killed");
    let refused_after = killed.elapsed();
    println!(
        "authd killed with its dialog up: the guest's read was refused {:.0} ms later \
         (prompt timeout 300 s, fsd's ask timeout 600 s)",
        refused_after.as_secs_f64() * 1e3
    );
    let opens = rig.fsd_outcomes("open");
    if !opens
        .first()
        .is_some_and(|o| o.starts_with("denied: authd unreachable or failed"))
    {
        rig.fail(&format!("the refusal was not authd's failure: {opens:?}"));
    }
    rig.gone(&win);
    rig.expect_ok("pub-after-kill", PUBLIC);
    rig.expect_eacces("while-down");
    rig.guest.step("down");
    assert_eq!(rig.authd.audit("prompt").len(), 1, "no prompt while down");

    rig.authd.start();
    rig.guest.go("restarted");
    let win = rig.dialog(2, "the read after the restart");
    rig.answer(&win, PASSWORD);
    rig.expect_ok("after-restart", MARKER);
    rig.guest.step("granted");

    // The grant has 300 s to run; authd dies; fsd drops it at once.
    rig.authd.kill();
    if !wait_for(Duration::from_secs(30), || {
        rig.fsd_audit().iter().any(|v| v["op"] == "grant-end")
    }) {
        rig.fail("fsd kept the grant after authd died");
    }
    rig.guest.go("killed-again");
    rig.expect_eacces("open-after-second-kill");
    rig.expect_eacces("fd-after-second-kill");
    rig.expect_ok("pub-end", PUBLIC);
    rig.guest.step("down-again");

    // authd kept the live grant across its death: started again, it lists
    // the grant, fsd takes it back, and the guest reads without a prompt.
    let fsd_log = rig.work.path().join("fsd.log");
    let taken_back = |log: &str| {
        log.matches("1 live grants taken over from its list")
            .count()
    };
    let before = taken_back(&std::fs::read_to_string(&fsd_log).unwrap_or_default());
    rig.authd.start();
    if !wait_for(Duration::from_secs(30), || {
        taken_back(&std::fs::read_to_string(&fsd_log).unwrap_or_default()) > before
    }) {
        rig.fail("fsd did not take the grant back from the restarted authd");
    }
    rig.guest.go("restarted-again");
    rig.expect_ok("after-second-restart", MARKER);
    rig.guest.step("done");
    let out = rig.finish();
    println!("{out}");

    let opens = rig.fsd_outcomes("open");
    assert!(
        opens[1].starts_with("denied: authd unreachable or failed"),
        "{opens:?}"
    );
    let n = opens.len();
    assert!(n >= 6, "{opens:?}");
    assert_eq!(opens[n - 4], "allowed: granted by authd", "{opens:?}");
    assert_eq!(
        opens[n - 3],
        "allowed",
        "exec 3< under the grant: {opens:?}"
    );
    assert!(
        opens[n - 2].starts_with("denied: authd unreachable or failed"),
        "{opens:?}"
    );
    assert_eq!(
        opens[n - 1],
        "allowed",
        "after authd's second restart: {opens:?}"
    );
    // The read through the descriptor from the ended grant is refused
    // without asking anyone.
    let reads = rig.fsd_outcomes("read");
    assert_eq!(
        reads,
        ["denied: the grant this handle was opened under has ended"],
        "{reads:?}"
    );
    // No prompt after the second restart: the grant outlived authd.
    assert_eq!(rig.authd.audit("prompt").len(), 2);
    assert_eq!(rig.authd.audit("granted").len(), 1);
    println!(
        "authd killed and restarted: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

//! `ask` end to end: the filter puts a new flow's question to the person in
//! authd's real trusted dialog (a real `authd serve` and `authd-dialog` on
//! a private Xvfb, driven by xdotool): Allow always lets the flow through and
//! answers the same question again without a dialog; Esc on another
//! question denies it. Ownership comes from a stand-in monitor (the guest
//! tests cover the real one). Missing programs make it print `SKIP: …`.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use authd::dialog::render::ALWAYS_BUTTON;
use authd::dialog::window::TITLE;
use authd::dialog::FONT_PATH;
use etherparse::PacketBuilder;
use monitor_client::taint::{SocketOwner, SocketQuery};
use monitor_client::ClientError;
use netfilter::audit::Audit;
use netfilter::dialog::AuthdAsker;
use netfilter::engine::{Egress, Output, Shared, Switches};
use netfilter::owner::OwnerSource;
use netfilter::policy::Policy;
use netfilter::taint::NamedTaint;
use testrig::authd::Authd;
use testrig::x11::Xvfb;

/// Every socket belongs to `nc` (uid 1000).
struct Nc;
impl OwnerSource for Nc {
    fn owners(&mut self, q: &[SocketQuery]) -> Result<Vec<Option<SocketOwner>>, ClientError> {
        Ok(q.iter()
            .map(|_| {
                Some(SocketOwner {
                    pid: 200,
                    name: "nc".into(),
                    uid: 1000,
                    exe: Some("/bin/busybox".into()),
                    task: 1,
                })
            })
            .collect())
    }
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55],
    )
    .ipv4([192, 0, 2, 15], [192, 0, 2, 1], 64)
    .udp(sport, dport)
    .write(&mut v, b"ping")
    .unwrap();
    v
}

/// Runs one frame through the filter on a thread (it waits for the
/// person); returns whether it was forwarded.
fn send(egress: Egress, frame: Vec<u8>) -> thread::JoinHandle<(Egress, bool)> {
    thread::spawn(move || {
        let mut egress = egress;
        let mut out = Output::default();
        egress.process(&[&frame[..]], &mut out);
        (egress, !out.to_host.is_empty())
    })
}

const POLICY: &str = r#"
version = 1
vm = "vm-test"
[defaults]
action = "deny"
ask_timeout_secs = 60
[ask]
principal = "alice"
[[rule]]
name = "nc asks"
process = "nc"
action = "ask"
"#;

#[test]
fn ask_goes_to_authds_dialog() {
    let Some(x) = Xvfb::start("ask_goes_to_authds_dialog", TITLE, &[Path::new(FONT_PATH)]) else {
        return;
    };
    let (authd_bin, dialog_bin) = match testrig::paths::authd() {
        Ok(p) => p,
        Err(e) => {
            testrig::skip::<(), _>(e);
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut authd = Authd::configure(
        &authd_bin,
        &dir.path().join("authd"),
        serde_json::json!({
            "display": x.display,
            "dialog_program": dialog_bin,
            "focus_delay_ms": 300,
            "prompt_timeout_secs": 30,
        }),
    );
    authd.enroll("alice", "correct horse 7", "purple owl at dawn", "#6a1b9a");
    authd.start();

    let policy = Arc::new(Policy::parse(Path::new("vm-test.toml"), POLICY).unwrap());
    let shared = Arc::new(Shared::new(policy.clone(), Switches::new(true, true)));
    let audit_path = dir.path().join("audit.jsonl");
    let egress = Egress::new(
        shared.clone(),
        Box::new(Nc),
        Box::new(NamedTaint::new(vec![])),
        Box::new(AuthdAsker::new(authd.socket.clone(), "alice".into())),
        Audit::open(Some(&audit_path), 100).unwrap(),
    );

    // A new flow: the dialog asks; the person clicks Allow always.
    let pending = send(egress, udp(5000, 7000));
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    x.focus(&win);
    thread::sleep(Duration::from_millis(900));
    x.click(
        &win,
        ALWAYS_BUTTON.x + ALWAYS_BUTTON.w / 2,
        ALWAYS_BUTTON.y + ALWAYS_BUTTON.h / 2,
    );
    let (egress, forwarded) = pending.join().unwrap();
    assert!(forwarded, "allowed always: the frame goes on");
    assert!(testrig::wait_for(Duration::from_secs(10), || x
        .dialogs()
        .is_empty()));

    // The same question from another socket of the same program: no dialog.
    let (egress, forwarded) = send(egress, udp(5001, 7000)).join().unwrap();
    assert!(forwarded);
    assert!(x.dialogs().is_empty());

    // Another destination: asked again; Esc denies.
    let pending = send(egress, udp(5002, 7001));
    let win = x
        .wait_dialog(Duration::from_secs(30))
        .expect("dialog window");
    x.focus(&win);
    x.key("Escape");
    let (_egress, forwarded) = pending.join().unwrap();
    assert!(!forwarded, "denied: the frame is dropped");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    println!("filter audit reasons: {reasons:?}");
    assert_eq!(reasons, ["ask_always", "ask_remembered", "ask_denied"]);
    assert!(
        lines[2]["detail"].as_str().unwrap().contains("Cancelled"),
        "{}",
        lines[2]
    );
    let confirmed = authd.audit("confirmed");
    println!("authd audit: {}", confirmed[0]);
    assert_eq!(confirmed.len(), 1);
    assert_eq!(
        confirmed[0]["question"],
        "process nc [200] (/bin/busybox) (uid 1000) in VM vm-test wants to connect to 192.0.2.1:7000 over UDP"
    );
    assert_eq!(authd.audit("confirm_denied").len(), 1);
    assert_eq!(shared.stats.c.values().asked, 2);
}

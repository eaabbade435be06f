//! The broker without guests: the test plays the user VM's QEMU (it
//! connects to the broker's socket for `vm1`), and where needed authd (a
//! stand-in that grants, on authd's wire protocol) and the helper VM's
//! agent (a stand-in that answers pings and plays a script). Runs
//! everywhere in about a second; the two-guest test (`two_vms`) covers the
//! same with real VMs, authd and its dialog.
//!
//! Without the authd stand-in nothing can vouch for alice, so a request
//! that got as far as running would be a bug.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use delegate_proto::frame::MAX_PAYLOAD;
use delegate_proto::{ErrorCode, Frame, Kind, Message, Request, VERSION};
use serde_json::Value;
use testrig::{wait_for, Proc};

const POLICY: &str = r#"version = 1
[delegation]
client = "usr/libexec/fsd/delegate-client"
[[principal]]
name = "alice"
uid = 1000
[[vm]]
name = "vm1"
principal = "alice"
[[delegate]]
program = "usr/bin/passwd"
helper = "helper1"
run_as_uid = 0
"#;

struct Broker {
    _proc: Proc,
    dir: tempfile::TempDir,
    vm_sock: PathBuf,
}

impl Broker {
    fn start(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("policy.toml"), POLICY).unwrap();
        let vm_sock = p("vm1.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_delegate"))
            .arg(format!("--policy={}", p("policy.toml").display()))
            .arg(format!("--vm=vm1={}", vm_sock.display()))
            .arg(format!("--helper=helper1={}", p("helper1.sock").display()))
            .arg(format!("--authd-socket={}", p("no-authd.sock").display()))
            .arg(format!("--audit-log={}", p("audit.jsonl").display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p("delegate.log")).unwrap())
            .spawn()
            .unwrap();
        assert!(wait_for(Duration::from_secs(10), || {
            testrig::daemon::listens(&vm_sock)
        }));
        Broker {
            _proc: Proc(child),
            dir,
            vm_sock,
        }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.vm_sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
}

fn request(program: &str) -> Vec<u8> {
    Message::Request(Request {
        version: VERSION,
        program: program.as_bytes().to_vec(),
        args: vec![],
        env: vec![],
        cwd: vec![],
        tty: None,
    })
    .encode()
    .unwrap()
    .to_bytes()
}

/// The next message, or None when the broker closed the connection.
fn answer(s: &mut UnixStream) -> Option<Message> {
    match Frame::read_from(s) {
        Ok(f) => Some(Message::decode(&f).unwrap()),
        Err(_) => None,
    }
}

fn error_code(m: Option<Message>) -> ErrorCode {
    match m {
        Some(Message::Error(code, _)) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn frames_that_lose_the_stream_are_refused_and_reset_the_channel() {
    let b = Broker::start(&[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&b.vm_sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only root's QEMU may connect");
    for bytes in [b"\xffGET / HTTP/1.0\r\n\r\n".to_vec(), {
        let mut v = vec![Kind::Request as u8];
        v.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        v
    }] {
        let mut s = b.connect();
        s.write_all(&bytes).unwrap();
        assert_eq!(error_code(answer(&mut s)), ErrorCode::Protocol);
        assert!(closed(&mut s), "the broker keeps a channel out of step");
    }
    let audit = b.audit();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit
        .iter()
        .all(|r| r["event"] == "protocol" && r["vm"] == "vm1" && r["ran"] == false));
}

#[test]
fn bad_requests_are_refused_and_the_channel_stays_usable() {
    let b = Broker::start(&[]);
    let mut s = b.connect();
    // A request whose body ends early: the frame is whole, the stream in step.
    let full = request("usr/bin/passwd");
    let mut short = vec![Kind::Request as u8];
    short.extend_from_slice(&((full.len() - 8) as u32).to_be_bytes());
    short.extend_from_slice(&full[5..full.len() - 3]);
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (short, ErrorCode::Protocol),
        (
            Frame::new(Kind::Stdin, b"x".to_vec()).to_bytes(),
            ErrorCode::Protocol,
        ),
        (
            Frame::new(Kind::Exit, vec![0, 0, 0, 0, 0]).to_bytes(),
            ErrorCode::Protocol,
        ),
        (request("usr/bin/../bin/passwd"), ErrorCode::NotDelegated),
        (request("/usr/bin/passwd"), ErrorCode::NotDelegated),
        (
            request("usr/libexec/fsd/delegate-client"),
            ErrorCode::NotDelegated,
        ),
        (request("etc/shadow"), ErrorCode::NotDelegated),
        // Delegated, but nobody can vouch for alice: authd is not there.
        (request("usr/bin/passwd"), ErrorCode::Denied),
    ];
    for (bytes, want) in &cases {
        s.write_all(bytes).unwrap();
        assert_eq!(error_code(answer(&mut s)), *want);
    }
    let audit = b.audit();
    assert_eq!(audit.len(), cases.len(), "{audit:?}");
    assert!(audit.iter().all(|r| r["ran"] == false));
    let denied = audit.last().unwrap();
    assert_eq!(denied["principal"], "alice");
    assert!(denied["outcome"]
        .as_str()
        .unwrap()
        .starts_with("refused: denied: authd unreachable"));
}

#[test]
fn a_flood_is_rate_limited() {
    let b = Broker::start(&["--max-requests=5", "--window-secs=600"]);
    let mut s = b.connect();
    let one = request("usr/bin/nothing");
    for _ in 0..40 {
        s.write_all(&one).unwrap();
    }
    let codes: Vec<ErrorCode> = (0..40).map(|_| error_code(answer(&mut s))).collect();
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ErrorCode::NotDelegated)
            .count(),
        5
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == ErrorCode::RateLimited)
            .count(),
        35
    );
    assert_eq!(b.audit().len(), 40);
}

/// A helper whose agent never answers, and one whose QEMU is not there:
/// refused in bounded time, and the job is never sent.
#[test]
fn a_silent_agent_gets_no_job() {
    // authd stand-in: the real daemon is not needed to get past the
    // grant, so this test uses a fake authd socket that grants.
    let b = Broker::start(&["--agent-timeout-ms=500"]);
    let _authd = fake_authd(&b.path("no-authd.sock"));
    // The helper's QEMU is not connected yet.
    let mut s = b.connect();
    s.write_all(&request("usr/bin/passwd")).unwrap();
    assert_eq!(error_code(answer(&mut s)), ErrorCode::HelperDown);
    // A helper that reads but never answers.
    let helper = UnixStream::connect(b.path("helper1.sock")).unwrap();
    let jobs = Arc::new(AtomicUsize::new(0));
    let seen = jobs.clone();
    let mut reader = helper.try_clone().unwrap();
    std::thread::spawn(move || {
        while let Ok(f) = Frame::read_from(&mut reader) {
            if f.kind == Kind::Job {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(&request("usr/bin/passwd")).unwrap();
    assert_eq!(error_code(answer(&mut s)), ErrorCode::AgentTimeout);
    assert_eq!(
        jobs.load(Ordering::SeqCst),
        0,
        "a job went to a silent agent"
    );
    let last = b.audit().pop().unwrap();
    assert_eq!(last["ran"], false);
    assert!(last["outcome"].as_str().unwrap().contains("agent_timeout"));
}

/// A socket that answers every authenticate with a grant, as authd does
/// for a live grant.
fn fake_authd(path: &Path) -> std::thread::JoinHandle<()> {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(c.try_clone().unwrap());
                let mut w = c;
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) > 0 {
                    let req: Value = serde_json::from_str(&line).unwrap();
                    let reply = serde_json::json!({
                        "v": req["v"], "id": req["id"], "result": "granted",
                        "grant": {"id": "g1", "vm": req["vm"], "principal": req["principal"],
                                  "expires_at_ms": authd_client::protocol::now_unix_ms() + 60_000,
                                  "lifetime_secs": 60}
                    });
                    let _ = writeln!(w, "{reply}");
                    line.clear();
                }
            });
        }
    })
}

/// A fake agent: answers pings, plays `script` (what the agent would
/// send) when the job comes, and reports everything the broker sends it.
/// The returned stream sends more as the agent.
fn fake_agent(
    path: &Path,
    script: Vec<Message>,
) -> (std::sync::mpsc::Receiver<Message>, UnixStream) {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut s = UnixStream::connect(path).unwrap();
    let mut w = s.try_clone().unwrap();
    let out = s.try_clone().unwrap();
    std::thread::spawn(move || {
        while let Ok(f) = Frame::read_from(&mut s) {
            let m = Message::decode(&f).unwrap();
            let reply: Vec<Message> = match &m {
                Message::Ping(n) => vec![Message::Pong(*n)],
                Message::Job(_) => script.clone(),
                _ => vec![],
            };
            for r in reply {
                let _ = w.write_all(&r.encode().unwrap().to_bytes());
            }
            if tx.send(m).is_err() {
                return;
            }
        }
    });
    (rx, out)
}

fn send(s: &mut UnixStream, m: &Message) {
    s.write_all(&m.encode().unwrap().to_bytes()).unwrap();
}

/// The next message the fake agent got that is not a ping.
fn agent_got(rx: &std::sync::mpsc::Receiver<Message>) -> Message {
    loop {
        match rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the agent got nothing")
        {
            Message::Ping(_) => continue,
            m => return m,
        }
    }
}

/// A delegation relayed in full, with a stand-in agent: the job the broker
/// builds, the streams and the status back, input and a signal forward,
/// the audit line.
#[test]
fn a_delegation_is_relayed_to_the_exit_status() {
    let b = Broker::start(&[]);
    let _authd = fake_authd(&b.path("no-authd.sock"));
    let (agent, mut agent_out) = fake_agent(
        &b.path("helper1.sock"),
        vec![
            Message::Started,
            Message::Stdout(b"Changing password for alice.\n".to_vec()),
            Message::Stderr(b"warning\n".to_vec()),
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut s = b.connect();
    send(
        &mut s,
        &Message::Request(Request {
            version: VERSION,
            program: b"usr/bin/passwd".to_vec(),
            args: vec![b"--stdin".to_vec()],
            env: vec![b"LD_PRELOAD=/tmp/x.so".to_vec()],
            cwd: b"home/alice".to_vec(),
            tty: None,
        }),
    );
    assert_eq!(answer(&mut s), Some(Message::Started));
    assert_eq!(
        answer(&mut s),
        Some(Message::Stdout(b"Changing password for alice.\n".to_vec()))
    );
    assert_eq!(answer(&mut s), Some(Message::Stderr(b"warning\n".to_vec())));
    // The job is the policy's: the real path, alice's uid, the owner's,
    // no variable the entry does not list.
    let Message::Job(job) = agent_got(&agent) else {
        panic!("no job first")
    };
    assert_eq!(job.program, b"/usr/bin/passwd");
    assert_eq!(job.argv, [b"passwd".to_vec(), b"--stdin".to_vec()]);
    assert_eq!((job.ruid, job.rgid, job.euid, job.egid), (1000, 1000, 0, 0));
    assert_eq!(job.env, [delegate::decide::JOB_PATH.to_vec()]);
    assert_eq!(job.cwd, b"/home/alice");
    // Input and a signal go to the agent.
    for m in [Message::Stdin(b"pw\n".to_vec()), Message::Signal(2)] {
        send(&mut s, &m);
        assert_eq!(agent_got(&agent), m);
    }
    // The agent's exit status ends it, audited before it reaches the VM.
    send(
        &mut agent_out,
        &Message::Exit(delegate_proto::Exit::Code(3)),
    );
    assert_eq!(
        answer(&mut s),
        Some(Message::Exit(delegate_proto::Exit::Code(3)))
    );
    let rec = b.audit().pop().unwrap();
    assert_eq!(rec["outcome"], "exit 3");
    assert_eq!(rec["ran"], true);
    assert_eq!(rec["principal"], "alice");
    assert_eq!(rec["args"], serde_json::json!(["--stdin"]));
}

/// A frame out of place while the program runs: the program is killed and
/// the user VM gets a protocol error instead of the status.
#[test]
fn a_frame_out_of_place_kills_the_program() {
    let b = Broker::start(&[]);
    let _authd = fake_authd(&b.path("no-authd.sock"));
    let (agent, mut agent_out) = fake_agent(&b.path("helper1.sock"), vec![Message::Started]);
    std::thread::sleep(Duration::from_millis(200));
    let mut s = b.connect();
    s.write_all(&request("usr/bin/passwd")).unwrap();
    assert_eq!(answer(&mut s), Some(Message::Started));
    assert!(matches!(agent_got(&agent), Message::Job(_)));
    s.write_all(&request("usr/bin/passwd")).unwrap();
    assert_eq!(agent_got(&agent), Message::Signal(libc::SIGKILL as u8));
    send(
        &mut agent_out,
        &Message::Exit(delegate_proto::Exit::Signal(9)),
    );
    assert_eq!(error_code(answer(&mut s)), ErrorCode::Protocol);
    let rec = b.audit().pop().unwrap();
    assert!(rec["outcome"]
        .as_str()
        .unwrap()
        .contains("a Request frame while a program runs"));
}

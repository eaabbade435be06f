//! The filter's decisions on crafted frames, without sockets: ownership
//! from a stand-in monitor, the policy, the connection table's fast path,
//! the bounds under a flood, and malformed frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use etherparse::PacketBuilder;
use monitor_client::taint::{SocketOwner, SocketQuery};
use monitor_client::ClientError;
use netfilter::ask::{Answer, Asker, NoDialog, Question};
use netfilter::audit::Audit;
use netfilter::engine::{Egress, Output, Shared, Switches};
use netfilter::owner::OwnerSource;
use netfilter::policy::Policy;
use netfilter::taint::NamedTaint;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const PEER_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];

/// Owners by guest port, and a log of the requests made.
#[derive(Clone, Default)]
struct FakeMonitor {
    by_port: Arc<Mutex<HashMap<u16, SocketOwner>>>,
    requests: Arc<Mutex<Vec<usize>>>,
}

impl OwnerSource for FakeMonitor {
    fn owners(&mut self, q: &[SocketQuery]) -> Result<Vec<Option<SocketOwner>>, ClientError> {
        self.requests.lock().unwrap().push(q.len());
        let m = self.by_port.lock().unwrap();
        Ok(q.iter().map(|q| m.get(&q.local.port()).cloned()).collect())
    }
}

fn owner(pid: u32, name: &str, exe: &str) -> SocketOwner {
    SocketOwner {
        pid,
        name: name.into(),
        uid: 1000,
        exe: Some(exe.into()),
        task: 0xffff_8880_0000_0000 + pid as u64,
    }
}

fn tcp(sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(GUEST_MAC, PEER_MAC)
        .ipv4([192, 0, 2, 15], [192, 0, 2, 1], 64)
        .tcp(sport, dport, 1, 65535);
    if syn {
        b = b.syn();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(GUEST_MAC, PEER_MAC)
        .ipv4([192, 0, 2, 15], [192, 0, 2, 1], 64)
        .udp(sport, dport)
        .write(&mut v, b"ping")
        .unwrap();
    v
}

const POLICY: &str = r#"
version = 1
vm = "test"
[defaults]
action = "deny"
unknown_owner = "deny"
[limits]
max_flows = 64
new_flows_per_sec = 1000
audit_lines_per_sec = 1000
[taint]
processes = ["exfil"]
[ask]
principal = "alice"
[[rule]]
name = "tainted"
tainted = true
action = "deny"
[[rule]]
name = "good"
exe = "/opt/good/*"
dest = "192.0.2.1/32"
action = "allow"
[[rule]]
name = "ask nc"
process = "nc"
action = "ask"
"#;

struct Rig {
    egress: Egress,
    shared: Arc<Shared>,
    mon: FakeMonitor,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn rig(policy: &str, asker: Box<dyn Asker>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let policy = Arc::new(Policy::parse(Path::new("test.toml"), policy).unwrap());
    let shared = Arc::new(Shared::new(policy.clone(), Switches::new(true, true)));
    let mon = FakeMonitor::default();
    let audit = dir.path().join("audit.jsonl");
    let egress = Egress::new(
        shared.clone(),
        Box::new(mon.clone()),
        Box::new(NamedTaint::new(policy.taint_processes.clone())),
        asker,
        Audit::open(Some(&audit), policy.limits.audit_lines_per_sec).unwrap(),
    );
    Rig {
        egress,
        shared,
        mon,
        audit,
        _dir: dir,
    }
}

impl Rig {
    /// Runs one batch; returns (frames forwarded, frames sent back).
    fn batch(&mut self, frames: &[Vec<u8>]) -> (usize, usize) {
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let mut out = Output::default();
        self.egress.process(&refs, &mut out);
        (count(&out.to_host), count(&out.to_guest))
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Frames in an encoded stream.
fn count(mut s: &[u8]) -> usize {
    let mut n = 0;
    while s.len() >= 4 {
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        s = &s[4 + len..];
        n += 1;
    }
    n
}

#[test]
fn decides_by_executable_and_passes_decided_flows_by_the_table() {
    let mut r = rig(POLICY, Box::new(NoDialog));
    {
        let mut m = r.mon.by_port.lock().unwrap();
        m.insert(40001, owner(101, "wget", "/opt/good/wget"));
        m.insert(40002, owner(102, "wget", "/opt/bad/wget"));
        m.insert(40003, owner(103, "exfil", "/opt/good/exfil"));
    }
    // One batch with three new flows (two frames of the first): one request.
    let (fwd, back) = r.batch(&[
        tcp(40001, 80, true, b""),
        tcp(40001, 80, false, b"GET /"),
        tcp(40002, 80, true, b""),
        tcp(40003, 80, true, b""),
        tcp(40004, 80, true, b""),
    ]);
    assert_eq!(
        (fwd, back),
        (2, 3),
        "good passes; bad, tainted and unknown get resets"
    );
    assert_eq!(*r.mon.requests.lock().unwrap(), vec![4]);
    // Later packets of the decided flows never reach the monitor.
    for _ in 0..10 {
        assert_eq!(r.batch(&[tcp(40001, 80, false, b"more")]), (1, 0));
        assert_eq!(r.batch(&[tcp(40002, 80, true, b"")]), (0, 1));
    }
    assert_eq!(r.mon.requests.lock().unwrap().len(), 1);
    let c = r.shared.stats.c.values();
    assert_eq!(
        (c.new_flows, c.allowed, c.denied, c.unknown_owner),
        (4, 1, 3, 1)
    );
    assert_eq!(c.fast_path, 20);
    let lines = r.audit_lines();
    assert_eq!(lines.len(), 4);
    let by_port = |p: u16| {
        lines
            .iter()
            .find(|l| l["src"] == format!("192.0.2.15:{p}"))
            .unwrap()
            .clone()
    };
    assert_eq!(by_port(40001)["verdict"], "allow");
    assert_eq!(by_port(40001)["owner"]["exe"], "/opt/good/wget");
    assert_eq!(by_port(40001)["owner"]["uid"], 1000);
    assert_eq!(by_port(40001)["dst"], "192.0.2.1:80");
    assert_eq!(by_port(40002)["reason"], "default");
    assert_eq!(by_port(40003)["tainted"], true);
    assert_eq!(by_port(40004)["reason"], "unknown_owner");
}

#[test]
fn without_the_table_every_packet_is_looked_up_and_without_batching_every_flow() {
    let mut r = rig(POLICY, Box::new(NoDialog));
    r.mon
        .by_port
        .lock()
        .unwrap()
        .insert(40001, owner(101, "wget", "/opt/good/wget"));
    r.shared
        .switches
        .conntrack
        .store(false, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        assert_eq!(r.batch(&[tcp(40001, 80, false, b"x")]), (1, 0));
    }
    assert_eq!(r.mon.requests.lock().unwrap().len(), 3);
    r.shared
        .switches
        .batching
        .store(false, std::sync::atomic::Ordering::Relaxed);
    r.batch(&[udp(5000, 53), udp(5001, 53), udp(5002, 53)]);
    assert_eq!(&r.mon.requests.lock().unwrap()[3..], &[1, 1, 1]);
}

#[test]
fn a_flood_stays_within_the_table_and_the_rate_limit() {
    let policy = POLICY.replace("new_flows_per_sec = 1000", "new_flows_per_sec = 100");
    let mut r = rig(&policy, Box::new(NoDialog));
    r.mon
        .by_port
        .lock()
        .unwrap()
        .insert(40001, owner(101, "wget", "/opt/good/wget"));
    r.batch(&[tcp(40001, 80, true, b"")]);
    // The peer answers: the connection is established.
    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2(PEER_MAC, GUEST_MAC)
        .ipv4([192, 0, 2, 1], [192, 0, 2, 15], 64)
        .tcp(80, 40001, 7, 65535)
        .syn()
        .ack(2)
        .write(&mut syn_ack, &[])
        .unwrap();
    let mut to_guest = Vec::new();
    netfilter::engine::ingress(&r.shared, &[&syn_ack[..]], &mut to_guest);
    assert_eq!(count(&to_guest), 1);
    // 20,000 SYNs from ports no socket owns, in batches of 200.
    let mut sent_back = 0;
    for b in 0..100u16 {
        let frames: Vec<Vec<u8>> = (0..200u16)
            .map(|i| tcp(1024 + b * 200 + i, 443, true, b""))
            .collect();
        let (fwd, back) = r.batch(&frames);
        assert_eq!(fwd, 0);
        sent_back += back;
        assert!(r.shared.table().len() <= 64);
    }
    assert_eq!(
        sent_back, 20_000,
        "every flood SYN is answered with a reset"
    );
    let c = r.shared.stats.c.values();
    assert!(c.rate_limited >= 19_000, "{c:?}");
    // The rate limit kept the lookups down: at most one per batch.
    assert!(r.mon.requests.lock().unwrap().len() <= 101);
    // The working connection survived the flood.
    assert_eq!(r.batch(&[tcp(40001, 80, false, b"x")]), (1, 0));
    let status = netfilter::control::status(&r.shared);
    assert_eq!(status.table.capacity, 64);
    assert!(status.table.evicted_embryonic > 0);
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let mut r = rig(POLICY, Box::new(NoDialog));
    let good = tcp(40001, 80, true, b"hello");
    let mut frames = vec![Vec::new(), good[..10].to_vec(), good[..30].to_vec()];
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x41;
    frames.push(bad_ihl);
    let mut long_total = good.clone();
    long_total[16] = 0xff;
    frames.push(long_total);
    frames.push(vec![0xff; 1500]);
    // Random bytes of every length.
    let mut x: u32 = 12345;
    for len in 0..200 {
        let f: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        frames.push(f);
    }
    let (fwd, _) = r.batch(&frames);
    let c = r.shared.stats.c.values();
    assert!(c.malformed >= 6, "{c:?}");
    assert_eq!(fwd as u64 + c.dropped_out, frames.len() as u64);
    assert!(r.mon.requests.lock().unwrap().len() <= 1);
}

/// Answers from a script.
struct Scripted(Vec<Answer>, Arc<Mutex<Vec<String>>>);
impl Asker for Scripted {
    fn ask(&mut self, q: &Question, _t: std::time::Duration) -> Answer {
        self.1.lock().unwrap().push(q.text());
        self.0.remove(0)
    }
}

#[test]
fn ask_once_always_and_deny() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let answers = vec![
        Answer::Once,
        Answer::Always,
        Answer::Deny("cancelled".into()),
    ];
    let mut r = rig(POLICY, Box::new(Scripted(answers, asked.clone())));
    {
        let mut m = r.mon.by_port.lock().unwrap();
        for p in 5000..5010 {
            m.insert(p, owner(200, "nc", "/bin/busybox"));
        }
    }
    assert_eq!(r.batch(&[udp(5000, 7000)]), (1, 0)); // once
    assert_eq!(r.batch(&[udp(5001, 7000)]), (1, 0)); // always
    assert_eq!(r.batch(&[udp(5002, 7000)]), (1, 0)); // remembered, not asked
    assert_eq!(r.batch(&[udp(5003, 7001)]), (0, 0)); // another port: asked, denied
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 3);
    assert_eq!(
        asked[0],
        "process nc [200] (/bin/busybox) (uid 1000) in VM test wants to connect to 192.0.2.1:7000 over UDP"
    );
    let reasons: Vec<String> = r
        .audit_lines()
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        ["ask_once", "ask_always", "ask_remembered", "ask_denied"]
    );
    let _: SocketAddr = "1.2.3.4:5".parse().unwrap();
}

fn tcp6(sport: u16, dport: u16, dst: [u8; 16]) -> Vec<u8> {
    let src: [u8; 16] = "2001:db8::15"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(GUEST_MAC, PEER_MAC)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1, 65535)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

#[test]
fn ipv6_flows_are_decided_like_ipv4() {
    let policy = POLICY.replace(
        "dest = \"192.0.2.1/32\"",
        "dest = [\"192.0.2.1/32\", \"2001:db8::1/128\"]",
    );
    let mut r = rig(&policy, Box::new(NoDialog));
    {
        let mut m = r.mon.by_port.lock().unwrap();
        m.insert(40001, owner(101, "wget", "/opt/good/wget"));
        m.insert(40002, owner(102, "wget", "/opt/bad/wget"));
    }
    let peer: [u8; 16] = "2001:db8::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let other: [u8; 16] = "2001:db8::2"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    assert_eq!(r.batch(&[tcp6(40001, 80, peer)]), (1, 0));
    // Denied: answered with an IPv6 reset.
    assert_eq!(r.batch(&[tcp6(40002, 80, peer)]), (0, 1));
    assert_eq!(r.batch(&[tcp6(40001, 81, other)]), (0, 1));
    let lines = r.audit_lines();
    assert_eq!(lines[0]["dst"], "[2001:db8::1]:80");
    assert_eq!(lines[0]["verdict"], "allow");
    assert_eq!(lines[1]["verdict"], "deny");
    assert_eq!(lines[2]["verdict"], "deny");
}

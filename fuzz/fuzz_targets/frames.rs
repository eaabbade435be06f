//! Arbitrary bytes as the stream QEMU hands the packet filter: split into
//! length-prefixed frames, each batch decided from the guest side and the
//! same frames passed from the host side, against a policy with rules of
//! every kind and a stand-in monitor. Nothing may panic, and the connection
//! table must stay within its bound.
#![no_main]

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use monitor_client::taint::{SocketOwner, SocketQuery};
use monitor_client::ClientError;
use netfilter::ask::NoDialog;
use netfilter::audit::Audit;
use netfilter::engine::{self, Egress, Output, Shared, Switches};
use netfilter::frame::FrameReader;
use netfilter::owner::OwnerSource;
use netfilter::policy::Policy;
use netfilter::taint::NamedTaint;

/// Even guest ports belong to a process, odd ones to nobody.
struct Owners;
impl OwnerSource for Owners {
    fn owners(&mut self, q: &[SocketQuery]) -> Result<Vec<Option<SocketOwner>>, ClientError> {
        Ok(q.iter()
            .map(|q| {
                (q.local.port() % 2 == 0).then(|| SocketOwner {
                    pid: q.local.port() as u32,
                    name: if q.local.port() % 4 == 0 { "wget" } else { "exfil" }.into(),
                    uid: 1000,
                    exe: Some("/usr/bin/wget".into()),
                    task: 1,
                })
            })
            .collect())
    }
}

const POLICY: &str = r#"
version = 1
vm = "fuzz"
[defaults]
action = "deny"
icmp = "allow"
inbound = "deny"
[limits]
max_flows = 64
new_flows_per_sec = 1000000
audit_lines_per_sec = 1
[taint]
processes = ["exfil"]
[ask]
principal = "nobody"
[[rule]]
tainted = true
action = "deny"
[[rule]]
exe = "/usr/bin/*"
dest = ["192.0.2.0/24", "2001:db8::/32"]
port = ["1-1024", 8080]
protocol = "tcp"
action = "allow"
[[rule]]
process = "w*"
protocol = "udp"
action = "ask"
"#;

struct Rig {
    shared: Arc<Shared>,
    egress: Egress,
}

static RIG: Mutex<Option<Rig>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = RIG.lock().unwrap_or_else(|p| p.into_inner());
    let rig = guard.get_or_insert_with(|| {
        let policy = Arc::new(Policy::parse(Path::new("fuzz.toml"), POLICY).unwrap());
        let shared = Arc::new(Shared::new(policy.clone(), Switches::new(true, true)));
        let egress = Egress::new(
            shared.clone(),
            Box::new(Owners),
            Box::new(NamedTaint::new(policy.taint_processes.clone())),
            Box::new(NoDialog),
            Audit::open(None, 1).unwrap(),
        );
        Rig { shared, egress }
    });
    let mut reader = FrameReader::new(true);
    let mut input = Cursor::new(data);
    let mut out = Output::default();
    let mut to_guest = Vec::new();
    while let Ok(Some(batch)) = reader.read_batch(&mut input) {
        out.clear();
        rig.egress.process(&batch, &mut out);
        to_guest.clear();
        engine::ingress(&rig.shared, &batch, &mut to_guest);
        assert!(rig.shared.table().len() <= 64);
    }
});

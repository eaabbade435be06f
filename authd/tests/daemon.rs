//! The daemon's socket: peer checks, protocol errors, request ids, and
//! denials that need no prompt. No display needed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use authd::config::FrontendKind;
use authd_client::client::{AuthRequest, ClientError};
use authd_client::protocol::DenyReason;
use common::{Daemon, PASSWORD};

fn no_frontend(dir: &std::path::Path) -> authd::config::Config {
    let mut cfg = Daemon::config(dir);
    cfg.frontend = FrontendKind::Tty; // and no tty configured
    cfg
}

fn req(principal: &str) -> AuthRequest {
    AuthRequest {
        vm: "vm1".into(),
        principal: principal.into(),
        reason: common::reason(),
        lifetime: Duration::from_secs(60),
    }
}

#[test]
fn peers_outside_the_allow_list_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = no_frontend(tmp.path());
    let me = rustix::process::getuid().as_raw();
    cfg.allow_uids = vec![me.wrapping_add(4242)];
    let d = Daemon::start(tmp.path(), cfg);
    match d.client().list_grants(Duration::from_secs(5)) {
        Err(ClientError::Refused(m)) => assert!(m.contains("not allowed"), "{m}"),
        other => panic!("expected refusal, got {other:?}"),
    }
    let rejected = d.audit("peer_rejected");
    assert!(!rejected.is_empty());
    assert!(rejected.iter().all(|r| r["uid"] == me));
    // An authenticate from a refused peer is a denial, never a grant.
    assert!(d
        .client()
        .authenticate(&req("alice"), Duration::from_secs(5))
        .grant()
        .is_none());
}

#[test]
fn denials_without_a_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), no_frontend(tmp.path()));
    d.enroll("alice", PASSWORD);
    let c = d.client();
    let t = Duration::from_secs(5);
    assert_eq!(
        c.authenticate(&req("mallory"), t).deny_reason(),
        Some(DenyReason::UnknownPrincipal)
    );
    assert_eq!(
        c.authenticate(&req("alice"), t).deny_reason(),
        Some(DenyReason::NoFrontend)
    );
    assert_eq!(
        c.authenticate(&req("../etc"), t).deny_reason(),
        Some(DenyReason::BadRequest)
    );
    let mut bad = req("alice");
    bad.reason.path = "/x\n/y".into();
    assert_eq!(
        c.authenticate(&bad, t).deny_reason(),
        Some(DenyReason::BadRequest)
    );
    assert_eq!(d.audit("prompt").len(), 0);
}

#[test]
fn replies_carry_their_request_ids_and_errors_are_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), no_frontend(tmp.path()));
    let s = UnixStream::connect(&d.cfg.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = &s;
    let mut next = || {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        serde_json::from_str::<serde_json::Value>(&l).unwrap()
    };
    w.write_all(b"{\"v\":1,\"id\":10,\"op\":\"list_grants\"}\n{\"v\":1,\"id\":11,\"op\":\"revoke\",\"scope\":\"all\"}\n")
        .unwrap();
    let (a, b) = (next(), next());
    assert_eq!(
        (a["id"].as_u64(), a["result"].as_str()),
        (Some(10), Some("grants"))
    );
    assert_eq!(
        (b["id"].as_u64(), b["result"].as_str()),
        (Some(11), Some("revoked"))
    );
    // A version 1 client is answered in version 1, a version 2 one in 2.
    assert_eq!((a["v"].as_u64(), b["v"].as_u64()), (Some(1), Some(1)));
    w.write_all(b"{\"v\":2,\"id\":14,\"op\":\"list_grants\"}\n")
        .unwrap();
    let c = next();
    assert_eq!(
        (c["v"].as_u64(), c["id"].as_u64(), c["result"].as_str()),
        (Some(2), Some(14), Some("grants"))
    );

    w.write_all(b"{\"v\":3,\"id\":12,\"op\":\"list_grants\"}\n")
        .unwrap();
    let e = next();
    assert_eq!(
        (e["id"].as_u64(), e["result"].as_str()),
        (Some(12), Some("error"))
    );
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("unsupported version 3")),
        "{e}"
    );
    w.write_all(b"{\"v\":1,\"id\":13,\"op\":\"format_disk\"}\n")
        .unwrap();
    let e = next();
    assert_eq!(
        (e["id"].as_u64(), e["result"].as_str()),
        (Some(13), Some("error"))
    );
    w.write_all(b"not json\n").unwrap();
    assert_eq!(next()["result"], "error");
}

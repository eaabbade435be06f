//! What a request may become. Pure: the policy and the request in, a plan
//! or a refusal out, so every rule is tested without guests.
//!
//! The guest's request names the program; the broker takes nothing else
//! from it on trust. The program is matched byte for byte against the
//! `[[delegate]]` entries (nothing is resolved, so `..` and symlink names
//! match nothing); the helper, the ids and the program path the helper
//! runs come from the policy; arguments pass as the user gave them (the
//! program is the administrator's and must treat them as a setuid program
//! does); only the environment variables the entry lists pass, plus a
//! fixed `PATH`.

use delegate_proto::{ErrorCode, Request, Winsize};
use fsd::policy::Policy;

use crate::error::Refusal;

/// `PATH` every job gets.
pub const JOB_PATH: &[u8] = b"PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// A request the policy allows, before authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub program: String,
    pub helper: String,
    /// Whose grant is needed.
    pub principal: String,
    /// The user's ids (real), the owner's (effective).
    pub ruid: u32,
    pub rgid: u32,
    pub euid: u32,
    pub egid: u32,
    /// argv, argv[0] (the program's file name) included.
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    /// Absolute, in the helper's root.
    pub program_path: Vec<u8>,
    pub cwd: Vec<u8>,
    pub tty: Option<Winsize>,
    pub grant_secs: u64,
    pub max_secs: u64,
}

/// Decides what `req` from `vm` may become under `policy`.
pub fn plan(policy: &Policy, vm: &str, req: &Request) -> Result<Plan, Refusal> {
    if req.version != delegate_proto::VERSION {
        return Err(Refusal::new(
            ErrorCode::Version,
            format!(
                "protocol version {} is not understood (this broker speaks {})",
                req.version,
                delegate_proto::VERSION
            ),
        ));
    }
    let shown = String::from_utf8_lossy(&req.program[..req.program.len().min(256)]).into_owned();
    let not_delegated = || {
        Refusal::new(
            ErrorCode::NotDelegated,
            format!("{shown:?} is not a program delegated to this VM"),
        )
    };
    let program = std::str::from_utf8(&req.program).map_err(|_| not_delegated())?;
    let entry = policy.delegate(program).ok_or_else(not_delegated)?;
    if !entry.allows_vm(vm) {
        return Err(not_delegated());
    }
    let vm_principal = policy.vm(vm).map(|v| v.principal.clone()).ok_or_else(|| {
        Refusal::new(
            ErrorCode::NotDelegated,
            format!("VM {vm:?} is not in the policy"),
        )
    })?;
    let principal = entry.principal.clone().unwrap_or(vm_principal);
    let &(ruid, rgid) = policy.principal_ids.get(&principal).ok_or_else(|| {
        // The parser refuses such a policy; fail closed if it ever passes.
        Refusal::new(
            ErrorCode::Internal,
            format!("principal {principal:?} has no uid"),
        )
    })?;
    let mut argv = vec![entry.file_name().as_bytes().to_vec()];
    argv.extend(req.args.iter().cloned());
    let mut env = vec![JOB_PATH.to_vec()];
    for e in &req.env {
        let Some(eq) = e.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = &e[..eq];
        if name != b"PATH" && entry.env.iter().any(|n| n.as_bytes() == name) {
            env.push(e.clone());
        }
    }
    let cwd = match std::str::from_utf8(&req.cwd) {
        Ok(c) if fsd::policy::delegate::plain_share_path(c) => format!("/{c}").into_bytes(),
        _ => b"/".to_vec(),
    };
    Ok(Plan {
        program: entry.program.clone(),
        helper: entry.helper.clone(),
        principal,
        ruid,
        rgid,
        euid: entry.run_as_uid,
        egid: entry.run_as_gid,
        argv,
        env,
        program_path: format!("/{}", entry.program).into_bytes(),
        cwd,
        tty: req.tty,
        grant_secs: entry.grant_secs,
        max_secs: entry.max_secs,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const POLICY: &str = r#"version = 1
[delegation]
client = "usr/libexec/fsd/delegate-client"
[[principal]]
name = "alice"
uid = 1000
[[principal]]
name = "bob"
uid = 1001
gid = 100
[[vm]]
name = "vm1"
principal = "alice"
[[vm]]
name = "vm2"
principal = "bob"
[[delegate]]
program = "usr/bin/passwd"
helper = "helper1"
run_as_uid = 0
env = ["LANG"]
[[delegate]]
program = "usr/bin/only2"
helper = "helper1"
run_as_uid = 5
run_as_gid = 6
vms = ["vm2"]
"#;

    fn req(program: &[u8]) -> Request {
        Request {
            version: delegate_proto::VERSION,
            program: program.to_vec(),
            args: vec![b"-x".to_vec()],
            env: vec![
                b"LANG=C".to_vec(),
                b"LD_PRELOAD=/tmp/evil.so".to_vec(),
                b"PATH=/tmp".to_vec(),
                b"noequals".to_vec(),
            ],
            cwd: b"home/alice".to_vec(),
            tty: None,
        }
    }

    fn policy() -> Policy {
        Policy::parse(Path::new("p.toml"), POLICY).unwrap()
    }

    #[test]
    fn the_vm_user_and_the_owner_come_from_the_policy() {
        let p = plan(&policy(), "vm1", &req(b"usr/bin/passwd")).unwrap();
        assert_eq!((p.ruid, p.rgid, p.euid, p.egid), (1000, 1000, 0, 0));
        assert_eq!(p.principal, "alice");
        assert_eq!(p.argv, [b"passwd".to_vec(), b"-x".to_vec()]);
        assert_eq!(p.env, [JOB_PATH.to_vec(), b"LANG=C".to_vec()]);
        assert_eq!(p.program_path, b"/usr/bin/passwd");
        assert_eq!(p.cwd, b"/home/alice");
        let p = plan(&policy(), "vm2", &req(b"usr/bin/only2")).unwrap();
        assert_eq!((p.ruid, p.rgid, p.euid, p.egid), (1001, 100, 5, 6));
        assert_eq!(p.principal, "bob");
    }

    #[test]
    fn tricks_are_not_delegated() {
        let pol = policy();
        for bad in [
            &b"usr/bin/../bin/passwd"[..],
            b"/usr/bin/passwd",
            b"usr//bin/passwd",
            b"usr/bin/passwd\0",
            b"usr/bin/passwd/",
            b"tmp/link-to-passwd",
            b"usr/bin/sh",
            b"",
            &[0xff, 0xfe],
        ] {
            let e = plan(&pol, "vm1", &req(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::NotDelegated, "{bad:?}");
        }
        // An entry for other VMs only; an unknown VM.
        assert_eq!(
            plan(&pol, "vm1", &req(b"usr/bin/only2")).unwrap_err().code,
            ErrorCode::NotDelegated
        );
        assert_eq!(
            plan(&pol, "vm9", &req(b"usr/bin/passwd")).unwrap_err().code,
            ErrorCode::NotDelegated
        );
        let mut r = req(b"usr/bin/passwd");
        r.version = 9;
        assert_eq!(plan(&pol, "vm1", &r).unwrap_err().code, ErrorCode::Version);
        // A working directory with `..` runs in `/`.
        r = req(b"usr/bin/passwd");
        r.cwd = b"home/../etc".to_vec();
        assert_eq!(plan(&pol, "vm1", &r).unwrap().cwd, b"/");
    }
}

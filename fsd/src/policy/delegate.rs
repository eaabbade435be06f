//! `[[delegate]]` entries: programs a user VM may have a helper VM run on
//! its user's behalf (docs/delegation.md).
//!
//! ```toml
//! [delegation]
//! client = "usr/libexec/fsd/delegate-client"   # shown in place of each program
//!
//! [[principal]]
//! name = "alice"
//! uid = 1000                   # her ids in the guests (gid defaults to uid)
//!
//! [[delegate]]
//! program = "usr/bin/passwd"   # in the share
//! helper = "helper1"           # the helper VM that runs it
//! run_as_uid = 0               # its owner: the effective uid it runs with
//! env = ["LANG", "TERM"]       # variables passed on; nothing else is
//! ```
//!
//! The entries live in fsd's policy because the two halves of delegation
//! must agree: fsd shows the user VM the client in place of the program
//! (so the real binary never runs there), and the broker decides on the
//! same entries. Both read this one parser.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::file::{PolicyError, Vm};

/// Longest run a delegate entry may allow.
pub const MAX_RUN_SECS: u64 = 24 * 3600;

/// One checked `[[delegate]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegate {
    /// The program's path relative to the share root: a plain path, no
    /// pattern, no `.` or `..` component.
    pub program: String,
    /// Name of the helper VM (as the broker knows it) that runs it.
    pub helper: String,
    /// Effective uid and gid in the helper VM: the program's owner.
    pub run_as_uid: u32,
    pub run_as_gid: u32,
    /// Whose grant is needed; `None`: the calling VM's principal.
    pub principal: Option<String>,
    /// VMs that may call it; empty: every `[[vm]]` of the policy.
    pub vms: Vec<String>,
    /// Names of environment variables passed on.
    pub env: Vec<String>,
    /// Lifetime of the grant asked for, when none is live.
    pub grant_secs: u64,
    /// Longest the program may run before the helper kills it.
    pub max_secs: u64,
    /// Line of the entry in the policy file.
    pub line: usize,
}

impl Delegate {
    /// The last component of [`Delegate::program`].
    pub fn file_name(&self) -> &str {
        self.program.rsplit('/').next().unwrap_or(&self.program)
    }

    /// Whether `vm` may call this program.
    pub fn allows_vm(&self, vm: &str) -> bool {
        self.vms.is_empty() || self.vms.iter().any(|v| v == vm)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelegation {
    pub client: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelegate {
    pub program: Spanned<String>,
    pub helper: Spanned<String>,
    pub run_as_uid: u32,
    pub run_as_gid: Option<u32>,
    pub principal: Option<Spanned<String>>,
    #[serde(default)]
    pub vms: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    pub grant_secs: Option<Spanned<u64>>,
    pub max_secs: Option<Spanned<u64>>,
}

/// Whether `p` is a plain path inside the share: relative, non-empty
/// components, none of them `.` or `..`, and no glob characters.
pub fn plain_share_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains(['*', '?', '[', ']', '{', '}', '\0', '\\'])
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Whether `name` is an environment variable name a policy may list.
pub fn env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// An error at a place in the policy file.
type ErrAt<'a> = &'a dyn Fn(Option<std::ops::Range<usize>>, String) -> PolicyError;
/// A principal's name, checked to be declared.
type Known<'a> = &'a dyn Fn(&Spanned<String>, &str) -> Result<String, PolicyError>;
/// A number of seconds, checked to be within the policy's bounds.
type Secs<'a> = &'a dyn Fn(&Spanned<u64>, &str) -> Result<std::time::Duration, PolicyError>;

/// What [`check`] needs of the parse in progress.
pub(super) struct Context<'a> {
    pub src: &'a str,
    pub err: ErrAt<'a>,
    pub known: Known<'a>,
    pub secs: Secs<'a>,
    pub vms: &'a [Vm],
    pub principal_ids: &'a HashMap<String, (u32, u32)>,
    pub default_grant: std::time::Duration,
}

/// Checks `[delegation]` and the `[[delegate]]` entries; the client's path
/// and the entries, or the first problem with its line.
pub(super) fn check(
    delegation: &Option<RawDelegation>,
    entries: &[Spanned<RawDelegate>],
    cx: &Context,
) -> Result<(Option<String>, Vec<Delegate>), PolicyError> {
    let delegation_client = match delegation {
        Some(d) if !plain_share_path(d.client.get_ref()) => {
            return Err((cx.err)(
                Some(d.client.span()),
                "the delegation client must be a plain path in the share \
                 (relative, no pattern, no \".\" or \"..\")"
                    .into(),
            ))
        }
        Some(d) => Some(d.client.get_ref().clone()),
        None => None,
    };
    let mut delegates: Vec<Delegate> = Vec::new();
    for d in entries {
        let line = super::file::line_of(cx.src, d.span().start);
        let d = d.get_ref();
        let program = d.program.get_ref();
        if !plain_share_path(program) {
            return Err((cx.err)(
                Some(d.program.span()),
                "a delegated program must be a plain path in the share \
                 (relative, no pattern, no \".\" or \"..\")"
                    .into(),
            ));
        }
        if delegates.iter().any(|o| &o.program == program)
            || delegation_client.as_ref() == Some(program)
        {
            return Err((cx.err)(
                Some(d.program.span()),
                format!("{program:?} is delegated twice, or is the delegation client"),
            ));
        }
        if delegation_client.is_none() {
            return Err((cx.err)(
                Some(d.program.span()),
                "[[delegate]] needs [delegation] client = \"PATH\": what the user VM \
                 sees in place of the program"
                    .into(),
            ));
        }
        if d.helper.get_ref().is_empty() {
            return Err((cx.err)(Some(d.helper.span()), "helper is empty".into()));
        }
        let principal = match &d.principal {
            Some(p) => Some((cx.known)(p, "delegate principal")?),
            None => None,
        };
        for who in principal.iter().cloned().chain(
            cx.vms
                .iter()
                .filter(|v| d.vms.is_empty() || d.vms.iter().any(|n| n.get_ref() == &v.name))
                .map(|v| v.principal.clone()),
        ) {
            if !cx.principal_ids.contains_key(&who) {
                return Err((cx.err)(
                    Some(d.program.span()),
                    format!(
                        "principal {who:?} may run {program:?} but has no uid: \
                         add uid = N to its [[principal]]"
                    ),
                ));
            }
        }
        for v in &d.vms {
            if !cx.vms.iter().any(|m| &m.name == v.get_ref()) {
                return Err((cx.err)(
                    Some(v.span()),
                    format!("vm {:?} is not a declared [[vm]]", v.get_ref()),
                ));
            }
        }
        for e in &d.env {
            if !env_name(e.get_ref()) {
                return Err((cx.err)(
                    Some(e.span()),
                    format!("{:?} is not an environment variable name", e.get_ref()),
                ));
            }
        }
        let max_secs = match &d.max_secs {
            Some(s) if *s.get_ref() == 0 || *s.get_ref() > MAX_RUN_SECS => {
                return Err((cx.err)(
                    Some(s.span()),
                    format!("max_secs must be between 1 and {} seconds", MAX_RUN_SECS),
                ))
            }
            Some(s) => *s.get_ref(),
            None => 600,
        };
        delegates.push(Delegate {
            program: program.clone(),
            helper: d.helper.get_ref().clone(),
            run_as_uid: d.run_as_uid,
            run_as_gid: d.run_as_gid.unwrap_or(d.run_as_uid),
            principal,
            vms: d.vms.iter().map(|v| v.get_ref().clone()).collect(),
            env: d.env.iter().map(|e| e.get_ref().clone()).collect(),
            grant_secs: match &d.grant_secs {
                Some(s) => (cx.secs)(s, "grant_secs")?.as_secs(),
                None => cx.default_grant.as_secs(),
            },
            max_secs,
            line,
        });
    }
    Ok((delegation_client, delegates))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{Policy, PolicyError};

    const BASE: &str = r#"version = 1

[delegation]
client = "usr/libexec/fsd/delegate-client"

[[principal]]
name = "alice"
uid = 1000

[[principal]]
name = "admin"

[[vm]]
name = "vm1"
principal = "alice"

[[delegate]]
program = "usr/bin/passwd"
helper = "helper1"
run_as_uid = 0
env = ["LANG", "TERM"]
"#;

    fn parse(s: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("p.toml"), s)
    }

    #[test]
    fn entry_with_defaults() {
        let p = parse(BASE).unwrap();
        let d = p.delegate("usr/bin/passwd").unwrap();
        assert_eq!(d.file_name(), "passwd");
        assert_eq!((d.run_as_uid, d.run_as_gid), (0, 0));
        assert_eq!(d.helper, "helper1");
        assert_eq!(d.env, ["LANG", "TERM"]);
        assert_eq!((d.grant_secs, d.max_secs, d.line), (300, 600, 17));
        assert!(d.principal.is_none() && d.allows_vm("vm1") && d.allows_vm("other"));
        assert_eq!(p.principal_ids["alice"], (1000, 1000));
        assert!(!p.principal_ids.contains_key("admin"));
        assert_eq!(
            p.delegation_client.as_deref(),
            Some("usr/libexec/fsd/delegate-client")
        );
        // Matched byte for byte: nothing is resolved.
        for other in [
            "usr/bin/../bin/passwd",
            "/usr/bin/passwd",
            "usr/bin/passwd/",
            "passwd",
        ] {
            assert!(p.delegate(other).is_none(), "{other}");
        }
    }

    #[test]
    fn what_makes_no_sense_is_refused_with_its_line() {
        let cases = [
            (BASE.replace("usr/bin/passwd", "usr/../bin/passwd"), 18),
            (BASE.replace("usr/bin/passwd", "usr/bin/*"), 18),
            (BASE.replace("usr/bin/passwd", "/usr/bin/passwd"), 18),
            (BASE.replace("\"TERM\"", "\"TE RM\""), 21),
            (BASE.replace("uid = 1000\n", ""), 17),
            (format!("{BASE}principal = \"mallory\"\n"), 22),
            (format!("{BASE}vms = [\"vm9\"]\n"), 22),
            (format!("{BASE}max_secs = 0\n"), 22),
            (
                BASE.replace("client = \"usr/libexec/fsd/delegate-client\"", "client = \"../x\""),
                4,
            ),
            (
                format!("{BASE}\n[[delegate]]\nprogram = \"usr/bin/passwd\"\nhelper = \"h\"\nrun_as_uid = 0\n"),
                24,
            ),
            (format!("{BASE}frobnicate = 1\n"), 22),
        ];
        for (text, line) in cases {
            let e = parse(&text).expect_err(&text);
            assert_eq!(e.line, Some(line), "{e}\n{text}");
        }
        let no_client = BASE.replace(
            "[delegation]\nclient = \"usr/libexec/fsd/delegate-client\"\n",
            "",
        );
        let e = parse(&no_client).unwrap_err();
        assert!(e.message.contains("[delegation] client"), "{e}");
    }

    #[test]
    fn plain_paths_and_names() {
        assert!(plain_share_path("usr/bin/passwd"));
        for bad in ["", "/x", "a//b", "a/./b", "a/..", "a/b/", "a*", "a\\b"] {
            assert!(!plain_share_path(bad), "{bad}");
        }
        assert!(env_name("LC_ALL") && !env_name("1X") && !env_name("A=B") && !env_name(""));
    }
}

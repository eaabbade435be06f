//! The policy file (TOML).
//!
//! ```toml
//! version = 1
//!
//! [[principal]]
//! name = "alice"
//!
//! [[vm]]
//! name = "vm1"
//! principal = "alice"
//!
//! [[rule]]
//! path = "home/alice/secret/**"   # the directory and everything beneath
//! owner = "alice"
//! protect = ["read", "write", "metadata", "exec"]
//! without_grant = "ask"      # or "deny"
//! cache = "direct"           # or "flush"
//! grant_secs = 300
//! confidential = true        # a taint source (default for protected files)
//! inherit = true             # files written from it get this label (default likewise)
//!
//! [[rule]]
//! path = "srv/reports/**"    # tracked, not protected
//! owner = "alice"
//! protect = []
//! confidential = true
//! ```
//!
//! A policy that does not parse or does not make sense is refused as a
//! whole, with the file, the line and the problem; fsd then keeps the policy
//! it had (on SIGHUP) or does not start.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::delegate::{self, Delegate, RawDelegate, RawDelegation};
use serde::Deserialize;
use toml::Spanned;

/// What a rule protects, as a bit set (checked on every request, so cheap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Protect(u8);

impl Protect {
    pub const READ: Protect = Protect(1);
    pub const WRITE: Protect = Protect(2);
    pub const METADATA: Protect = Protect(4);
    pub const EXEC: Protect = Protect(8);
    pub const ALL: Protect = Protect(15);

    pub fn contains(self, other: Protect) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn union(self, other: Protect) -> Protect {
        Protect(self.0 | other.0)
    }
}

/// What happens to a protected request without a live grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Answer EACCES at once.
    Deny,
    /// Ask authd and wait for the person's answer.
    Ask,
}

/// How the guest may cache protected content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheRule {
    /// Never: every read goes to fsd (direct I/O).
    Direct,
    /// Cache, and have the monitor flush the guest's copy when the grant ends.
    Flush,
}

/// One checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The path pattern, relative to the share root; also the rule's identity.
    pub pattern: String,
    pub owner: String,
    pub protect: Protect,
    pub without_grant: Missing,
    pub cache: CacheRule,
    pub grant: Duration,
    /// Whether its files are taint sources: the monitor follows their data
    /// (docs/taint.md). True by default for a rule that protects.
    pub confidential: bool,
    /// Whether a file written by a process that read one of its files gets
    /// its label (docs/policy.md, "Labels that follow data"). True by
    /// default for a rule that protects.
    pub inherit: bool,
    /// Line of the rule in the policy file.
    pub line: usize,
}

impl Rule {
    /// A rule that protects nothing and only marks files confidential.
    pub fn tracks_only(&self) -> bool {
        self.protect == Protect::default()
    }
}

/// A VM this policy covers, and the person who uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub principal: String,
}

/// A checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub source: PathBuf,
    pub principals: Vec<String>,
    pub vms: Vec<Vm>,
    pub rules: Vec<Rule>,
    /// How long fsd waits for an answer from authd.
    pub ask_timeout: Duration,
    /// Uid and gid of each principal in the guests, where given (needed by
    /// delegation: the real uid a delegated program runs with).
    pub principal_ids: std::collections::HashMap<String, (u32, u32)>,
    /// Programs run in a helper VM on the user's behalf (`[[delegate]]`).
    pub delegates: Vec<Delegate>,
    /// What a user VM sees in place of a delegated program: the client, a
    /// path in the share (`[delegation] client`).
    pub delegation_client: Option<String>,
    globs: GlobSet,
    /// Rule of each glob in `globs` (a `dir/**` rule has two: `dir/**` and `dir`).
    glob_rule: Vec<u32>,
}

/// A policy refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    #[serde(default)]
    principal: Vec<RawPrincipal>,
    #[serde(default)]
    vm: Vec<RawVm>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    delegate: Vec<Spanned<RawDelegate>>,
    delegation: Option<RawDelegation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: Spanned<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: Spanned<String>,
    principal: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    without_grant: Option<Missing>,
    cache: Option<CacheRule>,
    grant_secs: Option<Spanned<u64>>,
    ask_timeout_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawProtect {
    Read,
    Write,
    Metadata,
    Exec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: Spanned<String>,
    owner: Spanned<String>,
    protect: Option<Spanned<Vec<RawProtect>>>,
    without_grant: Option<Missing>,
    cache: Option<CacheRule>,
    grant_secs: Option<Spanned<u64>>,
    confidential: Option<Spanned<bool>>,
    inherit: Option<Spanned<bool>>,
}

/// Longest grant a policy may ask for.
pub const MAX_GRANT: Duration = Duration::from_secs(24 * 3600);

pub(super) fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let src = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: path.into(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &src)
    }

    /// Checks a policy given as text (`path` names it in errors).
    pub fn parse(path: &Path, src: &str) -> Result<Policy, PolicyError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| PolicyError {
            file: path.into(),
            line: span.map(|s| line_of(src, s.start)),
            message,
        };
        let raw: RawPolicy =
            toml::from_str(src).map_err(|e| err(e.span(), e.message().to_string()))?;
        if *raw.version.get_ref() != 1 {
            return Err(err(
                Some(raw.version.span()),
                format!(
                    "version {} is not understood (this fsd reads version 1)",
                    raw.version.get_ref()
                ),
            ));
        }
        let mut principals = Vec::new();
        let mut principal_ids = std::collections::HashMap::new();
        let mut seen = HashSet::new();
        for p in &raw.principal {
            let name = p.name.get_ref();
            if name.is_empty() || !seen.insert(name.clone()) {
                return Err(err(
                    Some(p.name.span()),
                    format!("principal {name:?} is empty or declared twice"),
                ));
            }
            principals.push(name.clone());
            if let Some(uid) = p.uid {
                principal_ids.insert(name.clone(), (uid, p.gid.unwrap_or(uid)));
            }
        }
        let known = |n: &Spanned<String>, what: &str| -> Result<String, PolicyError> {
            if seen.contains(n.get_ref()) {
                Ok(n.get_ref().clone())
            } else {
                Err(err(
                    Some(n.span()),
                    format!("{what} {:?} is not a declared [[principal]]", n.get_ref()),
                ))
            }
        };
        let mut vms = Vec::new();
        let mut vm_names = HashSet::new();
        for v in &raw.vm {
            if !vm_names.insert(v.name.get_ref().clone()) {
                return Err(err(
                    Some(v.name.span()),
                    format!("vm {:?} is declared twice", v.name.get_ref()),
                ));
            }
            vms.push(Vm {
                name: v.name.get_ref().clone(),
                principal: known(&v.principal, "vm principal")?,
            });
        }
        let secs = |s: &Spanned<u64>, what: &str| -> Result<Duration, PolicyError> {
            let d = Duration::from_secs(*s.get_ref());
            if d.is_zero() || d > MAX_GRANT {
                return Err(err(
                    Some(s.span()),
                    format!(
                        "{what} must be between 1 and {} seconds",
                        MAX_GRANT.as_secs()
                    ),
                ));
            }
            Ok(d)
        };
        let d = &raw.defaults;
        let default_grant = match &d.grant_secs {
            Some(s) => secs(s, "grant_secs")?,
            None => Duration::from_secs(300),
        };
        let ask_timeout = match &d.ask_timeout_secs {
            Some(s) => secs(s, "ask_timeout_secs")?,
            None => Duration::from_secs(120),
        };
        let mut rules = Vec::new();
        let mut globs = GlobSetBuilder::new();
        let mut glob_rule = Vec::new();
        let mut patterns = HashSet::new();
        for r in &raw.rule {
            let line = line_of(src, r.span().start);
            let r = r.get_ref();
            let pattern = r.path.get_ref().trim_start_matches('/').to_string();
            if pattern.is_empty() || pattern.split('/').any(|c| c == "..") {
                return Err(err(
                    Some(r.path.span()),
                    "a rule path must be a pattern inside the share, without \"..\"".into(),
                ));
            }
            if !patterns.insert(pattern.clone()) {
                return Err(err(
                    Some(r.path.span()),
                    format!("two rules have the path {pattern:?}"),
                ));
            }
            let glob = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| err(Some(r.path.span()), format!("bad path pattern: {e}")))?;
            globs.add(glob);
            glob_rule.push(rules.len() as u32);
            // `dir/**` protects `dir` itself too: making or removing entries
            // in it changes what the protected tree holds.
            if let Some(dir) = pattern.strip_suffix("/**") {
                let glob = GlobBuilder::new(dir)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| err(Some(r.path.span()), format!("bad path pattern: {e}")))?;
                globs.add(glob);
                glob_rule.push(rules.len() as u32);
            }
            let confidential = r.confidential.as_ref().map(|c| *c.get_ref());
            let protect = match &r.protect {
                None => Protect::ALL,
                // Only tracked: confidential, not protected.
                Some(list) if list.get_ref().is_empty() && confidential == Some(true) => {
                    Protect::default()
                }
                Some(list) if list.get_ref().is_empty() => {
                    return Err(err(
                        Some(list.span()),
                        "protect = [] protects nothing: name at least one of read, write, \
                         metadata, exec, or add confidential = true to track these files \
                         without protecting them"
                            .into(),
                    ))
                }
                Some(list) => list.get_ref().iter().fold(Protect::default(), |acc, p| {
                    acc.union(match p {
                        RawProtect::Read => Protect::READ,
                        RawProtect::Write => Protect::WRITE,
                        RawProtect::Metadata => Protect::METADATA,
                        RawProtect::Exec => Protect::EXEC,
                    })
                }),
            };
            let protects = protect != Protect::default();
            let confidential = confidential.unwrap_or(protects);
            let inherit = match &r.inherit {
                Some(i) if *i.get_ref() && !confidential => {
                    return Err(err(
                        Some(i.span()),
                        "inherit = true needs confidential = true: a derived file inherits \
                         the label of the confidential file its data came from"
                            .into(),
                    ))
                }
                Some(i) => *i.get_ref(),
                None => protects && confidential,
            };
            rules.push(Rule {
                pattern,
                owner: known(&r.owner, "rule owner")?,
                protect,
                without_grant: r.without_grant.or(d.without_grant).unwrap_or(Missing::Deny),
                cache: r.cache.or(d.cache).unwrap_or(CacheRule::Direct),
                grant: match &r.grant_secs {
                    Some(s) => secs(s, "grant_secs")?,
                    None => default_grant,
                },
                confidential,
                inherit,
                line,
            });
        }
        let globs = globs
            .build()
            .map_err(|e| err(None, format!("path patterns: {e}")))?;
        let (delegation_client, delegates) = delegate::check(
            &raw.delegation,
            &raw.delegate,
            &delegate::Context {
                src,
                err: &err,
                known: &known,
                secs: &secs,
                vms: &vms,
                principal_ids: &principal_ids,
                default_grant,
            },
        )?;
        Ok(Policy {
            source: path.into(),
            principals,
            vms,
            rules,
            ask_timeout,
            principal_ids,
            delegates,
            delegation_client,
            globs,
            glob_rule,
        })
    }

    /// The first rule (in file order) whose pattern matches `rel`, a path
    /// relative to the share root without a leading slash.
    pub fn rule_for(&self, rel: &str) -> Option<u32> {
        // The set tests every pattern at once; the lowest index wins.
        self.globs
            .matches(rel)
            .into_iter()
            .map(|g| self.glob_rule[g])
            .min()
    }

    /// The rule at `index`; `None` only in the instant a reload renumbers
    /// rules, which callers treat as "protected, deny".
    pub fn rule(&self, index: u32) -> Option<&Rule> {
        self.rules.get(index as usize)
    }

    pub fn rule_by_pattern(&self, pattern: &str) -> Option<u32> {
        self.rules
            .iter()
            .position(|r| r.pattern == pattern)
            .map(|i| i as u32)
    }

    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The `[[delegate]]` entry of `program` (a path in the share, matched
    /// byte for byte: nothing is resolved, so `..` or a symlink name never
    /// reaches an entry).
    pub fn delegate(&self, program: &str) -> Option<&Delegate> {
        self.delegates.iter().find(|d| d.program == program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1

[[principal]]
name = "alice"

[[principal]]
name = "bob"

[[vm]]
name = "vm1"
principal = "bob"

[defaults]
without_grant = "ask"
grant_secs = 60

[[rule]]
path = "secret/**"
owner = "alice"

[[rule]]
path = "/notes/*.txt"
owner = "bob"
protect = ["write"]
without_grant = "deny"
cache = "flush"
grant_secs = 10
"#;

    fn parse(s: &str) -> Result<Policy, PolicyError> {
        Policy::parse(Path::new("p.toml"), s)
    }

    #[test]
    fn good_policy() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.rules.len(), 2);
        let r = &p.rules[0];
        assert_eq!(
            (r.owner.as_str(), r.protect, r.without_grant),
            ("alice", Protect::ALL, Missing::Ask)
        );
        assert_eq!(
            (r.cache, r.grant, r.line),
            (CacheRule::Direct, Duration::from_secs(60), 18)
        );
        let r = &p.rules[1];
        assert_eq!(r.pattern, "notes/*.txt");
        assert!(r.protect.contains(Protect::WRITE) && !r.protect.contains(Protect::READ));
        assert_eq!(p.rule_for("secret/a/b.txt"), Some(0));
        assert_eq!(p.rule_for("secret"), Some(0), "dir/** covers dir");
        assert_eq!(p.rule_for("secretive"), None);
        assert_eq!(p.rule_for("notes/x.txt"), Some(1));
        assert_eq!(p.rule_for("notes/sub/x.txt"), None, "* does not cross /");
        assert_eq!(p.rule_for("other"), None);
        assert_eq!(p.vm("vm1").unwrap().principal, "bob");
    }

    fn bad(s: &str) -> PolicyError {
        parse(s).expect_err("must be refused")
    }

    #[test]
    fn errors_name_the_line() {
        let e = bad(&GOOD.replace("owner = \"alice\"", "owner = \"mallory\""));
        assert_eq!(e.line, Some(20), "{e}");
        assert!(
            e.to_string()
                .starts_with("p.toml:20: rule owner \"mallory\""),
            "{e}"
        );

        let e = bad(&GOOD.replace("cache = \"flush\"", "cache = \"sometimes\""));
        assert_eq!(e.line, Some(27), "{e}");

        let e = bad(&GOOD.replace("grant_secs = 10", "grant_secs = 0"));
        assert_eq!(e.line, Some(28), "{e}");

        let e = bad(&GOOD.replace("path = \"secret/**\"", "path = \"../etc/**\""));
        assert_eq!(e.line, Some(19), "{e}");

        let e = bad(&GOOD.replace("protect = [\"write\"]", "protect = [\"wrte\"]"));
        assert_eq!(e.line, Some(25), "{e}");

        let e = bad(&GOOD.replace("version = 1", "version = 2"));
        assert_eq!(e.line, Some(2), "{e}");

        let e = bad(&format!("{GOOD}\nfrobnicate = true\n"));
        assert!(e.message.contains("frobnicate"), "{e}");

        let e = bad("version = 1\n[[rule]]\npath = \"a/[\"\nowner = \"x\"\n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    fn with_rule(lines: &str) -> Result<Policy, PolicyError> {
        parse(&format!(
            "version = 1\n[[principal]]\nname = \"a\"\n[[rule]]\npath = \"r/**\"\nowner = \"a\"\n{lines}"
        ))
    }

    #[test]
    fn confidential_and_inherit() {
        // Protected files are sources, and their data carries the label on.
        let r = &with_rule("").unwrap().rules[0];
        assert!(r.confidential && r.inherit && !r.tracks_only());
        // Either can be turned off.
        let r = &with_rule("confidential = false\n").unwrap().rules[0];
        assert!(!r.confidential && !r.inherit);
        let r = &with_rule("inherit = false\n").unwrap().rules[0];
        assert!(r.confidential && !r.inherit);
        // Track only: nothing protected, the files are sources.
        let p = with_rule("protect = []\nconfidential = true\n").unwrap();
        let r = &p.rules[0];
        assert!(r.tracks_only() && r.confidential && !r.inherit);
        assert_eq!(
            p.rule_for("r/x"),
            Some(0),
            "track-only files are labelled too"
        );
        let r = &with_rule("protect = []\nconfidential = true\ninherit = true\n")
            .unwrap()
            .rules[0];
        assert!(r.tracks_only() && r.inherit);
        // What makes no sense is refused, with the line.
        let e = with_rule("protect = []\n").unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("confidential = true"), "{e}");
        let e = with_rule("protect = []\nconfidential = false\n").unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        let e = with_rule("confidential = false\ninherit = true\n").unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(with_rule("confidential = \"yes\"\n").is_err());
    }
}

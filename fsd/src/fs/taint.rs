//! What the file system does for taint tracking: report file accesses to
//! the monitor, and label files written with a rule's data.
//!
//! Both run on the request path, after the access was allowed, and both
//! cost next to nothing when they have nothing to do: a report is one
//! lookup of the node's host identity and a `try_send` of a fixed-size
//! event (see [`crate::taint_link`]); the inheritance check on WRITE is one
//! atomic load while no process has read a file whose rule inherits, and a
//! hash lookup otherwise. Labelling itself (finding the inode's host name
//! and generation) happens once per file, on its first write by such a
//! process, since the label then answers the next checks.

use std::io;

use fuse_backend_rs::api::filesystem::Context;
use monitor_client::taint::FileAccess;

use super::identity::id_at;
use super::{cpath, SharedFs};
use crate::policy::labels::InodeKey;
use crate::policy::Guard;
use crate::taint_link::{FsView, TapEvent, NO_RULE};

impl SharedFs {
    /// An allowed access of `node`, labelled with `rule` if any: reported
    /// to the monitor (with `--monitor-socket`), and remembered as a read
    /// of `rule`'s data when the rule inherits.
    pub(super) fn observe(&self, ctx: &Context, node: u64, access: FileAccess, rule: Option<u32>) {
        let pid = ctx.pid as u32;
        if let (Some(g), Some(r), true) = (&self.guard, rule, access.reads()) {
            g.note_read(pid, r);
        }
        let Some(tap) = &self.taint else {
            return;
        };
        let Some(key) = self.nodes.key(node) else {
            return;
        };
        tap.record(TapEvent {
            pid,
            node,
            key,
            access,
            rule: rule.unwrap_or(NO_RULE),
        });
    }

    /// Before a WRITE to `node`, which carries no label: when the writing
    /// process read a file whose rule inherits, the file gets that rule's
    /// label (see [`crate::policy::inherit`] for what the guest-written pid
    /// is worth). Returns the rule given.
    pub(super) fn inherit_on_write(&self, ctx: &Context, node: u64) -> Option<u32> {
        let g = self.guard.as_ref()?;
        let pid = ctx.pid as u32;
        let rule = g.readers.rule_of(pid)?;
        let key = self.nodes.key(node)?;
        match self.label_written(g, node, key, rule) {
            Ok(path) => {
                g.audit_inherited(
                    rule,
                    &path,
                    pid,
                    "written by a process that read a file of this rule",
                );
                Some(rule)
            }
            Err(e) => {
                log::warn!("could not label node {node} as derived: {e}");
                None
            }
        }
    }

    /// Gives the inode `key` (node `node`) `rule`'s label unless it has
    /// one; returns its path for the audit log.
    fn label_written(&self, g: &Guard, node: u64, key: InodeKey, rule: u32) -> io::Result<String> {
        let rel = self.host_path(node)?;
        let (id, mode) = id_at(self.confined.root_fd(), &cpath(&rel)?)?;
        if (id.dev, id.ino) != key {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let path = rel.to_string_lossy().into_owned();
        if g.labels.validate(id).is_some() {
            return Ok(path);
        }
        let dir = mode & libc::S_IFMT == libc::S_IFDIR;
        g.labels
            .label(&g.policy(), id, rule, dir)
            .map_err(io::Error::other)?;
        Ok(path)
    }
}

impl FsView for SharedFs {
    fn path(&self, node: u64, key: InodeKey) -> Option<String> {
        if self.nodes.key(node) != Some(key) {
            return None;
        }
        let rel = self.host_path(node).ok()?;
        Some(rel.to_string_lossy().into_owned())
    }

    fn source_rule(&self, rule: u32) -> Option<String> {
        self.guard.as_ref()?.confidential_pattern(rule)
    }

    fn derived(&self, node: u64, key: InodeKey, rule: &str) {
        let Some(g) = &self.guard else {
            return;
        };
        let policy = g.policy();
        let Some(r) = policy.rule_by_pattern(rule) else {
            return;
        };
        if !policy.rule(r).is_some_and(|r| r.inherit) || g.labels.has_key(key) {
            return;
        }
        if self.nodes.key(node) != Some(key) {
            // The guest forgot the node: the file is labelled when it is
            // next found protected, or not at all (see docs/taint.md).
            return;
        }
        match self.label_written(g, node, key, r) {
            Ok(path) => g.audit_inherited(
                r,
                &path,
                0,
                "the monitor found it written with data of this rule",
            ),
            Err(e) => log::warn!("could not label node {node} as derived: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::nodes::Limits;
    use crate::fs::SharedFsOptions;
    use crate::policy::audit::AuditLog;
    use crate::policy::grants::NoGrants;
    use crate::policy::grants::{AccessRequest, GrantSource, Refusal};
    use crate::policy::Policy;
    use fuse_backend_rs::abi::fuse_abi::FsOptions;
    use fuse_backend_rs::api::filesystem::{FileSystem, ROOT_ID};
    use monitor_client::protocol::{to_line, Op, Reply, ReplyBody, Request};
    use std::ffi::CString;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    /// Every grant is live: the test is about what follows an allowed read.
    struct Granted;

    impl GrantSource for Granted {
        fn is_live(&self, _: &str, _: &str) -> bool {
            true
        }
        fn ask(&self, _: &AccessRequest, _: Duration) -> Result<(), Refusal> {
            Ok(())
        }
    }

    const POLICY: &str = r#"
version = 1
[[principal]]
name = "alice"
[[vm]]
name = "vm1"
principal = "alice"
[[rule]]
path = "secret/**"
owner = "alice"
[[rule]]
path = "reports/**"
owner = "alice"
protect = []
confidential = true
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        audit: PathBuf,
        fs: Arc<SharedFs>,
        guard: Arc<Guard>,
    }

    fn fixture(taint: Option<crate::taint_link::TaintTap>) -> Fixture {
        fixture_with(taint, Arc::new(Granted))
    }

    fn fixture_with(
        taint: Option<crate::taint_link::TaintTap>,
        grants: Arc<dyn GrantSource>,
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        for d in ["secret", "reports", "tmp"] {
            std::fs::create_dir_all(share.join(d)).unwrap();
        }
        for f in [
            "secret/a.txt",
            "reports/r.txt",
            "tmp/out",
            "tmp/out2",
            "tmp/out3",
        ] {
            std::fs::write(share.join(f), b"data").unwrap();
        }
        let audit = dir.path().join("audit.log");
        let policy = Policy::parse(Path::new("p.toml"), POLICY).unwrap();
        let guard = Arc::new(Guard::new(
            "vm1".into(),
            policy,
            AuditLog::open(&audit).unwrap(),
            grants,
            Box::new(|| Ok(String::new())),
            share.clone(),
        ));
        guard.labels.scan(&guard.policy(), &share);
        let cfg = fuse_backend_rs::passthrough::Config {
            root_dir: share.to_string_lossy().into_owned(),
            do_import: false,
            ..Default::default()
        };
        let fs = SharedFs::new(
            cfg,
            std::fs::File::open(&share).unwrap(),
            SharedFsOptions {
                readonly: false,
                xattr: false,
                announce_submounts: false,
                readdirplus: false,
                root_prefix: share.clone(),
                guard: Some(guard.clone()),
                limits: Limits::for_nofile(4096, true),
                host_watch: crate::fs::hostwatch::HostWatch::disabled(),
                taint,
            },
        )
        .unwrap();
        fs.init(FsOptions::empty()).unwrap();
        Fixture {
            _dir: dir,
            audit,
            fs: Arc::new(fs),
            guard,
        }
    }

    fn ctx(pid: i32) -> Context {
        let mut c = Context::new();
        c.pid = pid;
        c
    }

    impl Fixture {
        fn node(&self, path: &str) -> u64 {
            path.split('/').fold(ROOT_ID, |parent, name| {
                let name = CString::new(name).unwrap();
                self.fs.lookup(&ctx(1), parent, &name).unwrap().inode
            })
        }

        fn label(&self, node: u64) -> Option<u32> {
            self.guard
                .labels
                .rule_of_key(self.fs.nodes.key(node).unwrap())
        }

        fn audit_lines(&self) -> Vec<String> {
            std::fs::read_to_string(&self.audit)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[test]
    fn a_file_written_by_a_reader_of_a_rule_gets_its_label() {
        let f = fixture(None);
        let secret = f.node("secret/a.txt");
        f.fs.open(&ctx(42), secret, libc::O_RDONLY as u32, 0)
            .unwrap();
        assert_eq!(f.guard.readers.rule_of(42), Some(0));
        // pid 42 writes a public file: it is labelled before the data lands.
        let out = f.node("tmp/out");
        assert_eq!(f.label(out), None);
        assert_eq!(f.fs.inherit_on_write(&ctx(42), out), Some(0));
        assert_eq!(f.label(out), Some(0));
        let line = f
            .audit_lines()
            .into_iter()
            .find(|l| l.contains("\"op\":\"inherit\""))
            .expect("an audit line for the label");
        assert!(
            line.contains("tmp/out") && line.contains("\"guest_reported_pid\":42"),
            "{line}"
        );
        // Another pid wrote nothing it read.
        let out2 = f.node("tmp/out2");
        assert_eq!(f.fs.inherit_on_write(&ctx(43), out2), None);
        assert_eq!(f.label(out2), None);
        // The monitor's word labels a file too, when the rule inherits.
        let key = f.fs.nodes.key(out2).unwrap();
        f.fs.derived(out2, key, "secret/**");
        assert_eq!(f.label(out2), Some(0));
        let out3 = f.node("tmp/out3");
        let key3 = f.fs.nodes.key(out3).unwrap();
        f.fs.derived(out3, key3, "reports/**");
        f.fs.derived(out3, key3, "no/such/rule");
        f.fs.derived(out3, (key3.0, key3.1 + 1), "secret/**");
        assert_eq!(f.label(out3), None, "no inherit, no rule, or another inode");
    }

    #[test]
    fn a_rule_that_only_tracks_protects_nothing_and_asks_nothing() {
        // No grant at all: the protected file is refused, the tracked one
        // is served.
        let f = fixture_with(None, Arc::new(NoGrants));
        let secret = f.node("secret/a.txt");
        assert!(f
            .fs
            .open(&ctx(44), secret, libc::O_RDONLY as u32, 0)
            .is_err());
        let report = f.node("reports/r.txt");
        assert_eq!(f.label(report), Some(1));
        let before = f.audit_lines().len();
        let (_, opts, _) = f.fs.open(&ctx(44), report, libc::O_RDWR as u32, 0).unwrap();
        assert!(
            !opts.contains(fuse_backend_rs::abi::fuse_abi::OpenOptions::DIRECT_IO),
            "tracking does not change caching"
        );
        assert_eq!(f.audit_lines().len(), before, "no decision to audit");
        assert!(!f.guard.would_wait(Some(1)));
        assert_eq!(f.guard.readers.rule_of(44), None, "it does not inherit");
        assert_eq!(
            f.guard.confidential_pattern(1).as_deref(),
            Some("reports/**")
        );
    }

    #[test]
    fn accesses_reach_the_monitor_with_rule_and_path() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("m.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let s = sock.clone();
        let (tap, view) =
            crate::taint_link::start("vm1".into(), Box::new(move || UnixStream::connect(&s)))
                .unwrap();
        let f = fixture(Some(tap));
        let _ = view.set(f.fs.clone() as Arc<dyn FsView>);
        let secret = f.node("secret/a.txt");
        f.fs.open(&ctx(42), secret, libc::O_RDONLY as u32, 0)
            .unwrap();
        let public = f.node("tmp/out");
        f.fs.open(&ctx(42), public, libc::O_WRONLY as u32, 0)
            .unwrap();
        f.fs.observe(&ctx(42), public, FileAccess::Write, None);
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn);
        let mut events = Vec::new();
        while events.len() < 2 {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).unwrap();
            let req = Request::from_line(&line).unwrap();
            let Op::FileEvents { vm, events: e, .. } = req.op else {
                panic!("{:?}", req.op)
            };
            assert_eq!(vm, "vm1");
            let reply = Reply::new(
                req.id,
                ReplyBody::Accepted {
                    count: e.len() as u64,
                    derived: vec![],
                },
            );
            r.get_ref().write_all(&to_line(&reply).unwrap()).unwrap();
            events.extend(e);
        }
        assert_eq!(events.len(), 2, "a write-only open is no read: {events:?}");
        assert_eq!(events[0].access, FileAccess::Open);
        assert_eq!(events[0].pid, 42);
        assert_eq!(events[0].rule.as_deref(), Some("secret/**"));
        assert_eq!(events[0].path.as_deref(), Some("secret/a.txt"));
        assert_eq!(events[1].access, FileAccess::Write);
        assert_eq!(events[1].path.as_deref(), Some("tmp/out"));
        assert_eq!(events[1].rule, None);
    }
}

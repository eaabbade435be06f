//! Names and paths built to leave the share or to be read two ways: a `/`
//! inside a name, `..`, an embedded or a missing NUL, a name longer than
//! NAME_MAX, a symlink whose *name* is an absolute host path, a symlink to
//! `..` walked through, `..` at the root, a rename to `../outside`, and a
//! device node made and opened. Nothing may appear outside the share, and
//! the share's root must stay its root.

use std::os::unix::fs::MetadataExt;

use super::{expect_error, Case, Finding, Outcome};
use crate::error::Error;
use crate::fuse::{op, Request, ROOT_ID};
use crate::session::{
    create_request, mkdir_request, mknod_request, open_request, symlink_request, ENTRY_LEN,
    OPEN_LEN,
};

pub(super) const NAME_WITH_SLASH: Case = Case::request(
    "name-with-slash",
    "MKDIR \"d/sub\" and LOOKUP \"d/x\"",
    |x| {
        let m = expect_error(&x.send(&mkdir_request(ROOT_ID, b"d/sub", 0o755), ENTRY_LEN)?);
        let l = expect_error(&x.send(&Request::new(op::LOOKUP, ROOT_ID).name(b"d/x"), ENTRY_LEN)?);
        let created = x.share().join("d/sub").exists();
        Ok(Finding::steps([("mkdir", m), ("lookup", l)]).failed_if(created, "d/sub CREATED"))
    },
);

pub(super) const NAME_DOTDOT_ESCAPE: Case = Case::request(
    "name-dotdot-escape",
    "MKDIR \"../escape\" and CREATE \"..\"",
    |x| {
        let m = expect_error(&x.send(&mkdir_request(ROOT_ID, b"../escape", 0o755), ENTRY_LEN)?);
        let c = expect_error(&x.send(&create_file(b".."), ENTRY_LEN + OPEN_LEN)?);
        Ok(Finding::steps([("mkdir", m), ("create", c)]))
    },
);

pub(super) const NAME_WITH_NUL: Case = Case::request(
    "name-with-nul",
    "CREATE \"ok\\0evil\" (embedded NUL)",
    |x| {
        let o = x.send(&create_file(b"ok\0evil"), ENTRY_LEN + OPEN_LEN)?;
        let made: Vec<String> = std::fs::read_dir(x.share())
            .map_err(|e| Error::Io("read share", e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ok"))
            .collect();
        let mut f = expect_error(&o);
        if !made.is_empty() {
            f.observed = format!("{}, created {:?}", f.observed, made);
        }
        Ok(f)
    },
);

pub(super) const NAME_WITHOUT_NUL: Case = Case::request(
    "name-without-nul",
    "LOOKUP whose name has no terminating NUL",
    |x| {
        Ok(expect_error(&x.send(
            &Request::new(op::LOOKUP, ROOT_ID).bytes(b"a.txt"),
            ENTRY_LEN,
        )?))
    },
);

pub(super) const NAME_4096: Case =
    Case::request("name-4096", "LOOKUP and MKDIR of a 4096-byte name", |x| {
        let long = vec![b'n'; 4096];
        let l = expect_error(&x.send(&Request::new(op::LOOKUP, ROOT_ID).name(&long), ENTRY_LEN)?);
        let m = expect_error(&x.send(&mkdir_request(ROOT_ID, &long, 0o755), ENTRY_LEN)?);
        Ok(Finding::steps([("lookup", l), ("mkdir", m)]))
    });

pub(super) const SYMLINK_ABSOLUTE_NAME: Case = Case::request(
    "symlink-absolute-name",
    "SYMLINK whose *name* is an absolute host path outside the share",
    |x| {
        let evil = x.h.scratch().join("outside").join("evil");
        let o = x.send(
            &symlink_request(ROOT_ID, evil.as_os_str().as_encoded_bytes(), b"/etc/passwd"),
            ENTRY_LEN,
        )?;
        let created = std::fs::symlink_metadata(&evil).is_ok();
        Ok(expect_error(&o).failed_if(created, "symlink created OUTSIDE"))
    },
);

pub(super) const SYMLINK_OUT_THEN_LOOKUP: Case = Case::request(
    "symlink-out-then-lookup",
    "SYMLINK \"esc\" -> \"..\" (allowed), then LOOKUP \"outside\" through it",
    |x| {
        let mut s = x.session();
        let l = s.symlink(ROOT_ID, b"esc", b"..")?;
        let o = x.send(
            &Request::new(op::LOOKUP, l.nodeid).name(b"outside"),
            ENTRY_LEN,
        )?;
        Ok(expect_error(&o))
    },
);

pub(super) const LOOKUP_DOTDOT_AT_ROOT: Case = Case::request(
    "lookup-dotdot-at-root",
    "LOOKUP \"..\" and \".\" at the root",
    |x| {
        let share_ino = std::fs::metadata(x.share())
            .map_err(|e| Error::Io("stat share", e))?
            .ino();
        let mut obs = Vec::new();
        let mut ok = true;
        for name in [&b".."[..], b"."] {
            match x.send(&Request::new(op::LOOKUP, ROOT_ID).name(name), ENTRY_LEN)? {
                Outcome::Reply(r) if r.errno() == 0 => {
                    let e: fuse_backend_rs::abi::fuse_abi::EntryOut = r.parse()?;
                    let same = e.attr.ino == share_ino;
                    ok &= same;
                    obs.push(format!(
                        "{} -> {}",
                        String::from_utf8_lossy(name),
                        if same { "root" } else { "PARENT OF SHARE" }
                    ));
                }
                o => obs.push(format!(
                    "{} -> {}",
                    String::from_utf8_lossy(name),
                    expect_error(&o).observed
                )),
            }
        }
        Ok(Finding {
            observed: obs.join(", "),
            ok,
        })
    },
);

pub(super) const RENAME_OUT: Case =
    Case::request("rename-out", "RENAME a.txt to \"../outside/stolen\"", |x| {
        let r = Request::new(op::RENAME, ROOT_ID)
            .arg(&fuse_backend_rs::abi::fuse_abi::RenameIn { newdir: ROOT_ID })
            .name(b"a.txt")
            .name(b"../outside/stolen");
        Ok(expect_error(&x.send(&r, 0)?))
    });

pub(super) const MKNOD_DEVICE_THEN_OPEN: Case = Case::request(
    "mknod-device-then-open",
    "MKNOD of /dev/null's char device, then OPEN it",
    |x| {
        let m = x.send(
            &mknod_request(ROOT_ID, b"null", libc::S_IFCHR | 0o666, (1 << 8) | 3),
            ENTRY_LEN,
        )?;
        match m {
            Outcome::Reply(r) if r.errno() == 0 => {
                let e: fuse_backend_rs::abi::fuse_abi::EntryOut = r.parse()?;
                let o = x.send(
                    &open_request(e.nodeid, libc::O_RDWR as u32, false),
                    OPEN_LEN,
                )?;
                let f = expect_error(&o);
                Ok(Finding {
                    observed: format!("mknod OK, open {}", f.observed),
                    ok: f.ok,
                })
            }
            o => Ok(Finding::steps([("mknod", expect_error(&o))])),
        }
    },
);

/// CREATE of a regular file `name` in the root, opened read-write.
fn create_file(name: &[u8]) -> Request {
    create_request(ROOT_ID, name, libc::S_IFREG | 0o644, libc::O_RDWR as u32)
}

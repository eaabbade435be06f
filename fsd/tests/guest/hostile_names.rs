//! Names a guest can produce through its own kernel: symlinks are resolved
//! by the guest, inside the guest (a link to /etc/passwd reads the guest's
//! own passwd, never the host's), and `..`, `.` or names with `/` never reach
//! the daemon as new entries. The raw-FUSE variants (a hostile guest kernel
//! sending `..` or `a/b` as a name) are exercised by the host-side driver's
//! battery (`driver/src/hostile/names.rs`), since a stock guest kernel refuses
//! them itself.

use crate::common::{run_script, share_in, Server};
use testrig::initramfs::GUEST_PASSWD;
use testrig::script::with_prelude;
use testrig::{require, Need};

const SCRIPT: &str = r#"
ln -s /etc/passwd abs.lnk
ln -s ../../../../../../../etc/passwd rel.lnk
echo "abs: $(head -n1 abs.lnk)"
echo "rel: $(head -n1 rel.lnk)"
echo "host-made: $(head -n1 host-made.lnk)"
echo "parent of mount: $(head -n1 ../etc/passwd)"
t "mkdir .." mkdir ..
mkdir dd
t "rename onto ." mv -T dd .
t "rename onto .." mv -T dd ..
rmdir dd
t "touch a/b" touch a/b
t "touch empty" touch ''
t "mkdir dots" mkdir ...
echo "entries: $(ls -a | sort | tr '\n' ' ')"
"#;

#[test]
fn guest_resolves_symlinks_itself_and_refuses_bad_names() {
    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let guest_root_line = GUEST_PASSWD.lines().next().unwrap();
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let host_root_line = host_passwd.lines().next().unwrap_or("<no host passwd>");
    assert_ne!(
        guest_root_line, host_root_line,
        "the guest passwd must be recognizable"
    );
    let mut outputs = Vec::new();
    for server in [Server::Virtiofsd, Server::Fsd] {
        let share = share_in(dir.path(), server.name());
        // A link planted on the host side, as an administrator might.
        std::os::unix::fs::symlink("/etc/passwd", share.join("host-made.lnk")).unwrap();
        let run = run_script(&env, server, &share, &with_prelude(SCRIPT), None);
        let out = run.output().to_string();
        let what = format!("{} transcript", server.name());
        crate::common::assert_lines_in_order(
            &out,
            &[
                &format!("abs: {guest_root_line}"),
                &format!("rel: {guest_root_line}"),
                &format!("host-made: {guest_root_line}"),
                &format!("parent of mount: {guest_root_line}"),
                "mkdir ..: fail mkdir: can't create directory '..': File exists",
                "rename onto .: fail mv: can't rename 'dd': Device or resource busy",
                "rename onto ..: fail mv: can't rename 'dd': Device or resource busy",
                "touch a/b: fail touch: a/b: No such file or directory",
                "touch empty: fail touch: : No such file or directory",
                "mkdir dots: ok",
                "entries: . .. ... abs.lnk host-made.lnk rel.lnk ",
            ],
            &what,
        );
        assert!(
            !out.contains(host_root_line),
            "{what}: host passwd leaked\n{out}"
        );
        // On the host the links are stored verbatim and nothing else appeared.
        assert_eq!(
            std::fs::read_link(share.join("abs.lnk")).unwrap(),
            std::path::Path::new("/etc/passwd")
        );
        let mut names: Vec<String> = std::fs::read_dir(&share)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["...", "abs.lnk", "host-made.lnk", "rel.lnk"],
            "{what}"
        );
        outputs.push(out);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "fsd (right) differs from virtiofsd (left)"
    );
}

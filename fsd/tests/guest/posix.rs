//! POSIX behaviour seen from a real guest, fsd side by side with virtiofsd.
//!
//! One guest script exercises the file operations applications rely on and
//! prints a normalized transcript (no inode numbers, no timestamps). The test
//! runs it against the reference virtiofsd and against fsd, requires the two
//! transcripts to be equal, and also checks key lines against what POSIX says,
//! so that both daemons being wrong the same way still fails.

use crate::common::{assert_lines_in_order, run_script, share_in, Server};
use testrig::script::with_prelude;
use testrig::{require, Need};

/// The guest script; cwd is the share.
const SCRIPT: &str = r#"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
echo "== create, write, read back after dropping caches"
printf 'hello\n' > a.txt
stat -c '%n %F %a %h %s' a.txt
seq 1 100000 > big.txt
before=$(md5sum big.txt | cut -d' ' -f1)
drop
after=$(md5sum big.txt | cut -d' ' -f1)
[ "$before" = "$after" ] && echo "md5 stable across drop_caches: yes" || echo "md5 stable across drop_caches: NO"
echo "big size: $(stat -c %s big.txt)"
head -c 25165824 /dev/urandom > large.bin
before=$(md5sum large.bin | cut -d' ' -f1)
drop
after=$(md5sum large.bin | cut -d' ' -f1)
direct=$(dd if=large.bin bs=1M iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
[ "$before" = "$after" ] && [ "$before" = "$direct" ] && echo "24 MiB md5 stable across drop_caches and O_DIRECT: yes" || echo "24 MiB md5 stable across drop_caches and O_DIRECT: NO ($before $after $direct)"
rm large.bin
printf 'XY' | dd of=a.txt bs=1 seek=1 conv=notrunc 2>/dev/null
echo appended >> a.txt
drop
cat a.txt
echo "== rename"
mv a.txt b.txt
t "stat old name" stat -c %n a.txt
echo "new name: $(head -n1 b.txt)"
echo "== hard link"
ln b.txt c.txt
echo "links: $(stat -c %h b.txt) $(stat -c %h c.txt)"
t "link onto existing" ln c.txt b.txt
echo "== symlink"
ln -s b.txt s.lnk
echo "readlink: $(readlink s.lnk)"
echo "through symlink: $(head -n1 s.lnk)"
stat -c '%n %F' s.lnk
echo "== chmod"
chmod 640 b.txt
echo "mode via other link: $(stat -c %a c.txt)"
t "read as nobody" su nobody -s /bin/sh -c 'cat c.txt'
echo "== truncate"
truncate -s 3 b.txt
echo "size: $(stat -c %s b.txt) content: $(cat b.txt)"
truncate -s 100000 b.txt
drop
echo "size: $(stat -c %s b.txt) tail bytes: $(tail -c 4 b.txt | od -An -tx1 | tr -d ' ')"
echo "== readdir of 1000 entries"
mkdir many
i=0; while [ $i -lt 1000 ]; do : > many/f$i; i=$((i+1)); done
drop
echo "entries: $(ls many | wc -l)"
echo "names md5: $(ls many | sort | md5sum | cut -d' ' -f1)"
echo "first: $(ls many | sort | head -n3 | tr '\n' ' ')"
echo "with dots: $(ls -a many | wc -l)"
echo "== unlink while open"
echo still-readable > open.txt
exec 3< open.txt
rm open.txt
t "stat unlinked" stat -c %n open.txt
echo "read via open fd: $(cat <&3)"
exec 3<&-
echo "== fifo"
mkfifo pipe
stat -c '%n %F %a' pipe
(echo through-the-fifo > pipe) &
echo "fifo read: $(cat pipe)"
wait
echo "== errors"
t "ENOENT" cat nope
t "EEXIST" mkdir many
t "ENOTEMPTY rmdir" rmdir many
mkdir d1 d2; : > d2/x
t "ENOTEMPTY rename" mv -T d1 d2
t "EISDIR open" sh -c 'echo x > many'
t "EISDIR unlink" unlink many
t "ENOTDIR" ls c.txt/x
ln -s l1 l2; ln -s l2 l1
t "ELOOP" cat l1
t "ENAMETOOLONG" touch "$(head -c 300 /dev/zero | tr '\0' n)"
t "rmdir missing" rmdir nodir
echo "== final listing"
for f in $(ls -a | sort); do
  [ "$f" = .. ] && continue
  if [ -f "$f" ] && [ ! -L "$f" ]; then stat -c '%n %F %a %h %s' "$f"; else stat -c '%n %F %a' "$f"; fi
done
"#;

#[test]
fn posix_transcript_matches_virtiofsd() {
    let Some(env) = require(&[Need::Virtiofsd]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for server in [Server::Virtiofsd, Server::Fsd] {
        let share = share_in(dir.path(), server.name());
        let run = run_script(&env, server, &share, &with_prelude(SCRIPT), None);
        let out = run.output().to_string();
        check_expected(&out, server);
        check_host_side(&share, server);
        assert_eq!(
            run.transcript.exit_code,
            Some(0),
            "{} script exit code\n{out}",
            server.name()
        );
        outputs.push(out);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "fsd's transcript (right) differs from virtiofsd's (left)"
    );
}

/// Lines POSIX and Linux semantics dictate, independent of either daemon.
fn check_expected(out: &str, server: Server) {
    let what = format!("{} transcript", server.name());
    assert_lines_in_order(
        out,
        &[
            "a.txt regular file 644 1 6",
            "md5 stable across drop_caches: yes",
            "big size: 588895",
            "24 MiB md5 stable across drop_caches and O_DIRECT: yes",
            "hXYlo",
            "appended",
            "stat old name: fail stat: can't stat 'a.txt': No such file or directory",
            "new name: hXYlo",
            "links: 2 2",
            "link onto existing: fail ln: b.txt: File exists",
            "readlink: b.txt",
            "through symlink: hXYlo",
            "s.lnk symbolic link",
            "mode via other link: 640",
            "read as nobody: fail cat: can't open 'c.txt': Permission denied",
            "size: 3 content: hXY",
            "size: 100000 tail bytes: 00000000",
            "entries: 1000",
            "first: f0 f1 f10 ",
            "with dots: 1002",
            "stat unlinked: fail stat: can't stat 'open.txt': No such file or directory",
            "read via open fd: still-readable",
            "pipe fifo 644",
            "fifo read: through-the-fifo",
            "ENOENT: fail cat: can't open 'nope': No such file or directory",
            "EEXIST: fail mkdir: can't create directory 'many': File exists",
            "ENOTEMPTY rmdir: fail rmdir: 'many': Directory not empty",
            "ENOTEMPTY rename: fail mv: can't rename 'd1': Directory not empty",
            "EISDIR open: fail sh: can't create many: Is a directory",
            "EISDIR unlink: fail unlink: can't remove file 'many': Is a directory",
            "ENOTDIR: fail ls: c.txt/x: Not a directory",
            "ELOOP: fail cat: can't open 'l1': Too many levels of symbolic links",
            "rmdir missing: fail rmdir: 'nodir': No such file or directory",
            "b.txt regular file 640 2 100000",
            "big.txt regular file 644 1 588895",
            "c.txt regular file 640 2 100000",
        ],
        &what,
    );
    assert!(
        !out.lines().any(|l| l.starts_with("open.txt")),
        "{what}: unlinked file still listed\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("ENAMETOOLONG: fail") && l.ends_with("File name too long")),
        "{what}: 300-byte name was not refused\n{out}"
    );
}

/// What the guest did must be visible on the host, in the shared directory.
fn check_host_side(share: &std::path::Path, server: Server) {
    use std::os::unix::fs::MetadataExt;
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let big = std::fs::read_to_string(share.join("big.txt")).unwrap();
    assert!(
        big == expected,
        "{}: host copy of big.txt differs",
        server.name()
    );
    assert_eq!(std::fs::read_dir(share.join("many")).unwrap().count(), 1000);
    assert_eq!(std::fs::metadata(share.join("b.txt")).unwrap().nlink(), 2);
    assert_eq!(
        std::fs::read_link(share.join("s.lnk")).unwrap(),
        std::path::Path::new("b.txt")
    );
    assert!(
        !share.join("open.txt").exists(),
        "{}: unlinked file still on host",
        server.name()
    );
}

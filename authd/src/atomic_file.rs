//! Crash-safe replacement of a small file, shared by the credential store
//! and the runtime state: the new content goes to a temporary file (mode
//! 0600) beside the old one, is fsynced, renamed over the old file, and the
//! directory is fsynced. A crash at any point leaves the old or the new
//! file, never a torn one; a stale temporary file from a crash is ignored by
//! readers and replaced by the next writer of the same process id.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `dir/name` with `data`, atomically and durably.
pub fn replace(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_with_mode_0600_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        replace(tmp.path(), "f.json", b"one").unwrap();
        replace(tmp.path(), "f.json", b"two").unwrap();
        let path = tmp.path().join("f.json");
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.json"]);
    }
}

//! The credential store: one JSON file of PHC hashes and seals, in a 0700
//! directory, mode 0600. Every change is a read-modify-write under an
//! exclusive `flock`, written to a temporary file, fsynced, renamed over the
//! old file and followed by an fsync of the directory, so a crash at any
//! point leaves either the old or the new store, never a torn one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::error::{Error, Result};
use crate::password;
use crate::seal::Seal;

const STORE_FILE: &str = "users.json";
const LOCK_FILE: &str = ".lock";
const FORMAT_VERSION: u32 = 1;

/// One enrolled principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// argon2id PHC string.
    pub phc: String,
    pub seal: Seal,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    users: BTreeMap<String, User>,
}

/// Handle on a store directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Who is changing a password, which decides whether the old one is needed.
pub enum Authority<'a> {
    /// Root may set any password.
    Root,
    /// Anyone else must know the current password (if there is one).
    OldPassword(Option<&'a [u8]>),
}

/// Principal names are shown in the dialog and used as map keys: keep them plain.
pub fn validate_principal(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidPrincipal(name.to_owned()))
    }
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STORE_FILE)
    }

    /// Looks a principal up. A missing store means nobody is enrolled.
    pub fn user(&self, principal: &str) -> Result<Option<User>> {
        Ok(self.read()?.users.remove(principal))
    }

    /// Names of enrolled principals.
    pub fn principals(&self) -> Result<Vec<String>> {
        Ok(self.read()?.users.into_keys().collect())
    }

    /// Enrolls a principal or changes its password and/or seal. A new
    /// principal needs a seal; an existing one keeps its seal when `seal` is None.
    pub fn set(
        &self,
        principal: &str,
        new_password: &[u8],
        seal: Option<Seal>,
        authority: Authority<'_>,
    ) -> Result<()> {
        validate_principal(principal)?;
        self.ensure_dir()?;
        let _lock = self.lock()?;
        let mut file = self.read()?;
        let seal = match (file.users.get(principal), seal) {
            (Some(existing), seal) => {
                if let Authority::OldPassword(old) = authority {
                    let old = old.ok_or(Error::OldPasswordRequired)?;
                    if !password::verify(old, &existing.phc)? {
                        return Err(Error::WrongOldPassword);
                    }
                }
                seal.unwrap_or_else(|| existing.seal.clone())
            }
            (None, Some(seal)) => seal,
            (None, None) => {
                return Err(Error::InvalidSeal(
                    "a new principal needs a seal phrase and colour".into(),
                ))
            }
        };
        let phc = password::hash(new_password)?;
        file.users.insert(principal.to_owned(), User { phc, seal });
        self.write(&file)
    }

    /// Removes a principal; returns whether it existed.
    pub fn remove(&self, principal: &str) -> Result<bool> {
        self.ensure_dir()?;
        let _lock = self.lock()?;
        let mut file = self.read()?;
        let existed = file.users.remove(principal).is_some();
        if existed {
            self.write(&file)?;
        }
        Ok(existed)
    }

    fn store_err(&self, reason: impl Into<String>) -> Error {
        Error::Store {
            path: self.path(),
            reason: reason.into(),
        }
    }

    fn read(&self) -> Result<StoreFile> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StoreFile {
                    version: FORMAT_VERSION,
                    users: BTreeMap::new(),
                })
            }
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let mode = file
            .metadata()
            .map_err(|e| Error::io("stat store", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::StorePermissions {
                path,
                mode: mode & 0o7777,
            });
        }
        let parsed: StoreFile = serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| self.store_err(e.to_string()))?;
        if parsed.version != FORMAT_VERSION {
            return Err(self.store_err(format!("unknown format version {}", parsed.version)));
        }
        Ok(parsed)
    }

    fn ensure_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod {}", self.dir.display()), e))
    }

    fn lock(&self) -> Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(LOCK_FILE))
            .map_err(|e| Error::io("opening store lock", e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(f)
    }

    /// Crash-safe replace: temp file, fsync, rename, fsync directory.
    fn write(&self, file: &StoreFile) -> Result<()> {
        let mut data =
            serde_json::to_vec_pretty(file).map_err(|e| self.store_err(e.to_string()))?;
        data.push(b'\n');
        atomic_file::replace(&self.dir, STORE_FILE, &data)
            .map_err(|e| Error::io(format!("writing {}", self.path().display()), e))
    }
}

/// The store directory's path, for messages.
pub fn describe(dir: &Path) -> String {
    dir.join(STORE_FILE).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Rgb;

    fn seal() -> Seal {
        Seal::new("purple owl", Rgb(0x80, 0x20, 0xa0)).unwrap()
    }

    #[test]
    fn enroll_change_and_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("state"));
        assert!(store.user("alice").unwrap().is_none());
        assert!(store.set("alice", b"pw1", None, Authority::Root).is_err());
        store
            .set("alice", b"pw1", Some(seal()), Authority::Root)
            .unwrap();

        let dir_mode = fs::metadata(tmp.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file_mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(file_mode & 0o777, 0o600);

        let u = store.user("alice").unwrap().unwrap();
        assert!(password::verify(b"pw1", &u.phc).unwrap());
        assert_eq!(u.seal, seal());

        // A non-root change needs the right old password.
        assert!(matches!(
            store.set("alice", b"pw2", None, Authority::OldPassword(None)),
            Err(Error::OldPasswordRequired)
        ));
        assert!(matches!(
            store.set("alice", b"pw2", None, Authority::OldPassword(Some(b"nope"))),
            Err(Error::WrongOldPassword)
        ));
        store
            .set("alice", b"pw2", None, Authority::OldPassword(Some(b"pw1")))
            .unwrap();
        let u = store.user("alice").unwrap().unwrap();
        assert!(password::verify(b"pw2", &u.phc).unwrap());
        assert_eq!(u.seal, seal(), "seal kept when not given");

        // No temporary file left behind.
        let names: Vec<_> = fs::read_dir(tmp.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
    }

    #[test]
    fn readers_never_see_a_torn_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        store
            .set("alice", b"pw0", Some(seal()), Authority::Root)
            .unwrap();
        // A stale temporary file from a crashed writer is ignored.
        fs::write(tmp.path().join(".users.json.tmp.999999"), b"{ torn").unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(store.user("alice").unwrap().is_some());
                    reads += 1;
                }
                reads
            })
        };
        for i in 1..=3 {
            let pw = format!("pw{i}");
            store
                .set("alice", pw.as_bytes(), None, Authority::Root)
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        let u = store.user("alice").unwrap().unwrap();
        assert!(password::verify(b"pw3", &u.phc).unwrap());
    }

    #[test]
    fn refuses_world_readable_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        store
            .set("bob", b"pw", Some(seal()), Authority::Root)
            .unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            store.user("bob"),
            Err(Error::StorePermissions { .. })
        ));
    }

    #[test]
    fn principal_names() {
        assert!(validate_principal("alice.smith-2").is_ok());
        for bad in ["", "a/b", "a b", "../x", &"x".repeat(65)] {
            assert!(validate_principal(bad).is_err(), "{bad:?}");
        }
    }
}

//! How a user VM sees a delegated program: as the delegation client.
//!
//! A `[[delegate]]` program (docs/delegation.md) must never run in the
//! user VM: it is the administrator's setuid binary, and the user VM is not
//! trusted with what it does. So wherever the guest looks up the program's
//! name (LOOKUP, and each entry of READDIRPLUS), fsd answers with the entry
//! of the client named by `[delegation] client` instead: an ordinary,
//! non-setuid executable whose only job is to carry the request to the
//! host. The real binary's inode is never handed to the guest under that
//! name; a `[[rule]]` on it (docs/policy.md) keeps it from being reached
//! under any other name too.
//!
//! The decision is by the parent's current host name plus the entry name,
//! matched exactly against the policy, so the cost is one string compare
//! per lookup and one `readlink` only when the name is a delegated one.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, ROOT_ID};

use super::SharedFs;

impl SharedFs {
    /// Whether `name` in `parent` is a delegated program under the current
    /// policy. Errors while finding out are errors (the caller fails the
    /// lookup), never "not delegated".
    fn delegated(&self, parent: u64, name: &CStr) -> io::Result<bool> {
        let Some(g) = &self.guard else {
            return Ok(false);
        };
        let policy = g.policy();
        let name = name.to_bytes();
        if !policy
            .delegates
            .iter()
            .any(|d| d.file_name().as_bytes() == name)
        {
            return Ok(false);
        }
        let dir = self.host_path(parent)?;
        let dir = dir.as_os_str().as_bytes();
        let mut full = Vec::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() && dir != b"." {
            full.extend_from_slice(dir);
            full.push(b'/');
        }
        full.extend_from_slice(name);
        Ok(policy
            .delegates
            .iter()
            .any(|d| d.program.as_bytes() == full.as_slice()))
    }

    /// The entry the guest gets for `name` in `parent`: the passthrough
    /// layer's, or for a delegated program the client's.
    pub(super) fn lookup_presented(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        if !self.delegated(parent, name)? {
            return self.inner.lookup(ctx, parent, name);
        }
        let client = self
            .guard
            .as_ref()
            .and_then(|g| g.policy().delegation_client.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EACCES))?;
        self.lookup_path(ctx, &client).map_err(|e| {
            log::error!(
                "the delegation client {client:?} cannot be looked up ({e}); \
                 the delegated program is refused"
            );
            io::Error::from_raw_os_error(libc::EACCES)
        })
    }

    /// [`Self::lookup_presented`] in `parent`, open as `dir` (the caller
    /// checked that it is), without opening `parent` again.
    pub(super) fn lookup_presented_in(
        &self,
        ctx: &Context,
        parent: u64,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> io::Result<Entry> {
        if !self.delegated(parent, name)? {
            return self.inner.lookup_in(&dir, name);
        }
        self.lookup_presented(ctx, parent, name)
    }

    /// Looks up `path` (a plain relative path, checked by the policy
    /// parser) from the share root, giving back the lookup counts of the
    /// directories on the way: the caller owns one count of the result.
    fn lookup_path(&self, ctx: &Context, path: &str) -> io::Result<Entry> {
        let mut at: Option<Entry> = None;
        for comp in path.split('/') {
            let c = CString::new(comp).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let parent = at.as_ref().map_or(ROOT_ID, |e| e.inode);
            let next = self.inner.lookup(ctx, parent, &c);
            if let Some(prev) = at.take() {
                self.inner.forget(ctx, prev.inode, 1);
            }
            at = Some(next?);
        }
        at.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}

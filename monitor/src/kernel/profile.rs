//! A kernel profile: the symbol addresses and struct offsets introspection
//! uses, extracted once per kernel build and cached as JSON keyed by the
//! build id (or, failing that, the banner).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::btf::Btf;
use super::image::KernelImage;
use super::kallsyms::{self, Symbol};
use crate::error::{Error, Result};

/// Bump when the set of extracted facts changes so old caches are rebuilt.
const PROFILE_FORMAT: u32 = 8;

/// Symbols the monitor looks up. Missing ones are simply absent from the
/// profile; features that need them fail with `MissingSymbol`.
pub const WANTED_SYMBOLS: &[&str] = &[
    "_text",
    "linux_banner",
    "init_task",
    "super_blocks",
    "vmemmap_base",
    "page_offset_base",
    "wake_up_process",
    "wake_up_state",
    "invalidate_mapping_pages",
    // Safe points for call injection: syscall handlers run in process
    // context, preemptible, holding no locks.
    "__x64_sys_read",
    "__x64_sys_write",
    "__x64_sys_wait4",
    "__x64_sys_nanosleep",
    "__x64_sys_clock_nanosleep",
    "__x64_sys_getpid",
    "__x64_sys_poll",
    "__x64_sys_ppoll",
    "__x64_sys_pselect6",
    "__x64_sys_select",
    "__x64_sys_newfstatat",
    "__x64_sys_openat",
    "__x64_sys_close",
    "__x64_sys_ioctl",
    "__x64_sys_rt_sigaction",
    "__x64_sys_rt_sigprocmask",
    "__x64_sys_futex",
    "__x64_sys_epoll_wait",
    "__x64_sys_epoll_pwait",
    "__x64_sys_recvfrom",
    "__x64_sys_sendto",
    "__x64_sys_recvmsg",
    "__x64_sys_sendmsg",
    "__x64_sys_getdents64",
    "__x64_sys_lseek",
    "__x64_sys_mmap",
    "__x64_sys_munmap",
    "__x64_sys_brk",
    "__x64_sys_newfstat",
    // A work function the kernel runs every second even on an idle guest
    // (kworker context: process context, no locks held).
    "vmstat_shepherd",
    // Hooks of the TCG plugin (see hooks.rs): fork, exit, exec, socket
    // send/receive, file read/write, and the per-CPU `current_task`.
    "wake_up_new_task",
    "do_exit",
    "begin_new_exec",
    "__sock_sendmsg",
    "sock_sendmsg",
    "sock_recvmsg",
    "vfs_read",
    "vfs_write",
    "current_task",
    // Socket ownership (sockets.rs): a file is a socket when its f_op is
    // this; the kernel's own page tables live in init_mm.
    "socket_file_ops",
    "init_mm",
];

/// Struct members the monitor reads, as (struct, dotted member path).
pub const WANTED_FIELDS: &[(&str, &str)] = &[
    ("task_struct", "tasks"),
    ("task_struct", "pid"),
    ("task_struct", "tgid"),
    ("task_struct", "real_parent"),
    ("task_struct", "comm"),
    ("task_struct", "real_cred"),
    ("task_struct", "cred"),
    ("task_struct", "__state"),
    ("task_struct", "exit_state"),
    ("task_struct", "jobctl"),
    ("task_struct", "thread_info.flags"),
    ("task_struct", "sighand"),
    ("task_struct", "signal"),
    ("task_struct", "mm"),
    ("task_struct", "flags"),
    ("task_struct", "thread_group"),
    ("task_struct", "thread_node"),
    ("task_struct", "utime"),
    ("task_struct", "stime"),
    ("task_struct", "on_rq"),
    ("cred", "uid"),
    ("cred", "euid"),
    ("signal_struct", "thread_head"),
    ("signal_struct", "nr_threads"),
    ("sighand_struct", "siglock"),
    ("list_head", "next"),
    ("list_head", "prev"),
    ("super_block", "s_list"),
    ("super_block", "s_type"),
    ("super_block", "s_inodes"),
    ("super_block", "s_id"),
    ("super_block", "s_dev"),
    ("file_system_type", "name"),
    ("inode", "i_sb_list"),
    ("inode", "i_ino"),
    ("inode", "i_mapping"),
    ("inode", "i_data"),
    ("inode", "i_size"),
    ("inode", "i_sb"),
    ("address_space", "i_pages"),
    ("address_space", "nrpages"),
    ("address_space", "host"),
    ("xarray", "xa_head"),
    ("xa_node", "shift"),
    ("xa_node", "count"),
    ("xa_node", "slots"),
    ("page", "flags"),
    ("page", "mapping"),
    ("page", "index"),
    ("page", "_mapcount"),
    ("page", "_refcount"),
    // Read by the TCG plugin's hooks (see hooks.rs).
    ("task_struct", "start_time"),
    ("task_struct", "group_leader"),
    ("linux_binprm", "filename"),
    ("socket", "type"),
    ("socket", "sk"),
    ("sock_common", "skc_daddr"),
    ("sock_common", "skc_rcv_saddr"),
    ("sock_common", "skc_dport"),
    ("sock_common", "skc_num"),
    ("sock_common", "skc_family"),
    ("sock_common", "skc_v6_daddr"),
    ("sock_common", "skc_v6_rcv_saddr"),
    ("msghdr", "msg_iter.count"),
    ("unix_sock", "peer"),
    ("file", "f_inode"),
    // Socket ownership (sockets.rs): task -> files -> fdtable -> file ->
    // socket -> sock, and the executable's path.
    ("task_struct", "files"),
    ("files_struct", "fdt"),
    ("fdtable", "max_fds"),
    ("fdtable", "fd"),
    ("file", "f_op"),
    ("file", "private_data"),
    ("file", "f_path"),
    ("sock", "__sk_common.skc_family"),
    ("sock", "__sk_common.skc_rcv_saddr"),
    ("sock", "__sk_common.skc_daddr"),
    ("sock", "__sk_common.skc_dport"),
    ("sock", "__sk_common.skc_num"),
    ("sock", "__sk_common.skc_v6_rcv_saddr"),
    ("sock", "__sk_common.skc_v6_daddr"),
    ("sock", "sk_protocol"),
    ("sock", "sk_type"),
    ("inet_sock", "inet_sport"),
    ("mm_struct", "exe_file"),
    ("mm_struct", "pgd"),
    ("path", "mnt"),
    ("path", "dentry"),
    ("dentry", "d_parent"),
    ("dentry", "d_name.len"),
    ("dentry", "d_name.name"),
    ("vfsmount", "mnt_root"),
    ("mount", "mnt"),
    ("mount", "mnt_parent"),
    ("mount", "mnt_mountpoint"),
];

/// Enumerators the monitor needs (page flag bits, from `enum pageflags`).
pub const WANTED_CONSTANTS: &[&str] = &[
    "PG_locked",
    "PG_uptodate",
    "PG_dirty",
    "PG_lru",
    "PG_writeback",
    "PG_head",
];

/// Offset and size of one member.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Field {
    pub offset: u64,
    pub size: u64,
}

/// Layout of one struct: its size and the members that were asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StructLayout {
    pub size: u64,
    pub fields: BTreeMap<String, Field>,
}

/// Everything the monitor needs to know about one kernel build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    pub format: u32,
    /// GNU build id (hex), empty when the image carried none.
    pub build_id: String,
    /// `linux_banner`, which is also how a running guest is matched.
    pub banner: String,
    /// Where the symbols came from: "kallsyms" or "System.map".
    pub symbol_source: String,
    /// Number of symbols seen in the source.
    pub symbol_count: usize,
    /// Link-time (unrandomised) addresses.
    pub symbols: BTreeMap<String, u64>,
    pub structs: BTreeMap<String, StructLayout>,
    /// Enumerator values from BTF.
    pub constants: BTreeMap<String, i64>,
}

impl Profile {
    /// Build a profile from a kernel image, taking symbols from its kallsyms
    /// tables or, when given and non-empty, from a System.map.
    pub fn build(image: &KernelImage, system_map: Option<&Path>) -> Result<Profile> {
        let btf = Btf::parse(&image.btf)?;
        let (symbols, source) = match system_map {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("read {}", p.display()), e))?;
                if text.trim().is_empty() {
                    (
                        kallsyms::parse(&image.rodata, image.rodata_addr)?,
                        "kallsyms",
                    )
                } else {
                    (kallsyms::parse_system_map(&text)?, "System.map")
                }
            }
            None => (
                kallsyms::parse(&image.rodata, image.rodata_addr)?,
                "kallsyms",
            ),
        };
        Self::from_parts(image, &btf, &symbols, source)
    }

    fn from_parts(
        image: &KernelImage,
        btf: &Btf,
        symbols: &[Symbol],
        source: &str,
    ) -> Result<Profile> {
        let mut wanted = BTreeMap::new();
        for s in symbols {
            if WANTED_SYMBOLS.contains(&s.name.as_str()) {
                wanted.entry(s.name.clone()).or_insert(s.addr);
            }
        }
        let text = *wanted
            .get("_text")
            .ok_or_else(|| Error::MissingSymbol("_text".into()))?;
        if text != image.text_addr {
            return Err(Error::Kallsyms(format!(
                "_text at {text:#x} disagrees with .text at {:#x}",
                image.text_addr
            )));
        }
        let banner_addr = *wanted
            .get("linux_banner")
            .ok_or_else(|| Error::MissingSymbol("linux_banner".into()))?;
        let banner = image
            .rodata_cstr(banner_addr)
            .filter(|b| b.starts_with("Linux version "))
            .ok_or_else(|| Error::Kallsyms("linux_banner does not point at the banner".into()))?;

        let mut structs: BTreeMap<String, StructLayout> = BTreeMap::new();
        for (st, path) in WANTED_FIELDS {
            let Ok(size) = btf.struct_size(st) else {
                continue;
            };
            let entry = structs.entry(st.to_string()).or_default();
            entry.size = size;
            if let Ok((offset, size)) = btf.offset_of(st, path) {
                entry
                    .fields
                    .insert(path.to_string(), Field { offset, size });
            }
        }
        let constants = WANTED_CONSTANTS
            .iter()
            .filter_map(|c| Some((c.to_string(), btf.enum_value(c)?)))
            .collect();
        Ok(Profile {
            format: PROFILE_FORMAT,
            constants,
            build_id: image.build_id.clone(),
            banner,
            symbol_source: source.to_string(),
            symbol_count: symbols.len(),
            symbols: wanted,
            structs,
        })
    }

    /// Load the cached profile for `vmlinux` from `cache_dir`, building and
    /// storing it on a miss.
    pub fn load_or_build(
        vmlinux: &Path,
        system_map: Option<&Path>,
        cache_dir: &Path,
    ) -> Result<Profile> {
        let image = KernelImage::load(vmlinux)?;
        // Without a build id the cache key is the banner, known only after
        // parsing: build afresh (and still store it for `Profile::load`).
        let path = cache_dir.join(format!("{}.json", image.build_id));
        if image.build_id.is_empty() {
            let p = Profile::build(&image, system_map)?;
            p.store(cache_dir)?;
            return Ok(p);
        }
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(p) = serde_json::from_str::<Profile>(&text) {
                if p.format == PROFILE_FORMAT && p.build_id == image.build_id {
                    return Ok(p);
                }
            }
        }
        let p = Profile::build(&image, system_map)?;
        p.store(cache_dir)?;
        Ok(p)
    }

    /// Write this profile to `cache_dir` atomically.
    pub fn store(&self, cache_dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(cache_dir)
            .map_err(|e| Error::io(format!("create {}", cache_dir.display()), e))?;
        let path = cache_dir.join(format!(
            "{}.json",
            cache_key(&self.build_id, Some(&self.banner))
        ));
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::ProfileFormat {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| Error::io(format!("rename {}", path.display()), e))?;
        Ok(path)
    }

    /// Load a profile JSON file.
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|source| Error::ProfileFormat {
            path: path.to_owned(),
            source,
        })
    }

    /// Link-time address of a symbol.
    pub fn symbol(&self, name: &str) -> Result<u64> {
        self.symbols
            .get(name)
            .copied()
            .ok_or_else(|| Error::MissingSymbol(name.to_string()))
    }

    /// Offset of `st.path`.
    pub fn off(&self, st: &str, path: &str) -> Result<u64> {
        self.field(st, path).map(|f| f.offset)
    }

    /// Offset and size of `st.path`.
    pub fn field(&self, st: &str, path: &str) -> Result<Field> {
        self.structs
            .get(st)
            .and_then(|s| s.fields.get(path))
            .copied()
            .ok_or_else(|| Error::MissingType(format!("{st}.{path}")))
    }

    /// An enumerator value from BTF.
    pub fn constant(&self, name: &str) -> Result<i64> {
        self.constants
            .get(name)
            .copied()
            .ok_or_else(|| Error::MissingType(format!("enumerator {name}")))
    }

    /// Size of a struct.
    pub fn size(&self, st: &str) -> Result<u64> {
        self.structs
            .get(st)
            .map(|s| s.size)
            .ok_or_else(|| Error::MissingType(format!("struct {st}")))
    }

    /// Kernel release ("6.1.0-56-amd64") taken from the banner.
    pub fn release(&self) -> &str {
        self.banner
            .strip_prefix("Linux version ")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("")
    }
}

/// The cache file name: the build id, else a hash of the banner.
fn cache_key(build_id: &str, banner: Option<&str>) -> String {
    if !build_id.is_empty() {
        return build_id.to_string();
    }
    // FNV-1a over the banner: stable and dependency-free.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in banner.unwrap_or("").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("banner-{h:016x}")
}

/// Default cache directory: `$XDG_CACHE_HOME/fsd/monitor/profiles`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("fsd/monitor/profiles")
}

//! Kernel module closure for the guest.
//!
//! Debian's package ships no `modules.dep` (depmod runs at install time), so
//! dependencies are read from each module's `.modinfo` section
//! (`depends=a,b`). Modules the kernel has built in (listed in
//! `modules.builtin`, i.e. `=y` in its config) are skipped.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::elf;
use crate::error::{Error, Result};
use crate::kernel::GuestKernel;

/// The modules virtio-fs needs, in load order.
pub const VIRTIOFS_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
];

/// One module file to load in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name (dashes turned into underscores).
    pub name: String,
    /// Host path of the `.ko` file.
    pub path: PathBuf,
}

/// Module names compare with `-` and `_` as the same character.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Returns the modules to `insmod`, dependencies first, keeping the order of
/// `wanted` otherwise; built-in modules are left out.
pub fn resolve(kernel: &GuestKernel, wanted: &[&str]) -> Result<Vec<Module>> {
    let index = index_modules(&kernel.modules_dir.join("kernel"))?;
    let builtin = builtin_modules(&kernel.modules_dir)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for name in wanted {
        visit(
            &canonical(name),
            kernel,
            &index,
            &builtin,
            &mut seen,
            &mut out,
        )?;
    }
    Ok(out)
}

fn visit(
    name: &str,
    kernel: &GuestKernel,
    index: &HashMap<String, PathBuf>,
    builtin: &HashSet<String>,
    seen: &mut HashSet<String>,
    out: &mut Vec<Module>,
) -> Result<()> {
    if !seen.insert(name.to_string()) || builtin.contains(name) {
        return Ok(());
    }
    let path = index.get(name).ok_or_else(|| Error::ModuleMissing {
        name: name.to_string(),
        dir: kernel.modules_dir.clone(),
    })?;
    for dep in dependencies(path)? {
        visit(&dep, kernel, index, builtin, seen, out)?;
    }
    out.push(Module {
        name: name.to_string(),
        path: path.clone(),
    });
    Ok(())
}

/// Reads `depends=` from a module's `.modinfo` section.
pub fn dependencies(path: &Path) -> Result<Vec<String>> {
    let data = std::fs::read(path).map_err(Error::io(path))?;
    let modinfo = elf::section(path, &data, ".modinfo")?.unwrap_or_default();
    let deps = modinfo
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|&b| b == b','))
        .filter(|dep| !dep.is_empty())
        .map(|dep| canonical(&String::from_utf8_lossy(dep)))
        .collect();
    Ok(deps)
}

/// Maps canonical module name to its `.ko` file under `dir`.
fn index_modules(dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut index = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(Error::io(&d))? {
            let entry = entry.map_err(Error::io(&d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(Error::io(&path))?;
            if ft.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                index.insert(canonical(stem), path.clone());
            }
        }
    }
    Ok(index)
}

/// Names from `modules.builtin` (paths like `kernel/fs/fuse/fuse.ko`).
fn builtin_modules(modules_dir: &Path) -> Result<HashSet<String>> {
    let path = modules_dir.join("modules.builtin");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(Error::Io { path, source: e }),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(canonical)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_and_underscores_are_one_name() {
        assert_eq!(canonical("virtio-pci"), "virtio_pci");
    }

    /// Against the real Debian kernel when installed: the closure must end
    /// with virtiofs and list every dependency before its user.
    #[test]
    fn real_kernel_closure_is_ordered() {
        let Ok(kernel) = GuestKernel::locate() else {
            eprintln!("SKIP: guest kernel not installed (run scripts/install-deps.sh)");
            return;
        };
        let mods = resolve(&kernel, VIRTIOFS_MODULES).unwrap();
        assert_eq!(mods.last().map(|m| m.name.as_str()), Some("virtiofs"));
        for (i, m) in mods.iter().enumerate() {
            for dep in dependencies(&m.path).unwrap() {
                if let Some(j) = mods.iter().position(|x| x.name == dep) {
                    assert!(j < i, "{dep} must load before {}", m.name);
                }
            }
        }
    }
}

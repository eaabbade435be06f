//! The guest kernel image on the host: a `vmlinux` ELF, or a `vmlinuz`
//! whose xz payload is decompressed in memory.

use std::path::Path;

use object::{Object, ObjectSection};

use crate::error::{Error, Result};

/// The parts of a kernel image introspection needs.
pub struct KernelImage {
    /// GNU build id as lower-case hex (empty when the image has none).
    pub build_id: String,
    /// Raw `.BTF` section.
    pub btf: Vec<u8>,
    /// `.rodata` and its link-time address.
    pub rodata: Vec<u8>,
    pub rodata_addr: u64,
    /// Link-time start of `.text` (`_text`).
    pub text_addr: u64,
}

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

impl KernelImage {
    /// Load from a vmlinux, or a bzImage/vmlinuz carrying an xz payload.
    pub fn load(path: &Path) -> Result<KernelImage> {
        let raw =
            std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        let elf = if raw.starts_with(b"\x7fELF") {
            raw
        } else {
            decompress_vmlinuz(&raw)?
        };
        Self::from_elf(&elf)
    }

    /// Parse an in-memory vmlinux.
    pub fn from_elf(elf: &[u8]) -> Result<KernelImage> {
        let file = object::File::parse(elf).map_err(Error::Elf)?;
        let section = |name: &'static str| -> Result<(Vec<u8>, u64)> {
            let s = file
                .section_by_name(name)
                .ok_or(Error::MissingSection(name))?;
            let d = s.data().map_err(Error::Elf)?;
            Ok((d.to_vec(), s.address()))
        };
        let (btf, _) = section(".BTF")?;
        let (rodata, rodata_addr) = section(".rodata")?;
        let text_addr = file
            .section_by_name(".text")
            .map(|s| s.address())
            .ok_or(Error::MissingSection(".text"))?;
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_default();
        Ok(KernelImage {
            build_id,
            btf,
            rodata,
            rodata_addr,
            text_addr,
        })
    }

    /// Read a NUL-terminated string from `.rodata` at a link-time address.
    pub fn rodata_cstr(&self, addr: u64) -> Option<String> {
        let off = addr.checked_sub(self.rodata_addr)? as usize;
        let s = self.rodata.get(off..)?;
        let end = s.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    }
}

/// Find the xz stream in a compressed kernel and inflate it with `xz`
/// (the stream uses the x86 BCJ filter, which pure-Rust decoders lack).
fn decompress_vmlinuz(raw: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let at = raw
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or(Error::NotAKernel)?;
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("run xz (Debian: xz-utils)", e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let payload = raw[at..].to_vec();
    // Feed from a thread so a full stdout pipe cannot deadlock us.
    let feeder = std::thread::Builder::new()
        .name("xz-feed".into())
        .spawn(move || {
            let _ = stdin.write_all(&payload);
        })
        .map_err(|source| Error::ThreadSpawn {
            what: "feed xz",
            source,
        })?;
    let out = child.wait_with_output().map_err(|e| Error::io("xz", e))?;
    let _ = feeder.join();
    if !out.stdout.starts_with(b"\x7fELF") {
        return Err(Error::Inflate(out.status));
    }
    Ok(out.stdout)
}

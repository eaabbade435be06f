//! One error type for the whole crate, one variant per cause, so callers
//! (and the daemon's replies) can tell a missing guest structure from a
//! broken socket from a guest that lies about itself.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while looking into a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a file or socket failed.
    #[error("I/O error on {what}: {source}")]
    Io {
        /// What was being done, e.g. "connect QMP /run/vm/web.qmp".
        what: String,
        #[source]
        source: io::Error,
    },
    /// A thread of the monitor could not be started.
    #[error("cannot start a thread to {what}: {source}")]
    ThreadSpawn {
        /// What the thread was for.
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The configuration file is not valid JSON of the expected shape.
    #[error("configuration {path}: {source}")]
    ConfigFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The configuration names no VM of this name.
    #[error("no VM named {0} in the configuration")]
    UnknownVm(String),
    /// The VM has no gdbstub socket configured, and the operation injects
    /// calls (thaw, flush).
    #[error("this VM has no gdbstub socket configured (needed for call injection)")]
    NoGdbstub,
    /// The kernel image is not an ELF file the reader understands.
    #[error("kernel image: {0}")]
    Elf(#[source] object::read::Error),
    /// The kernel image lacks a section the profile is built from.
    #[error("kernel image has no {0} section")]
    MissingSection(&'static str),
    /// The file is neither an ELF vmlinux nor a vmlinuz with an xz payload.
    #[error("kernel image is neither ELF nor an xz-compressed kernel")]
    NotAKernel,
    /// `xz` ran but did not inflate the vmlinuz payload to an ELF image.
    #[error("the xz payload did not inflate to an ELF image (xz: {0})")]
    Inflate(std::process::ExitStatus),
    /// The `.BTF` section is malformed or uses something the reader lacks.
    #[error("BTF: {0}")]
    Btf(String),
    /// The kallsyms tables could not be found, decoded or verified.
    #[error("kallsyms: {0}")]
    Kallsyms(String),
    /// A symbol the monitor needs is not in the kernel profile.
    #[error("symbol {0} not found in the kernel profile")]
    MissingSymbol(String),
    /// A struct, member or enumerator the monitor needs is not in the BTF.
    #[error("type information: {0}")]
    MissingType(String),
    /// A cached kernel profile could not be read or written as JSON.
    #[error("profile {path}: {source}")]
    ProfileFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A guest-physical range lies outside guest RAM.
    #[error("guest physical address {0:#x} (+{1}) is outside guest RAM")]
    PhysOutOfRange(u64, usize),
    /// The RAM layout does not fit the backing file.
    #[error("guest RAM layout: {0}")]
    RamLayout(String),
    /// A guest-virtual address has no mapping in the page tables.
    #[error("virtual address {0:#x} is not mapped")]
    NotMapped(u64),
    /// The running kernel could not be located, or it is another build
    /// than the profile's.
    #[error("KASLR: {0}")]
    Kaslr(String),
    /// QEMU closed the QMP connection.
    #[error("QMP connection closed")]
    QmpClosed,
    /// QMP sent a line that is not JSON.
    #[error("QMP sent malformed JSON {line:?}: {source}")]
    QmpJson {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    /// A QMP message did not have the expected shape.
    #[error("QMP: {0}")]
    QmpProtocol(String),
    /// QEMU answered a QMP command with an error.
    #[error("QMP {command} failed: {error}")]
    QmpCommand {
        command: String,
        /// QEMU's error object, as text.
        error: String,
    },
    /// The gdbstub did not answer in time.
    #[error("timed out waiting for the gdbstub")]
    GdbTimeout,
    /// The gdbstub closed the connection.
    #[error("the gdbstub closed the connection")]
    GdbClosed,
    /// A gdbstub packet could not be decoded.
    #[error("GDB remote protocol: {0}")]
    GdbProtocol(String),
    /// The gdbstub answered a packet with an error or an unexpected reply.
    #[error("the gdbstub refused {request}: {reply}")]
    GdbRefused { request: String, reply: String },
    /// The gdbstub's target description lacks a register.
    #[error("the gdbstub describes no register {0}")]
    GdbNoRegister(String),
    /// The SMBIOS tables are missing or malformed.
    #[error("SMBIOS: {0}")]
    Smbios(String),
    /// A guest data structure does not look like one.
    #[error("guest data structure looks corrupt: {0}")]
    Corrupt(String),
    /// No process with this pid in the guest.
    #[error("no process {0} in the guest")]
    NoSuchProcess(u32),
    /// The pid is a kernel thread, which is never frozen or thawed.
    #[error("{0} is a kernel thread")]
    KernelThread(u32),
    /// The process's `sighand->siglock` stayed held through every retry.
    #[error("the siglock of {0} stayed held")]
    SiglockHeld(u32),
    /// No vCPU reached a safe point for call injection in time.
    #[error("no vCPU reached a safe point within {0:?} (no syscalls in the guest?)")]
    NoSafePoint(Duration),
    /// An injected call did not return in time.
    #[error("injected call to {0:#x} did not return")]
    CallTimeout(u64),
    /// An injected call was given more arguments than registers carry.
    #[error("an injected call takes at most six arguments, not {0}")]
    TooManyArguments(usize),
    /// The request cannot be served as sent.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The daemon knows the request but does not serve it (yet).
    #[error("the monitor does not serve {0} requests yet")]
    Unsupported(&'static str),
    /// A reply could not be encoded as JSON.
    #[error("encoding a reply: {0}")]
    EncodeReply(#[source] serde_json::Error),
    /// Taint tracking failed (state, bounds, audit log, Graphviz).
    #[error(transparent)]
    Taint(crate::taint::TaintError),
}

/// Crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an `io::Error` with a short description of what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// True when the error means the connection to the VM broke (QEMU gone
    /// or restarted): the daemon then attaches afresh on the next request.
    pub fn vm_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::QmpClosed
                | Error::QmpJson { .. }
                | Error::QmpProtocol(_)
                | Error::QmpCommand { .. }
        )
    }
}

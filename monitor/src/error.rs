//! One error type for the whole crate, so callers can tell a missing guest
//! structure from a broken socket from a guest that lies about itself.

use std::io;

/// Everything that can go wrong while looking into a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("kernel image: {0}")]
    Image(String),
    #[error("BTF: {0}")]
    Btf(String),
    #[error("kallsyms: {0}")]
    Kallsyms(String),
    #[error("symbol {0} not found in the kernel profile")]
    MissingSymbol(String),
    #[error("type information: {0}")]
    MissingType(String),
    #[error("profile cache: {0}")]
    Profile(String),
    #[error("guest physical address {0:#x} (+{1}) is outside guest RAM")]
    PhysOutOfRange(u64, usize),
    #[error("virtual address {0:#x} is not mapped")]
    NotMapped(u64),
    #[error("KASLR: {0}")]
    Kaslr(String),
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("GDB remote protocol: {0}")]
    Gdb(String),
    #[error("SMBIOS: {0}")]
    Smbios(String),
    #[error("guest data structure looks corrupt: {0}")]
    Corrupt(String),
    #[error("operation refused: {0}")]
    Refused(String),
    #[error("configuration: {0}")]
    Config(String),
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
}

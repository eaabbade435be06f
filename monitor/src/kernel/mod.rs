//! What the monitor knows about a guest kernel build, learned from the
//! image alone (no debug packages): struct layouts from `.BTF`, symbols from
//! the kallsyms tables, both condensed into a cached [`profile::Profile`].

pub mod btf;
pub mod image;
pub mod kallsyms;
pub mod profile;

pub use image::KernelImage;
pub use profile::Profile;

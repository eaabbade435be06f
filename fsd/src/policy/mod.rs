//! Per-file access control: who may read and change which file.
//!
//! The guest OS may be compromised, so its permission checks protect
//! nothing. fsd sees every request and decides here, for files a policy
//! protects, by the person who authenticated at the host (through authd),
//! never by the uid, gid or pid the guest writes into the FUSE header.
//!
//! | concern | module |
//! |---|---|
//! | the policy file: parsing, checking, line-numbered errors | [`file`] |
//! | labels that follow inodes, not paths | [`labels`] |
//! | labels that follow data: files written by readers of a rule's files | [`inherit`] |
//! | live grants and asking authd | [`grants`] |
//! | the audit log | [`audit`] |
//! | the decision for one request | [`guard`] |
//! | programs a helper VM runs on the user's behalf (`[[delegate]]`) | [`delegate`] |

pub mod audit;
pub mod delegate;
pub mod file;
pub mod grants;
pub mod guard;
pub mod inherit;
pub mod labels;

pub use file::{CacheRule, Missing, Policy, PolicyError, Protect, Rule};
pub use guard::{Guard, Op};

//! Crash recovery: a new fsd continues the guest's session after the
//! serving fsd died (SIGKILL, a panic, the OOM killer), with `--crash-recovery`.
//!
//! A live handover ([`crate::handover`]) reads the session out of a paused
//! fsd; a dead one cannot be asked. So while serving, fsd keeps what a new
//! process needs where its death does not take it along:
//!
//! | concern | module |
//! |---|---|
//! | shared memory that outlives the writer | [`shm`] |
//! | node ids, open files and directory streams, journaled before the guest sees them | [`journal`] |
//! | requests popped and not answered, per queue | [`inflight`] |
//! | the supervisor holding the connection, memory, eventfds, locks | [`keeper`] |
//! | the new fsd: rebuild the tables, answer what was in flight | [`recover`] |
//!
//! docs/rejuvenation.md says what a guest observes.

pub mod inflight;
pub mod journal;
pub mod keeper;
pub mod recover;
pub mod shm;

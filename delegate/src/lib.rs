//! The host's delegation broker (docs/delegation.md).
//!
//! A user VM cannot run the administrator's setuid programs: fsd shows it
//! the delegation client in their place. The client's request arrives here
//! over the user VM's own channel (a virtio-serial port on a Unix socket
//! per VM: the socket names the VM, nothing the guest writes does). The
//! broker checks it against the `[[delegate]]` entries of fsd's policy,
//! asks authd for the user's grant (the trusted dialog, the user's own
//! password), has the helper VM's agent run the program as its owner with
//! the user's real uid, relays streams, terminal and signals both ways,
//! returns the exit status, and audits every delegation and every refusal.
//!
//! | concern | module |
//! |---|---|
//! | command line | [`config`] |
//! | what a request may become: policy entry, ids, environment | [`decide`] |
//! | asking authd for the user's grant | [`authz`] |
//! | per-VM request rate | [`limits`] |
//! | the helper VM's channel: connection, ping, one job at a time | [`helper`] |
//! | a user VM's channel: requests, relay, refusals | [`session`] |
//! | sockets QEMU connects to, one per VM | [`listener`] |
//! | the audit log | [`audit`] |
//! | errors | [`error`] |

pub mod audit;
pub mod authz;
pub mod config;
pub mod decide;
pub mod error;
pub mod helper;
pub mod limits;
pub mod listener;
pub mod session;

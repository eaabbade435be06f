//! What tells one host boot, and one host process, from every other: the
//! kernel's boot id, and a process's pid with its start time.
//!
//! Taint tracking needs both across its own restarts. A journal written in
//! another boot may lack what the page cache held when the host went down
//! (`taint::manifest`); a plugin's event numbers only continue those of the
//! same plugin, that is, of the same QEMU process ([`process_instance`]).

use std::os::fd::AsRawFd;

/// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`): with the pid, a name no later process of this boot
/// shares.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses:
    // the fields that follow start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The process at the other end of a connected Unix socket (its pid in
/// this process's pid namespace), from `SO_PEERCRED`.
pub fn peer_pid(socket: &impl AsRawFd) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// One process of one boot, as a string: `BOOT/PID/START`.
pub fn process_instance(pid: u32) -> Option<String> {
    Some(format!("{}/{pid}/{}", boot_id()?, process_start(pid)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_the_peer_of_a_socket_pair() {
        let me = std::process::id();
        let a = process_instance(me).expect("our own instance");
        assert_eq!(Some(a.clone()), process_instance(me), "stable");
        assert!(a.starts_with(&boot_id().unwrap()));
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(peer_pid(&x), Some(me));
        assert_eq!(process_start(u32::MAX), None);
    }
}

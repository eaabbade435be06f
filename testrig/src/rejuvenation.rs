//! Following fsd through live handovers and crash recoveries from the
//! outside: which process serves now, read from fsd's log and /proc, for
//! the tests that signal or kill it under a guest or a host-side driver.

use crate::daemon::Sandbox;

/// The pids named by `marker` followed by a pid, in log order.
fn pids_after(log: &str, marker: &str) -> Vec<u32> {
    log.lines()
        .filter_map(|l| l.split_once(marker))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The successors named by "handover: done; pid N serves now" lines.
pub fn handed_over(log: &str) -> Vec<u32> {
    pids_after(log, "handover: done; pid ")
}

/// The new fsd processes named by "crash recovery: done; pid N serves now"
/// lines.
pub fn recovered(log: &str) -> Vec<u32> {
    pids_after(log, "crash recovery: done; pid ")
}

/// The process that serves requests for the fsd started as `pid`: that
/// process itself without a sandbox, else the daemon its broker parent
/// forked (a child whose command name starts with `fsd`, from any of the
/// parent's threads). `None` when there is none (yet): killing `pid`
/// instead would kill the supervisor that keeps the session.
pub fn serving_daemon(pid: u32, sandbox: Sandbox) -> Option<u32> {
    if sandbox == Sandbox::None {
        return Some(pid);
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.starts_with("fsd"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_in_log_order() {
        let log = "x\n[..] handover: done; pid 12 serves now (requests paused 1ms)\n\
                   [..] crash recovery: done; pid 40 serves now\n\
                   [..] handover: done; pid 13 serves now\n";
        assert_eq!(handed_over(log), vec![12, 13]);
        assert_eq!(recovered(log), vec![40]);
    }

    #[test]
    fn without_a_sandbox_the_process_itself_serves() {
        assert_eq!(serving_daemon(7, Sandbox::None), Some(7));
        assert_eq!(serving_daemon(u32::MAX, Sandbox::Namespace), None);
    }
}

//! The guest's process list, read from `init_task.tasks`.
//!
//! `tasks` links thread-group leaders only, so this is a list of processes
//! (what `ps` shows), not of threads. The parent is `real_parent->tgid`
//! (not `parent`, which a ptracer replaces).

use crate::error::Result;
use crate::report::Process;
use crate::vmi::Kernel;

/// Upper bound on list walks, so a corrupted ring cannot loop forever.
const MAX_TASKS: usize = 1 << 20;

/// Map `__state`/`exit_state` to the letter `ps` prints.
pub fn state_letter(state: u32, exit_state: u32) -> char {
    const TASK_INTERRUPTIBLE: u32 = 0x1;
    const TASK_UNINTERRUPTIBLE: u32 = 0x2;
    const TASK_STOPPED: u32 = 0x4;
    const TASK_TRACED: u32 = 0x8;
    const EXIT_DEAD: u32 = 0x10;
    const EXIT_ZOMBIE: u32 = 0x20;
    const TASK_NOLOAD: u32 = 0x400;
    if exit_state & EXIT_ZOMBIE != 0 {
        return 'Z';
    }
    if exit_state & EXIT_DEAD != 0 {
        return 'X';
    }
    if state == 0 {
        return 'R';
    }
    if state & TASK_UNINTERRUPTIBLE != 0 && state & TASK_NOLOAD != 0 {
        return 'I';
    }
    if state & TASK_INTERRUPTIBLE != 0 {
        'S'
    } else if state & TASK_UNINTERRUPTIBLE != 0 {
        'D'
    } else if state & TASK_STOPPED != 0 {
        'T'
    } else if state & TASK_TRACED != 0 {
        't'
    } else {
        // TASK_FROZEN and other sleeping states without a letter of their own.
        'D'
    }
}

/// Addresses of every process's `task_struct` (init_task excluded).
pub fn task_addrs(k: &Kernel) -> Result<Vec<u64>> {
    let tasks_off = k.off("task_struct", "tasks")?;
    let head = k.sym("init_task")? + tasks_off;
    Ok(k.list(head, MAX_TASKS)?
        .into_iter()
        .map(|l| l - tasks_off)
        .collect())
}

/// Decode one task.
pub fn read_task(k: &Kernel, task: u64) -> Result<Process> {
    let pid = k.read_field(task, "task_struct", "pid")? as u32;
    let parent = k.read_field(task, "task_struct", "real_parent")?;
    let ppid = k.read_field(parent, "task_struct", "tgid")? as u32;
    let cred = k.read_field(task, "task_struct", "real_cred")?;
    let uid = k.read_field(cred, "cred", "uid")? as u32;
    let state = k.read_field(task, "task_struct", "__state")? as u32;
    let exit_state = k.read_field(task, "task_struct", "exit_state")? as u32;
    let comm = k.read_cstr(task + k.off("task_struct", "comm")?, 16)?;
    let mm = k.read_field(task, "task_struct", "mm")?;
    Ok(Process {
        pid,
        ppid,
        uid,
        state: state_letter(state, exit_state),
        name: comm,
        kernel_thread: mm == 0,
        task,
    })
}

/// List all processes. Pause the VM first for a consistent picture.
pub fn list(k: &Kernel) -> Result<Vec<Process>> {
    task_addrs(k)?
        .into_iter()
        .map(|t| read_task(k, t))
        .collect()
}

/// Find a process by pid.
pub fn find(k: &Kernel, pid: u32) -> Result<Option<Process>> {
    for t in task_addrs(k)? {
        if k.read_field(t, "task_struct", "pid")? as u32 == pid {
            return read_task(k, t).map(Some);
        }
    }
    Ok(None)
}

/// All threads of the process whose leader is `task` (leader included),
/// from `signal->thread_head` linked through `thread_node`.
pub fn threads(k: &Kernel, task: u64) -> Result<Vec<u64>> {
    let signal = k.read_field(task, "task_struct", "signal")?;
    let head = signal + k.off("signal_struct", "thread_head")?;
    let node_off = k.off("task_struct", "thread_node")?;
    Ok(k.list(head, MAX_TASKS)?
        .into_iter()
        .map(|n| n - node_off)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letters() {
        assert_eq!(state_letter(0, 0), 'R');
        assert_eq!(state_letter(1, 0), 'S');
        assert_eq!(state_letter(2, 0), 'D');
        assert_eq!(state_letter(0x402, 0), 'I');
        assert_eq!(state_letter(4, 0), 'T');
        assert_eq!(state_letter(0, 0x20), 'Z');
    }
}

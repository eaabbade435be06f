//! What a debug-register syscall hook costs on a KVM guest the monitor runs
//! itself: a measurement kept beside the monitor, not a part of its daemon.
//!
//! The synthetic guest (`guest.rs`) makes syscalls in a loop; runs with and
//! without the hook alternate, and the medians per call are printed
//! (docs/monitor.md, "The monitor's own KVM guests"):
//!
//! ```text
//! cargo run -p monitor --release --example kvm_syscall_hook -- --runs 7
//! ```

mod guest;

use std::process::ExitCode;

use clap::Parser;

/// Measure the debug-register syscall hook on a synthetic KVM guest.
#[derive(Parser)]
struct Args {
    /// Syscalls per unhooked run.
    #[arg(long, default_value_t = 20_000)]
    unhooked: u64,
    /// Syscalls per hooked run.
    #[arg(long, default_value_t = 5_000)]
    hooked: u64,
    /// Runs of each kind; medians are printed.
    #[arg(long, default_value_t = 7)]
    runs: usize,
}

fn main() -> ExitCode {
    let a = Args::parse();
    match guest::measure(a.unhooked, a.hooked, a.runs) {
        Ok(c) => {
            println!(
                "syscall: unhooked {:.0} ns, hooked {:.0} ns, added {:.0} ns per call (medians of {} runs)",
                c.unhooked_ns, c.hooked_ns, c.added_ns, c.runs
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvm_syscall_hook: {e}");
            ExitCode::FAILURE
        }
    }
}

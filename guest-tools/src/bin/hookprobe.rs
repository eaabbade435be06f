//! `hookprobe`: the system calls the taint hooks watch, made on purpose in a
//! guest (see `guest_tools::syscalls`).
//!
//! ```text
//! hookprobe probe              fork a child (exit 7), UNIX and TCP sends; one line per fact
//! hookprobe garbage            sendto with buffers no kernel can read (EFAULT)
//! hookprobe unix-serve PATH    accept one UNIX stream client, read it to its end
//! hookprobe unix-send PATH TXT connect to a UNIX stream server and write TXT
//! hookprobe cost [N [N_FORK]]  time getpid, read, write, fork, sendto, recvfrom;
//!                              one line per call: COST op=NAME iterations=N ns_per_op=X
//! ```
//!
//! Exit status: 0 done, 1 a call failed, 64 usage.

use std::process::ExitCode;

use guest_tools::syscalls;

const USAGE: &str = "usage: hookprobe probe | hookprobe garbage | hookprobe cost [N [N_FORK]] \
                     | hookprobe unix-serve PATH | hookprobe unix-send PATH TEXT";

fn number(arg: Option<String>, default: u64) -> Option<u64> {
    match arg {
        None => Some(default),
        Some(s) => s.parse().ok().filter(|&n| n > 0),
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("probe") if args.len() == 0 => syscalls::probe(&mut std::io::stdout()),
        Some("garbage") if args.len() == 0 => syscalls::garbage(&mut std::io::stdout()),
        Some("unix-serve") if args.len() == 1 => {
            let path = args.next().unwrap_or_default();
            syscalls::unix_serve(&path, &mut std::io::stdout())
        }
        Some("unix-send") if args.len() == 2 => {
            let (path, text) = (
                args.next().unwrap_or_default(),
                args.next().unwrap_or_default(),
            );
            syscalls::unix_send(&path, &text, &mut std::io::stdout())
        }
        Some("cost") => {
            let (Some(n), Some(n_fork)) = (number(args.next(), 20_000), number(args.next(), 300))
            else {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            };
            syscalls::cost(n, n_fork).map(|costs| {
                for c in costs {
                    println!(
                        "COST op={} iterations={} ns_per_op={:.1}",
                        c.op, c.iterations, c.ns_per_op
                    );
                }
            })
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookprobe: {e}");
            ExitCode::from(1)
        }
    }
}

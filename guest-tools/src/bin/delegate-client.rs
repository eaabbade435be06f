//! `delegate-client`: what a user VM runs in place of a delegated program
//! (fsd shows it under the program's name; docs/delegation.md).
//!
//! ```text
//! PROGRAM [ARGS...]                       as the delegated program itself
//! delegate-client --program PATH [--timing] [--] [ARGS...]
//! ```
//! Run under its own name it takes the program's share path explicitly
//! (`--timing` prints the request-to-exit time, for the benchmark). Exit
//! status: the program's, or 126 when it could not be run (the reason is
//! on stderr).

use std::os::unix::ffi::OsStringExt;

use guest_tools::delegate::client::{self, Options, STATUS_REFUSED};

fn main() {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let mut rest: Vec<Vec<u8>> = args.map(|a| a.into_vec()).collect();
    let mut opts = Options::default();
    let own_name = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "delegate-client");
    if own_name {
        let mut it = std::mem::take(&mut rest).into_iter();
        while let Some(a) = it.next() {
            match a.as_slice() {
                b"--program" => {
                    opts.program = it.next().map(|p| String::from_utf8_lossy(&p).into_owned())
                }
                b"--timing" => opts.timing = true,
                b"--" => break,
                _ => {
                    rest.push(a);
                    break;
                }
            }
        }
        rest.extend(it);
        if opts.program.is_none() {
            eprintln!("usage: delegate-client --program PATH [--timing] [--] [ARGS...]");
            std::process::exit(STATUS_REFUSED);
        }
    }
    std::process::exit(client::run(&opts, rest));
}

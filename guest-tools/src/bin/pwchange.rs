//! `pwchange`: a small passwd-like program, for delegation's tests. Run
//! setuid root (in a helper VM, with the caller's real uid), it changes
//! the password field of the caller's own line in `/etc/shadow`, and only
//! that line.
//!
//! ```text
//! pwchange [--stdin]      read the new password: a prompt on a terminal,
//!                         or one line of standard input with --stdin
//! pwchange --id           print real and effective uid, change nothing
//! ```
//! The caller is the real uid, looked up in `/etc/passwd`; the effective
//! uid must be 0 (the program's owner). The "hash" is a marked copy of the
//! password, enough for a test to see which line changed.

use std::io::{BufRead, Write};

fn fail(msg: &str) -> ! {
    eprintln!("pwchange: {msg}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // SAFETY: getuid and geteuid cannot fail and touch no memory.
    let (ruid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    if args.first().map(String::as_str) == Some("--id") {
        println!("ruid={ruid} euid={euid}");
        return;
    }
    if euid != 0 {
        fail("must run with effective uid 0 (setuid root)");
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_else(|e| fail(&format!("/etc/passwd: {e}")));
    let user = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse::<u32>().ok() == Some(ruid)).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| fail(&format!("uid {ruid} has no line in /etc/passwd")));
    println!("Changing password for {user}.");
    let stdin = std::io::stdin();
    let mut line = String::new();
    if args.first().map(String::as_str) != Some("--stdin") {
        print!("New password: ");
        let _ = std::io::stdout().flush();
    }
    if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
        fail("no password given");
    }
    let pw = line.trim_end_matches(['\n', '\r']);
    if pw.is_empty() || pw.contains(':') {
        fail("the password is empty or holds ':'");
    }
    let shadow = std::fs::read_to_string("/etc/shadow")
        .unwrap_or_else(|e| fail(&format!("/etc/shadow: {e}")));
    let mut found = false;
    let mut out = String::new();
    for l in shadow.lines() {
        let mut f: Vec<String> = l.split(':').map(str::to_string).collect();
        if f.len() > 1 && f[0] == user {
            f[1] = format!("$test${pw}");
            found = true;
        }
        out.push_str(&f.join(":"));
        out.push('\n');
    }
    if !found {
        fail(&format!("{user} has no line in /etc/shadow"));
    }
    let tmp = "/etc/.shadow.pwchange";
    if let Err(e) = std::fs::write(tmp, out).and_then(|_| std::fs::rename(tmp, "/etc/shadow")) {
        fail(&format!("writing /etc/shadow: {e}"));
    }
    println!("pwchange: password for {user} changed.");
}

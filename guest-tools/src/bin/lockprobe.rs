//! `lockprobe`: take a file lock, hold it, release it, saying what happened
//! on one line per event (no pids or times, so transcripts compare equal).
//!
//! ```text
//! lockprobe [--wait] [--hold MS | --until FILE] [--label NAME] KIND PATH
//! lockprobe --query [--label NAME] PATH
//! KIND: flock | flock-sh | posix | posix-rd | ofd
//! ```
//! `--until FILE` holds the lock until FILE exists (so a script decides when
//! to release, without relying on timing). Before unlocking it prints
//! `NAME: releasing`, after it `NAME: released`: another process's
//! `locked` line can come between them, never before `releasing`.
//!
//! Exit status: 0 locked (or query answered), 1 busy (EAGAIN/EACCES),
//! 2 other error, 64 usage.

use std::process::ExitCode;
use std::time::Duration;

use guest_tools::lock::{self, Kind, Query};

const USAGE: &str =
    "usage: lockprobe [--wait] [--hold MS | --until FILE] [--label NAME] KIND PATH\n       \
                     lockprobe --query [--label NAME] PATH\n\
                     KIND: flock | flock-sh | posix | posix-rd | ofd";

struct Args {
    wait: bool,
    query: bool,
    hold_ms: u64,
    until: Option<String>,
    label: String,
    kind: Option<Kind>,
    path: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        wait: false,
        query: false,
        hold_ms: 0,
        until: None,
        label: "lockprobe".into(),
        kind: None,
        path: String::new(),
    };
    let mut rest = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--wait" => a.wait = true,
            "--query" => a.query = true,
            "--hold" => {
                let v = it.next().ok_or("--hold needs milliseconds")?;
                a.hold_ms = v.parse().map_err(|_| format!("bad --hold value {v}"))?;
            }
            "--until" => a.until = Some(it.next().ok_or("--until needs a file name")?),
            "--label" => a.label = it.next().ok_or("--label needs a name")?,
            "-h" | "--help" => return Err(String::new()),
            _ => rest.push(arg),
        }
    }
    match (a.query, rest.as_slice()) {
        (true, [path]) => a.path = path.clone(),
        (false, [kind, path]) => {
            a.kind = Some(Kind::parse(kind).ok_or_else(|| format!("unknown lock kind {kind}"))?);
            a.path = path.clone();
        }
        _ => return Err("wrong number of arguments".into()),
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("lockprobe: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    let label = &args.label;
    let file = match lock::open(&args.path) {
        Ok(f) => f,
        Err(e) => {
            println!("{label}: open failed {}", lock::errno_name(&e));
            return ExitCode::from(2);
        }
    };
    let Some(kind) = args.kind else {
        return match lock::query(&file) {
            Ok(q) => {
                let what = match q {
                    Query::Unlocked => "unlocked",
                    Query::ReadLocked => "read-locked",
                    Query::WriteLocked => "write-locked",
                };
                println!("{label}: query {what}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{label}: query failed {}", lock::errno_name(&e));
                ExitCode::from(2)
            }
        };
    };
    if let Err(e) = lock::acquire(&file, kind, args.wait) {
        let name = lock::errno_name(&e);
        return if matches!(name.as_str(), "EAGAIN" | "EACCES") {
            println!("{label}: busy {name}");
            ExitCode::from(1)
        } else {
            println!("{label}: lock failed {name}");
            ExitCode::from(2)
        };
    }
    println!("{label}: locked");
    std::thread::sleep(Duration::from_millis(args.hold_ms));
    if let Some(until) = &args.until {
        while !std::path::Path::new(until).exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!("{label}: releasing");
    match lock::release(&file, kind) {
        Ok(()) => {
            println!("{label}: released");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{label}: unlock failed {}", lock::errno_name(&e));
            ExitCode::from(2)
        }
    }
}

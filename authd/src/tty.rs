//! Terminal fallback for hosts without a display. The prompt goes to a
//! configured terminal (a console such as `/dev/tty8`, or a pty), shows the
//! same seal (phrase on its colour, in 24-bit ANSI colour, with the colour's
//! hex code for terminals without true colour), reads the password (or, for
//! a question, o / a / anything else) with echo
//! off and restores the terminal afterwards.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::termios::{self, LocalModes, OptionalActions, QueueSelector, Termios};
use zeroize::Zeroizing;

use crate::dialog::render::display_safe;
use crate::dialog::{facts, DialogRequest, Fact};
use crate::error::{Error, Result};
use crate::prompt::Answer;

/// Restores the terminal's modes when dropped, whatever happened.
struct Restore<'a> {
    file: &'a File,
    saved: Termios,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.file, OptionalActions::Now, &self.saved);
    }
}

/// The text shown above the password prompt.
pub fn banner(req: &DialogRequest) -> String {
    let c = req.seal.color;
    let ink = c.contrasting();
    let seal = format!(
        "\x1b[1;48;2;{};{};{}m\x1b[38;2;{};{};{}m  {}  \x1b[0m",
        c.0,
        c.1,
        c.2,
        ink.0,
        ink.1,
        ink.2,
        display_safe(&req.seal.phrase)
    );
    if let Some(q) = &req.question {
        return format!(
            "\x1b[2J\x1b[H\r\n== authd: host authentication ==\r\n\r\n\
             Seal:      {seal}  ({c})\r\n\
             Not your seal? Do not allow.\r\n\r\n\
             VM:        {}\r\n\
             Principal: {}\r\n\r\n\
             Asked by a host service; process facts are read from the guest:\r\n\
             \x20 {}\r\n\r\n\
             Denies on its own after {} s.\r\n\
             Allow? o = once, a = always, anything else denies: ",
            display_safe(&req.vm),
            display_safe(&req.principal),
            display_safe(q),
            req.timeout_secs,
        );
    }
    let lines = |facts: &[Fact], indent: &str| -> String {
        facts
            .iter()
            .map(|f| format!("{indent}{:<11}{}\r\n", format!("{}:", f.label), f.value))
            .collect()
    };
    let (host, guest) = facts(req);
    let guest = if guest.is_empty() {
        String::new()
    } else {
        format!(
            "\r\nReported by the guest, not verified by the host:\r\n{}",
            lines(&guest, "  ")
        )
    };
    format!(
        "\x1b[2J\x1b[H\r\n== authd: host authentication ==\r\n\r\n\
         Seal:      {seal}  ({c})\r\n\
         Not your seal? Do not type your password.\r\n\r\n\
         {}{guest}\r\n\
         An empty password denies. Denies on its own after {} s.\r\n\
         Password: ",
        lines(&host, ""),
        req.timeout_secs,
    )
}

/// Prompts on the terminal at `path` and waits for a line.
pub fn ask(path: &Path, req: &DialogRequest, on_shown: &mut dyn FnMut()) -> Result<Answer> {
    let terr =
        |what: &str, e: std::io::Error| Error::Tty(format!("{}: {what}: {e}", path.display()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|e| terr("open", e))?;
    let saved = termios::tcgetattr(&file).map_err(|e| terr("tcgetattr", e.into()))?;
    let restore = Restore {
        file: &file,
        saved: saved.clone(),
    };
    let mut quiet = saved;
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet
        .local_modes
        .insert(LocalModes::ICANON | LocalModes::ECHONL);
    termios::tcsetattr(restore.file, OptionalActions::Now, &quiet)
        .map_err(|e| terr("tcsetattr", e.into()))?;
    // Typed-ahead input must not answer a prompt it was not meant for.
    let _ = termios::tcflush(restore.file, QueueSelector::IFlush);

    (&file)
        .write_all(banner(req).as_bytes())
        .map_err(|e| terr("write", e))?;
    on_shown();

    let deadline = Instant::now() + Duration::from_secs(req.timeout_secs);
    let mut line = Zeroizing::new(Vec::<u8>::new());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = (&file).write_all(b"\r\n(timed out)\r\n");
            return Ok(Answer::TimedOut);
        }
        let ts = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let fd = file.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(terr("poll", e.into())),
        }
        let mut buf = Zeroizing::new([0u8; 256]);
        let n = (&file).read(&mut buf[..]).map_err(|e| terr("read", e))?;
        if n == 0 {
            return Ok(Answer::Cancelled);
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > 4096 {
            return Ok(Answer::Cancelled);
        }
        if let Some(pos) = line.iter().position(|&b| b == b'\n' || b == b'\r') {
            line.truncate(pos);
            break;
        }
    }
    drop(restore);
    if req.question.is_some() {
        return Ok(match line.trim_ascii() {
            b"o" | b"once" => Answer::Allowed { always: false },
            b"a" | b"always" => Answer::Allowed { always: true },
            _ => {
                let _ = (&file).write_all(b"(denied)\r\n");
                Answer::Cancelled
            }
        });
    }
    if line.is_empty() {
        let _ = (&file).write_all(b"(denied)\r\n");
        return Ok(Answer::Cancelled);
    }
    let text = String::from_utf8(std::mem::take(&mut *line))
        .map_err(|_| Error::Tty("password is not UTF-8".into()))?;
    Ok(Answer::Password(Zeroizing::new(text)))
}

//! Logging to stderr or to syslog (`--syslog`), as virtiofsd does.

use std::ffi::CString;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Syslog;

impl Log for Syslog {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let prio = match r.level() {
            Level::Error => libc::LOG_ERR,
            Level::Warn => libc::LOG_WARNING,
            Level::Info => libc::LOG_INFO,
            Level::Debug | Level::Trace => libc::LOG_DEBUG,
        };
        let msg = format!("{}", r.args()).replace('\0', "\\0");
        if let Ok(c) = CString::new(msg) {
            // SAFETY: "%s" with one valid C string argument.
            unsafe { libc::syslog(prio, c"%s".as_ptr(), c.as_ptr()) };
        }
    }

    fn flush(&self) {}
}

/// Sets up the global logger once.
pub fn init(level: LevelFilter, syslog: bool) {
    if syslog {
        // SAFETY: the identity is a static C string.
        unsafe { libc::openlog(c"fsd".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        if log::set_boxed_logger(Box::new(Syslog)).is_ok() {
            log::set_max_level(level);
        }
    } else {
        let _ = env_logger::Builder::new()
            .filter_level(level)
            .format_timestamp_millis()
            .try_init();
    }
}

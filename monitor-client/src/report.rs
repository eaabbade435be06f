//! What the monitor reports back: the results of flush, freeze and thaw,
//! the VM's identity and its processes.
//!
//! These are the monitor's own result types (its `pagecache`, `freeze`,
//! `smbios` and `process` modules return them), so what the daemon sends is
//! exactly what the introspection code measured, field for field.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Outcome of a page-cache flush.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushReport {
    /// Inodes found in the guest (host inodes never opened there are absent).
    pub inodes: u64,
    /// Pages cached before the flush.
    pub pages_before: u64,
    /// What the guest's `invalidate_mapping_pages` reported as dropped.
    pub invalidated: u64,
    /// Frames zeroed at the safe point.
    pub zeroed: u64,
    /// Frames zeroed before the guest's call that it kept cached after all
    /// (a reader took them meanwhile): their content was written back.
    #[serde(default)]
    pub restored: u64,
    /// Pages still cached after the flush (dirty, locked, under writeback or
    /// mapped in the guest): their content stays in guest RAM.
    pub still_cached: u64,
    /// Frames that left the cache but were still referenced at the safe
    /// point (typically held by a per-CPU page batch for a moment).
    pub busy: u64,
    /// Of the `busy` frames, those found free and zeroed in a later pass.
    pub zeroed_late: u64,
    /// Time spent waiting for a vCPU to reach a safe point (guest-paced).
    pub wait_us: u64,
    /// Time from the safe point to the end (walk, calls, scrub).
    pub work_us: u64,
}

impl FlushReport {
    /// Pages whose content may still be in guest RAM after the flush: those
    /// still cached, and freed frames that stayed referenced through every
    /// later pass and so were never zeroed.
    pub fn pages_left(&self) -> u64 {
        self.still_cached + self.busy.saturating_sub(self.zeroed_late)
    }
}

impl fmt::Display for FlushReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} inodes, {} pages cached, {} invalidated, {} frames zeroed, {} given back, \
             {} still cached, {} busy ({} zeroed later), {} ms waiting for a safe point, {} ms work",
            self.inodes,
            self.pages_before,
            self.invalidated,
            self.zeroed,
            self.restored,
            self.still_cached,
            self.busy,
            self.zeroed_late,
            self.wait_us / 1000,
            self.work_us / 1000
        )
    }
}

/// What a freeze or a thaw touched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeReport {
    /// The process (thread-group leader).
    pub pid: u32,
    /// Its threads, each of which was frozen or thawed.
    pub threads: u64,
    /// Attempts until the process's siglock was seen free.
    pub attempts: u64,
    /// Threads actually woken: by `wake_up_state` when freezing sleepers,
    /// by `wake_up_process` when thawing.
    pub woken: u64,
    /// Time waiting for a safe point (paced by the guest); 0 when no call
    /// was needed.
    pub wait_us: u64,
    /// Time from the safe point to the end (the calls).
    pub work_us: u64,
}

/// The VM's identity: the guest-visible SMBIOS UUID checked against QEMU's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// What QEMU was started with (authoritative), lower-case.
    pub qmp_uuid: String,
    /// What the guest's SMBIOS table says (`None` if it could not be found).
    pub smbios_uuid: Option<String>,
    /// True when the guest-visible table disagrees with QEMU or is missing.
    pub tampered: bool,
}

/// One guest process, as `ps` would list it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// `real_parent->tgid`.
    pub ppid: u32,
    /// `real_cred->uid`.
    pub uid: u32,
    /// `ps`-style state letter.
    pub state: char,
    /// `task->comm`.
    pub name: String,
    /// True for kernel threads (no `mm`).
    pub kernel_thread: bool,
    /// Kernel address of the `task_struct`, as hex text (`"0xffff…"`).
    #[serde(with = "hex_addr")]
    pub task: u64,
}

/// Kernel addresses as `0x…` text, as people read them.
pub(crate) mod hex_addr {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| D::Error::custom(format!("address {text:?} lacks 0x")))?;
        u64::from_str_radix(digits, 16).map_err(D::Error::custom)
    }
}

/// Optional kernel addresses as `0x…` text (absent or `null` for none).
pub(crate) mod opt_hex_addr {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::hex_addr::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct Hex(#[serde(with = "super::hex_addr")] u64);
        Ok(Option::<Hex>::deserialize(d)?.map(|h| h.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_left_counts_what_was_never_scrubbed() {
        let r = |still_cached, busy, zeroed_late| FlushReport {
            still_cached,
            busy,
            zeroed_late,
            ..FlushReport::default()
        };
        assert_eq!(r(0, 0, 0).pages_left(), 0);
        assert_eq!(r(0, 3, 3).pages_left(), 0);
        assert_eq!(r(3, 1, 0).pages_left(), 4);
        assert_eq!(r(2, 4, 1).pages_left(), 5);
    }

    #[test]
    fn task_addresses_are_hex_text() {
        let p = Process {
            pid: 1,
            ppid: 0,
            uid: 0,
            state: 'S',
            name: "sh".into(),
            kernel_thread: false,
            task: 0xffff_8880_0300_0000,
        };
        let s = serde_json::to_string(&p).unwrap();
        assert!(s.contains("\"0xffff888003000000\""), "{s}");
        assert_eq!(serde_json::from_str::<Process>(&s).unwrap(), p);
        let bad = s.replace("0xffff", "ffff");
        assert!(serde_json::from_str::<Process>(&bad).is_err());
    }
}

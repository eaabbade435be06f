//! What a monitor restart may have cost a VM's tracking, and what shows it
//! cost nothing.
//!
//! The journal brings back every batch the monitor applied (docs/taint.md,
//! "Persistence"), but not the events its producers sent while it was
//! down. Those producers go on without it: fsd counts each event it could
//! not deliver, the TCG plugin numbers every event whether or not anyone
//! reads it. So after a restart each VM whose tracking had a producer is
//! marked **unproven** for that producer (its tracking is incomplete), until
//! the producer's next batch settles it:
//!
//! * **fsd**: its `dropped` is the count of events it lost since it
//!   started. If it is at least the count the journal last kept, it is the
//!   same fsd, and whatever it lost while the monitor was down is in the
//!   difference (counted as lost, as always). If it is smaller, an fsd
//!   started afresh meanwhile, and what the one before it lost is unknown:
//!   lost for good.
//! * **hooks**: the plugin's numbering ([`PluginSeq`]). The same plugin
//!   continuing right after the last number kept: nothing missed. A gap:
//!   that many events lost, counted. A new plugin after the old one said
//!   goodbye: its numbers before the first one seen are lost, counted. A
//!   new plugin without a goodbye of the old one, or hook events that came
//!   without numbers before the restart: unknown, lost for good.
//!
//! What is lost for good ([`Lost`]) stays with the VM's state: the status
//! says why, and every answer about the VM says it is incomplete. Nothing
//! here ever makes a VM's tracking look complete that a restart might have
//! left incomplete: an unproven producer stays unproven until it reports.

use serde::{Deserialize, Serialize};

use monitor_client::taint::PluginSeq;

use super::alert::rfc3339;

/// Why events of a VM may be lost for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lost {
    /// The journal was found damaged at a restart: the batches after the
    /// damage are gone.
    JournalDamaged,
    /// The host went down while the monitor ran, and the journal's last
    /// lines may not have reached the disk.
    HostCrashed,
    /// fsd started afresh while the monitor was down (its count of lost
    /// events began again): what the fsd before it lost is unknown.
    FsdRestarted,
    /// The VM's plugin (its QEMU) started afresh while the monitor was down
    /// without the old one's goodbye: its last events are unknown.
    PluginRestarted,
    /// Hook events came without the plugin's numbers before the restart, so
    /// nothing can show what was missed.
    Unnumbered,
    /// The VM had state that the snapshot and journal no longer hold
    /// (`super::manifest`).
    StateMissing,
}

impl Lost {
    fn why(self) -> &'static str {
        match self {
            Lost::JournalDamaged => {
                "the taint journal was found damaged at a restart (a crash in the middle of a \
                 write, or a disk fault): the batches after the damage are lost"
            }
            Lost::HostCrashed => {
                "the host went down while the monitor ran: the journal's last batches may not \
                 have reached the disk"
            }
            Lost::FsdRestarted => {
                "fsd started afresh while the monitor was down: what the fsd before it could \
                 not send is unknown"
            }
            Lost::PluginRestarted => {
                "the VM's hook plugin (its QEMU) started afresh while the monitor was down: the \
                 old plugin's last events are unknown"
            }
            Lost::Unnumbered => {
                "hook events came without the plugin's numbers before the monitor restarted: \
                 what it missed meanwhile is unknown"
            }
            Lost::StateMissing => {
                "the VM's taint state was not found at a restart (a damaged or lost journal, a \
                 snapshot removed): it starts again empty"
            }
        }
    }
}

/// A plugin as the state last heard of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginMark {
    pub instance: String,
    /// Its last event number accounted for.
    pub last: u64,
    /// It said goodbye.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

/// One VM's tracking across restarts (kept in snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Continuity {
    /// The plugin whose numbers the state accounts for, up to where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginMark>,
    /// Since this restart (ms since the epoch), fsd has not shown that it
    /// lost nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsd_unproven: Option<u64>,
    /// Likewise the hooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks_unproven: Option<u64>,
    /// Lost for good, each cause once, with when it was first found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<(Lost, u64)>,
}

/// Which producers a VM's state has heard from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Heard {
    pub fsd: bool,
    pub hooks: bool,
}

impl Continuity {
    /// The monitor restarted at `at_ms`: the producers the VM had are
    /// unproven, and `lost` adds causes lost for good.
    pub fn restarted(&mut self, at_ms: u64, heard: Heard, lost: &[Lost]) {
        if heard.fsd && self.fsd_unproven.is_none() {
            self.fsd_unproven = Some(at_ms);
        }
        if heard.hooks && self.hooks_unproven.is_none() {
            self.hooks_unproven = Some(at_ms);
        }
        for &l in lost {
            self.lose(l, at_ms);
        }
    }

    fn lose(&mut self, l: Lost, at_ms: u64) {
        if !self.lost.iter().any(|(k, _)| *k == l) {
            self.lost.push((l, at_ms));
        }
    }

    /// fsd reported `dropped` (its count since it started) at `at_ms`,
    /// when the state's last count from it was `last`.
    pub fn fsd_reported(&mut self, at_ms: u64, dropped: u64, last: u64) {
        if self.fsd_unproven.take().is_some() && dropped < last {
            self.lose(Lost::FsdRestarted, at_ms);
        }
    }

    /// The hooks reported a batch at `at_ms`; `seq` is the plugin's
    /// numbering when the batch came with it. Returns the events a gap in
    /// the numbering across a restart shows lost (to be counted).
    pub fn hooks_reported(&mut self, at_ms: u64, seq: Option<&PluginSeq>) -> u64 {
        let Some(seq) = seq else {
            // Nothing shown either way: what was unproven stays so.
            return 0;
        };
        let mut gap = 0;
        if self.hooks_unproven.is_some() {
            match &self.plugin {
                Some(m) if m.instance == seq.instance => {
                    gap = seq.first.saturating_sub(m.last + 1);
                }
                // Numbers start at 1.
                Some(m) if m.ended => gap = seq.first.saturating_sub(1),
                Some(_) => self.lose(Lost::PluginRestarted, at_ms),
                None => self.lose(Lost::Unnumbered, at_ms),
            }
            self.hooks_unproven = None;
        }
        let last = match &self.plugin {
            Some(m) if m.instance == seq.instance => m.last.max(seq.last),
            _ => seq.last,
        };
        self.plugin = Some(PluginMark {
            instance: seq.instance.clone(),
            last,
            ended: seq.ended,
        });
        gap
    }

    /// Why the VM's tracking is incomplete on this account, one line each.
    pub fn incomplete(&self) -> Vec<String> {
        let when = |ms: u64| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
        let mut out = Vec::new();
        if let Some(at) = self.fsd_unproven {
            out.push(format!(
                "the monitor restarted ({}); fsd has not reported since, so file events it sent \
                 while the monitor was down may be lost",
                when(at)
            ));
        }
        if let Some(at) = self.hooks_unproven {
            out.push(format!(
                "the monitor restarted ({}); the guest kernel hooks have not shown since that no \
                 event was missed while it was down",
                when(at)
            ));
        }
        for (l, at) in &self.lost {
            out.push(format!("{} ({})", l.why(), when(*at)));
        }
        out
    }
}

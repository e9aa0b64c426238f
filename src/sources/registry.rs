//! What the sources know about their terminals (online, last seen, battery, flags) and their
//! counters (frames, errors). Sources write; status and metrics read snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use crate::config::TerminalConfig;
use crate::model::TerminalId;
use crate::sources::serial::frame::{Hello, StatusMessage};

/// One terminal as its source last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TerminalStatus {
    /// `simulated`, `serial`, …
    pub kind: &'static str,
    /// Heard from recently enough.
    pub online: bool,
    /// Wall clock (ms) of the last valid frame or press.
    pub last_seen_ms: Option<u64>,
    /// Battery voltage, if the terminal reports one.
    pub battery_mv: Option<u16>,
    /// The last status flags (hardware/PROTOCOL.md § 4).
    pub flags: u8,
    /// Votes waiting in the terminal's own queue, if it reports them.
    pub queued: Option<u16>,
    /// From its hello, as hex.
    pub hardware_id: Option<String>,
    /// From its hello.
    pub firmware: Option<String>,
    /// GPIO buttons held down longer than `stuck-after`, ignored until released.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stuck_buttons: Vec<crate::model::Button>,
}

/// Counters over all sources, since start.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Valid frames received.
    pub frames: AtomicU64,
    /// Received bytes that were not a valid frame (bad CRC, noise, …), one per discarded frame.
    pub frame_errors: AtomicU64,
    /// Valid frames that made no sense here (wrong address or direction).
    pub unexpected_frames: AtomicU64,
    /// Votes refused for an invalid button.
    pub invalid_buttons: AtomicU64,
    /// Serial ports lost (unplugged, read error) and reopened.
    pub port_disconnects: AtomicU64,
    /// GPIO: buttons pressed together, counted as nothing (one per chord).
    pub gpio_chords: AtomicU64,
    /// GPIO: presses ignored because another button was held.
    pub gpio_ignored: AtomicU64,
    /// GPIO: buttons that went stuck.
    pub gpio_stuck: AtomicU64,
    /// GPIO: edges the kernel dropped (gaps in rppal's event sequence numbers).
    pub gpio_missed_edges: AtomicU64,
}

impl SourceCounters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The terminals' states and the sources' counters.
#[derive(Debug, Default)]
pub struct Registry {
    terminals: Mutex<BTreeMap<TerminalId, TerminalStatus>>,
    /// Counters, updated by the sources.
    pub counters: SourceCounters,
}

impl Registry {
    /// All configured terminals, offline until heard from.
    pub fn new(terminals: &[TerminalConfig]) -> Registry {
        let map = terminals
            .iter()
            .map(|t| {
                let status = TerminalStatus {
                    kind: t.source.kind(),
                    ..TerminalStatus::default()
                };
                (t.id.clone(), status)
            })
            .collect();
        Registry {
            terminals: Mutex::new(map),
            counters: SourceCounters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<TerminalId, TerminalStatus>> {
        self.terminals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The terminal was heard from. Returns true if it just came online.
    pub fn seen(&self, terminal: &TerminalId, now_ms: u64) -> bool {
        let mut terminals = self.lock();
        let status = terminals.entry(terminal.clone()).or_default();
        status.last_seen_ms = Some(now_ms);
        !std::mem::replace(&mut status.online, true)
    }

    /// Records a hello.
    pub fn hello(&self, terminal: &TerminalId, hello: &Hello) {
        let mut terminals = self.lock();
        let status = terminals.entry(terminal.clone()).or_default();
        status.hardware_id = Some(
            hello
                .hardware_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        status.firmware = Some(hello.firmware.clone());
    }

    /// Records a status report.
    pub fn status(&self, terminal: &TerminalId, report: &StatusMessage) {
        let mut terminals = self.lock();
        let status = terminals.entry(terminal.clone()).or_default();
        status.battery_mv = (report.battery_mv > 0).then_some(report.battery_mv);
        status.flags = report.flags;
        status.queued = Some(report.queued);
    }

    /// Records which GPIO buttons are stuck now.
    pub fn stuck_buttons(&self, terminal: &TerminalId, stuck: Vec<crate::model::Button>) {
        let mut terminals = self.lock();
        terminals.entry(terminal.clone()).or_default().stuck_buttons = stuck;
    }

    /// Marks a terminal offline. Returns true if it was online.
    pub fn offline(&self, terminal: &TerminalId) -> bool {
        let mut terminals = self.lock();
        let status = terminals.entry(terminal.clone()).or_default();
        std::mem::replace(&mut status.online, false)
    }

    /// One terminal's state.
    pub fn terminal(&self, terminal: &TerminalId) -> Option<TerminalStatus> {
        self.lock().get(terminal).cloned()
    }

    /// Every terminal's state, by id.
    pub fn snapshot(&self) -> BTreeMap<TerminalId, TerminalStatus> {
        self.lock().clone()
    }
}

//! What the sources know about their terminals (online, last seen, battery, flags) and their
//! counters (frames, errors). Sources write; status and metrics read snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{SourceConfig, TerminalConfig};
use crate::health::{SourceState, TerminalFacts};
use crate::model::TerminalId;
use crate::sources::serial::frame::{Hello, StatusMessage};

/// Where a terminal's presses come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminalKind {
    /// Random presses (demo, tests).
    #[default]
    Simulated,
    /// hardware/PROTOCOL.md on a serial port.
    Serial,
    /// Buttons on the GPIO header.
    Gpio,
}

impl TerminalKind {
    /// The kind of a configured source.
    pub fn of(source: &SourceConfig) -> TerminalKind {
        match source {
            SourceConfig::Simulated { .. } => TerminalKind::Simulated,
            SourceConfig::Serial { .. } => TerminalKind::Serial,
            SourceConfig::Gpio(_) => TerminalKind::Gpio,
        }
    }
}

impl std::fmt::Display for TerminalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TerminalKind::Simulated => "simulated",
            TerminalKind::Serial => "serial",
            TerminalKind::Gpio => "gpio",
        })
    }
}

/// One terminal as its source last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalStatus {
    /// Where its presses come from.
    pub kind: TerminalKind,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stuck_buttons: Vec<crate::model::Button>,
    /// How its source is doing.
    #[serde(default)]
    pub source: SourceState,
}

/// A terminal's state and when it was last heard from (or configured, if never).
#[derive(Debug)]
struct Entry {
    status: TerminalStatus,
    heard: Instant,
}

impl Entry {
    fn new(kind: TerminalKind) -> Entry {
        Entry {
            status: TerminalStatus {
                kind,
                ..TerminalStatus::default()
            },
            heard: Instant::now(),
        }
    }

    fn set_online(&mut self, online: bool) -> bool {
        std::mem::replace(&mut self.status.online, online)
    }
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
    terminals: Mutex<BTreeMap<TerminalId, Entry>>,
    /// Counters, updated by the sources.
    pub counters: SourceCounters,
}

impl Registry {
    /// All configured terminals, offline until heard from.
    pub fn new(terminals: &[TerminalConfig]) -> Registry {
        let registry = Registry::default();
        registry.configure(terminals);
        registry
    }

    /// Makes the configured terminals the known ones (after a reload): new ones start offline,
    /// removed ones are forgotten, one whose kind changed starts afresh; the others keep their
    /// state.
    pub fn configure(&self, terminals: &[TerminalConfig]) {
        let mut known = self.lock();
        known.retain(|id, _| terminals.iter().any(|t| &t.id == id));
        for terminal in terminals {
            let kind = TerminalKind::of(&terminal.source);
            match known.get(&terminal.id) {
                Some(entry) if entry.status.kind == kind => {}
                _ => {
                    known.insert(terminal.id.clone(), Entry::new(kind));
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<TerminalId, Entry>> {
        self.terminals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry of `terminal`; a terminal nobody configured (a late press after a reload
    /// removed it) gets a throwaway one.
    fn with<T>(&self, terminal: &TerminalId, change: impl FnOnce(&mut Entry) -> T) -> T {
        let mut terminals = self.lock();
        match terminals.get_mut(terminal) {
            Some(entry) => change(entry),
            None => change(&mut Entry::new(TerminalKind::default())),
        }
    }

    /// The terminal was heard from. Returns true if it just came online.
    pub fn seen(&self, terminal: &TerminalId, now_ms: u64) -> bool {
        self.with(terminal, |entry| {
            entry.status.last_seen_ms = Some(now_ms);
            entry.heard = Instant::now();
            !entry.set_online(true)
        })
    }

    /// Records a hello.
    pub fn hello(&self, terminal: &TerminalId, hello: &Hello) {
        self.with(terminal, |entry| {
            entry.status.hardware_id = Some(
                hello
                    .hardware_id
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            );
            entry.status.firmware = Some(hello.firmware.clone());
        });
    }

    /// Records a status report.
    pub fn status(&self, terminal: &TerminalId, report: &StatusMessage) {
        self.with(terminal, |entry| {
            let status = &mut entry.status;
            status.battery_mv = (report.battery_mv > 0).then_some(report.battery_mv);
            status.flags = report.flags;
            status.queued = Some(report.queued);
        });
    }

    /// Records which GPIO buttons are stuck now.
    pub fn stuck_buttons(&self, terminal: &TerminalId, stuck: Vec<crate::model::Button>) {
        self.with(terminal, |entry| entry.status.stuck_buttons = stuck);
    }

    /// Marks a terminal offline. Returns true if it was online.
    pub fn offline(&self, terminal: &TerminalId) -> bool {
        self.with(terminal, |entry| entry.set_online(false))
    }

    /// Records how the terminal's source is doing; a failed source leaves it offline.
    pub fn source(&self, terminal: &TerminalId, state: SourceState) {
        self.with(terminal, |entry| {
            if matches!(state, SourceState::Failed { .. }) {
                entry.set_online(false);
            }
            entry.status.source = state;
        });
    }

    /// One terminal's state.
    pub fn terminal(&self, terminal: &TerminalId) -> Option<TerminalStatus> {
        self.lock().get(terminal).map(|e| e.status.clone())
    }

    /// Every terminal's state, by id.
    pub fn snapshot(&self) -> BTreeMap<TerminalId, TerminalStatus> {
        self.lock()
            .iter()
            .map(|(id, entry)| (id.clone(), entry.status.clone()))
            .collect()
    }

    /// Runs `assess` over what health needs to know of every terminal.
    pub fn with_health_facts<T>(
        &self,
        assess: impl for<'a> FnOnce(Vec<TerminalFacts<'a>>) -> T,
    ) -> T {
        let terminals = self.lock();
        let facts = terminals
            .iter()
            .map(|(id, entry)| TerminalFacts {
                id,
                online: entry.status.online,
                ever_seen: entry.status.last_seen_ms.is_some(),
                heard: entry.heard,
                source: &entry.status.source,
            })
            .collect();
        assess(facts)
    }
}

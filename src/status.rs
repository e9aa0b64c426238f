//! The gateway's status, assembled on demand from what each part publishes: the journal's
//! counters, the sources' terminal registry, the uplink's state, the clock, and from them the
//! health ([`crate::health`]). Serves `GET /api/v1/status`, `GET /healthz`, `GET /metrics`,
//! systemd's `STATUS=` and `votegate status`, which deserialises the same [`StatusSnapshot`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::health::{self, HealthReason, HealthSettings, JournalFacts};
use crate::journal::JournalStats;
use crate::model::TerminalId;
use crate::sources::registry::{Registry, TerminalStatus};
use crate::tallies::rfc3339_utc;
use crate::uplink::{Connection, FaultKind, UplinkState};

/// Where the status comes from.
#[derive(Clone)]
pub struct StatusSource {
    /// This gateway.
    pub gateway_id: String,
    /// Its site.
    pub site: String,
    /// When the daemon started.
    pub started: Instant,
    /// The journal's counters.
    pub journal: watch::Receiver<JournalStats>,
    /// The terminals and source counters.
    pub registry: Arc<Registry>,
    /// Clocks.
    pub clock: Arc<dyn Clock>,
    /// The uplink's state (`not-configured` without `[uplink]`).
    pub uplink: watch::Receiver<UplinkState>,
    /// When faults make the gateway unhealthy (reloadable).
    pub health: watch::Receiver<HealthSettings>,
}

impl StatusSource {
    /// A status source without an uplink and with the default health settings (benchmarks,
    /// tests); the daemon replaces `uplink` and `health` with its own channels.
    pub fn new(
        gateway_id: &str,
        site: &str,
        journal: watch::Receiver<JournalStats>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
    ) -> StatusSource {
        StatusSource {
            gateway_id: gateway_id.to_string(),
            site: site.to_string(),
            started: Instant::now(),
            journal,
            registry,
            clock,
            uplink: watch::channel(UplinkState::not_configured()).1,
            health: watch::channel(HealthSettings::default()).1,
        }
    }
}

/// The status document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// votegate's version.
    pub version: String,
    /// This gateway's id.
    pub gateway_id: String,
    /// Its site.
    pub site: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The wall clock now (RFC 3339 UTC).
    pub now: String,
    /// Whether the system clock is NTP-synchronised.
    pub clock_synced: bool,
    /// True when nothing below needs an operator.
    pub healthy: bool,
    /// Why not, one entry per reason (empty when healthy).
    pub health: Vec<HealthReason>,
    /// The journal.
    pub journal: JournalStatus,
    /// The uplink (MQTT) state.
    pub uplink: UplinkStatus,
    /// Each terminal.
    pub terminals: BTreeMap<TerminalId, TerminalStatus>,
    /// Terminals online.
    pub terminals_online: usize,
    /// Source counters since start.
    pub sources: SourceCountersSnapshot,
}

/// The journal part of the status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalStatus {
    /// False while the journal's storage is failing.
    pub available: bool,
    /// Votes waiting for the uplink.
    pub depth: u64,
    /// Age of the oldest unsent vote, seconds.
    pub oldest_unsent_age_s: Option<u64>,
    /// The next seq.
    pub next_seq: u64,
    /// Votes lost to the size bound, ever.
    pub dropped: u64,
    /// Since start: accepted, filtered, duplicates, refused.
    pub accepted: u64,
    /// Accepted but filtered (not counted).
    pub filtered: u64,
    /// Retransmissions recognised.
    pub duplicates: u64,
    /// Refused (journal full, reject-new).
    pub refused: u64,
    /// Durable commits since start.
    pub commits: u64,
    /// Charged size of the buffered votes and its bound.
    pub charged_bytes: u64,
    /// The bound.
    pub max_disk_bytes: u64,
}

/// The uplink part of the status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// `not-configured` (no `[uplink]` table), `connecting`, `connected` or `disconnected`.
    pub state: Connection,
    /// When the broker last acknowledged a batch (RFC 3339), if ever.
    pub last_upload: Option<String>,
    /// The last connection problem.
    pub last_error: Option<String>,
    /// Whether that problem needs a change of configuration or only time.
    pub last_error_fault: Option<FaultKind>,
    /// For how long nothing has been delivered, seconds (`None` while delivering).
    pub undelivered_for_s: Option<u64>,
    /// Votes the broker acknowledged since start.
    pub votes_acked: u64,
    /// Connections made since start.
    pub connections: u64,
}

/// Source counters since start.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SourceCountersSnapshot {
    /// Valid serial frames.
    pub frames: u64,
    /// Discarded serial bytes (one per bad frame).
    pub frame_errors: u64,
    /// Frames for another address or direction.
    pub unexpected_frames: u64,
    /// Votes refused for an invalid button.
    pub invalid_buttons: u64,
    /// Serial ports lost and reopened.
    pub port_disconnects: u64,
    /// GPIO chords (buttons pressed together, not counted).
    pub gpio_chords: u64,
    /// GPIO presses ignored while another button was held.
    pub gpio_ignored: u64,
    /// GPIO buttons that went stuck.
    pub gpio_stuck: u64,
    /// GPIO edges the kernel dropped.
    pub gpio_missed_edges: u64,
}

impl StatusSource {
    /// The status now.
    pub fn snapshot(&self) -> StatusSnapshot {
        let now = self.clock.now();
        let stats = self.journal.borrow().clone();
        let terminals = self.registry.snapshot();
        let counters = &self.registry.counters;
        let uplink = self.uplink.borrow().clone();
        let settings = *self.health.borrow();
        let facts = JournalFacts {
            available: stats.available,
            depth: stats.depth,
            charged_bytes: stats.charged_bytes,
            max_disk_bytes: stats.max_disk_bytes,
        };
        let monotonic = tokio::time::Instant::now();
        let reasons = self.registry.with_health_facts(|terminals| {
            health::assess(&settings, &facts, &uplink, terminals, monotonic)
        });
        StatusSnapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            gateway_id: self.gateway_id.clone(),
            site: self.site.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            now: rfc3339_utc(i64::try_from(now.wall_ms).unwrap_or(i64::MAX)),
            clock_synced: now.synced,
            healthy: reasons.is_empty(),
            health: reasons,
            journal: JournalStatus {
                available: stats.available,
                depth: stats.depth,
                oldest_unsent_age_s: stats
                    .oldest_ts_ms
                    .map(|ts| now.wall_ms.saturating_sub(ts) / 1000),
                next_seq: stats.next_seq,
                dropped: stats.dropped,
                accepted: stats.outcomes.accepted,
                filtered: stats.outcomes.filtered,
                duplicates: stats.outcomes.duplicates,
                refused: stats.outcomes.refused,
                commits: stats.commits,
                charged_bytes: stats.charged_bytes,
                max_disk_bytes: stats.max_disk_bytes,
            },
            uplink: uplink_status(&uplink, monotonic),
            terminals_online: terminals.values().filter(|t| t.online).count(),
            terminals,
            sources: SourceCountersSnapshot {
                frames: counters.frames.load(Ordering::Relaxed),
                frame_errors: counters.frame_errors.load(Ordering::Relaxed),
                unexpected_frames: counters.unexpected_frames.load(Ordering::Relaxed),
                invalid_buttons: counters.invalid_buttons.load(Ordering::Relaxed),
                port_disconnects: counters.port_disconnects.load(Ordering::Relaxed),
                gpio_chords: counters.gpio_chords.load(Ordering::Relaxed),
                gpio_ignored: counters.gpio_ignored.load(Ordering::Relaxed),
                gpio_stuck: counters.gpio_stuck.load(Ordering::Relaxed),
                gpio_missed_edges: counters.gpio_missed_edges.load(Ordering::Relaxed),
            },
        }
    }
}

fn uplink_status(state: &UplinkState, now: tokio::time::Instant) -> UplinkStatus {
    UplinkStatus {
        state: state.connection,
        last_upload: state
            .last_upload_ms
            .map(|ms| rfc3339_utc(i64::try_from(ms).unwrap_or(i64::MAX))),
        last_error: state.last_error.as_ref().map(ToString::to_string),
        last_error_fault: state.last_error.as_ref().map(|e| e.fault()),
        undelivered_for_s: (state.connection != Connection::NotConfigured)
            .then_some(state.undelivered_since)
            .flatten()
            .map(|since| now.saturating_duration_since(since).as_secs()),
        votes_acked: state.votes_acked,
        connections: state.connections,
    }
}

impl StatusSource {
    /// The `{prefix}/telemetry` payload: the health facts cloud monitoring needs.
    pub fn telemetry(&self) -> Vec<u8> {
        let status = self.snapshot();
        let telemetry = serde_json::json!({
            "gateway_id": status.gateway_id,
            "site": status.site,
            "version": status.version,
            "ts": status.now,
            "uptime_s": status.uptime_s,
            "clock_synced": status.clock_synced,
            "healthy": status.healthy,
            "health": status.health.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "journal_depth": status.journal.depth,
            "oldest_unsent_age_s": status.journal.oldest_unsent_age_s,
            "dropped": status.journal.dropped,
            "accepted": status.journal.accepted,
            "filtered": status.journal.filtered,
            "terminals_online": status.terminals_online,
            "terminals": status.terminals.len(),
            "serial_frame_errors": status.sources.frame_errors,
        });
        serde_json::to_vec(&telemetry).unwrap_or_default()
    }
}

impl StatusSnapshot {
    /// The `GET /healthz` body: `ok`, or one line per reason.
    pub fn health_text(&self) -> String {
        if self.health.is_empty() {
            return "ok\n".to_string();
        }
        self.health.iter().map(|r| format!("{r}\n")).collect()
    }
}

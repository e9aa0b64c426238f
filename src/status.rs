//! The gateway's status, assembled on demand from what each part publishes: the journal's
//! counters, the sources' terminal registry, the clock. Serves `GET /api/v1/status`,
//! `GET /healthz`, `GET /metrics` and `votegate status`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::journal::JournalStats;
use crate::model::TerminalId;
use crate::sources::registry::{Registry, TerminalStatus};
use crate::tallies::rfc3339_utc;
use crate::uplink::UplinkState;

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
    /// The uplink's state, if an uplink is configured.
    pub uplink: Option<watch::Receiver<UplinkState>>,
}

/// The status document.
#[derive(Clone, Debug, Serialize)]
pub struct StatusSnapshot {
    /// votegate's version.
    pub version: &'static str,
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
#[derive(Clone, Debug, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
pub struct UplinkStatus {
    /// `not-configured` (no `[uplink]` table), `connecting`, `connected` or `disconnected`.
    pub state: &'static str,
    /// When the broker last acknowledged a batch (RFC 3339), if ever.
    pub last_upload: Option<String>,
    /// The last connection problem.
    pub last_error: Option<String>,
    /// Votes the broker acknowledged since start.
    pub votes_acked: u64,
    /// Connections made since start.
    pub connections: u64,
}

/// Source counters since start.
#[derive(Clone, Copy, Debug, Serialize)]
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
        StatusSnapshot {
            version: env!("CARGO_PKG_VERSION"),
            gateway_id: self.gateway_id.clone(),
            site: self.site.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            now: rfc3339_utc(i64::try_from(now.wall_ms).unwrap_or(i64::MAX)),
            clock_synced: now.synced,
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
            uplink: self.uplink_status(),
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

impl StatusSource {
    fn uplink_status(&self) -> UplinkStatus {
        match &self.uplink {
            None => UplinkStatus {
                state: "not-configured",
                last_upload: None,
                last_error: None,
                votes_acked: 0,
                connections: 0,
            },
            Some(receiver) => {
                let state = receiver.borrow().clone();
                UplinkStatus {
                    state: state.state,
                    last_upload: state
                        .last_upload_ms
                        .map(|ms| rfc3339_utc(i64::try_from(ms).unwrap_or(i64::MAX))),
                    last_error: state.last_error,
                    votes_acked: state.votes_acked,
                    connections: state.connections,
                }
            }
        }
    }

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
    /// `Ok` when the daemon is healthy, else the reason (for `GET /healthz`). A network outage is
    /// not unhealthy: the gateway is built to ride it out.
    pub fn health(&self) -> Result<(), String> {
        if !self.journal.available {
            return Err("journal storage is failing (see the log); votes cannot be stored".into());
        }
        if self.journal.max_disk_bytes > 0
            && self.journal.charged_bytes >= self.journal.max_disk_bytes
        {
            return Err(format!(
                "journal is full ({} votes buffered): votes are being dropped or refused",
                self.journal.depth
            ));
        }
        Ok(())
    }
}

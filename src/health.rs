//! Whether the gateway is healthy, and if not, every reason why. Pure: the caller passes in
//! what the parts published and the time; [`assess`] decides.
//!
//! A reason is something an operator must look at: votes cannot be stored (journal unavailable
//! or full); votes cannot reach the cloud (the uplink has a configuration fault, which retrying
//! cannot fix, or a network fault that has lasted `uplink.unhealthy-after`); a configured
//! terminal is not heard from (offline for `unhealthy-after`, or its source failed to start).
//! A short network outage is not a reason: the gateway is built to ride it out.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::model::TerminalId;
use crate::uplink::{FaultKind, UplinkState};

/// How long a fault may last before it makes the gateway unhealthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// A terminal offline this long (top-level `unhealthy-after`).
    pub terminal_after: Duration,
    /// The uplink failing with a network fault this long (`uplink.unhealthy-after`).
    pub uplink_after: Duration,
}

/// The default of both `unhealthy-after` keys.
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(300);

impl Default for HealthSettings {
    fn default() -> HealthSettings {
        HealthSettings {
            terminal_after: DEFAULT_UNHEALTHY_AFTER,
            uplink_after: DEFAULT_UNHEALTHY_AFTER,
        }
    }
}

/// One reason the gateway is unhealthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum HealthReason {
    /// The journal's storage fails: votes cannot be stored.
    JournalUnavailable,
    /// The journal is at its size bound: votes are being dropped or refused.
    JournalFull {
        /// Votes buffered.
        depth: u64,
    },
    /// The uplink has a fault that only a change of configuration can fix.
    UplinkRejected {
        /// What failed, in one sentence.
        error: String,
    },
    /// The uplink has not delivered for longer than `uplink.unhealthy-after`.
    UplinkUndelivered {
        /// For how long, seconds.
        for_s: u64,
        /// The last problem, if one was seen.
        error: Option<String>,
    },
    /// A configured terminal is offline and has not been heard from for `unhealthy-after`.
    TerminalOffline {
        /// The terminal.
        terminal: TerminalId,
        /// Since it was last heard from (or configured), seconds.
        for_s: u64,
        /// Whether it was ever heard from since the daemon started (or it was added).
        ever_seen: bool,
        /// Why its source cannot reach it, when known (e.g. the serial port cannot be opened).
        source_error: Option<String>,
    },
    /// A terminal's source failed to start and will not retry.
    SourceFailed {
        /// The terminal.
        terminal: TerminalId,
        /// Why.
        error: String,
    },
}

/// The kinds of [`HealthReason`], for the per-reason metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonKind {
    /// [`HealthReason::JournalUnavailable`].
    JournalUnavailable,
    /// [`HealthReason::JournalFull`].
    JournalFull,
    /// [`HealthReason::UplinkRejected`].
    UplinkRejected,
    /// [`HealthReason::UplinkUndelivered`].
    UplinkUndelivered,
    /// [`HealthReason::TerminalOffline`].
    TerminalOffline,
    /// [`HealthReason::SourceFailed`].
    SourceFailed,
}

impl ReasonKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ReasonKind; 6] = [
        ReasonKind::JournalUnavailable,
        ReasonKind::JournalFull,
        ReasonKind::UplinkRejected,
        ReasonKind::UplinkUndelivered,
        ReasonKind::TerminalOffline,
        ReasonKind::SourceFailed,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ReasonKind::JournalUnavailable => "journal_unavailable",
            ReasonKind::JournalFull => "journal_full",
            ReasonKind::UplinkRejected => "uplink_rejected",
            ReasonKind::UplinkUndelivered => "uplink_undelivered",
            ReasonKind::TerminalOffline => "terminal_offline",
            ReasonKind::SourceFailed => "source_failed",
        }
    }
}

impl HealthReason {
    /// Its kind.
    pub fn kind(&self) -> ReasonKind {
        match self {
            HealthReason::JournalUnavailable => ReasonKind::JournalUnavailable,
            HealthReason::JournalFull { .. } => ReasonKind::JournalFull,
            HealthReason::UplinkRejected { .. } => ReasonKind::UplinkRejected,
            HealthReason::UplinkUndelivered { .. } => ReasonKind::UplinkUndelivered,
            HealthReason::TerminalOffline { .. } => ReasonKind::TerminalOffline,
            HealthReason::SourceFailed { .. } => ReasonKind::SourceFailed,
        }
    }
}

/// `4 min 10 s`, `2 h 5 min`.
pub fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

impl fmt::Display for HealthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthReason::JournalUnavailable => {
                write!(
                    f,
                    "journal: storage is failing (see the log); votes cannot be stored"
                )
            }
            HealthReason::JournalFull { depth } => write!(
                f,
                "journal: full ({depth} votes buffered); votes are being dropped or refused"
            ),
            HealthReason::UplinkRejected { error } => {
                write!(f, "uplink: cannot deliver: {error}")
            }
            HealthReason::UplinkUndelivered { for_s, error } => {
                write!(
                    f,
                    "uplink: nothing delivered for {}",
                    human_duration(*for_s)
                )?;
                match error {
                    Some(error) => write!(f, ": {error}"),
                    None => write!(f, " (still connecting)"),
                }
            }
            HealthReason::TerminalOffline {
                terminal,
                for_s,
                ever_seen,
                source_error,
            } => {
                let how = if *ever_seen {
                    "offline"
                } else {
                    "never heard from"
                };
                write!(
                    f,
                    "terminal {terminal}: {how} for {}",
                    human_duration(*for_s)
                )?;
                match source_error {
                    Some(error) => write!(f, ": {error}"),
                    None => Ok(()),
                }
            }
            HealthReason::SourceFailed { terminal, error } => {
                write!(f, "terminal {terminal}: not started: {error}")
            }
        }
    }
}

/// The journal facts health depends on.
#[derive(Clone, Copy, Debug)]
pub struct JournalFacts {
    /// The storage works.
    pub available: bool,
    /// Votes buffered.
    pub depth: u64,
    /// Charged bytes.
    pub charged_bytes: u64,
    /// The bound (0: none).
    pub max_disk_bytes: u64,
}

/// How a terminal's source is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SourceState {
    /// Running (or starting).
    #[default]
    Running,
    /// It cannot reach the terminal now and keeps trying (a serial port that will not open).
    Retrying {
        /// The last problem.
        error: String,
    },
    /// It could not start and will not retry (GPIO off a Pi, pins taken).
    Failed {
        /// Why.
        error: String,
    },
}

/// One configured terminal's facts.
#[derive(Clone, Debug)]
pub struct TerminalFacts<'a> {
    /// Its id.
    pub id: &'a TerminalId,
    /// Heard from recently (by its source's own rule).
    pub online: bool,
    /// Ever heard from since it was configured.
    pub ever_seen: bool,
    /// When it was last heard from (or configured, if never).
    pub heard: Instant,
    /// Its source.
    pub source: &'a SourceState,
}

/// Every reason the gateway is unhealthy at `now`; empty when healthy.
/// Whether the buffered votes fill their budget: within 1 % of it, since they grow and are
/// dropped a block at a time (a block is under 1 % of the smallest budget) and so rarely reach it
/// exactly.
fn journal_full(journal: &JournalFacts) -> bool {
    journal.max_disk_bytes > 0
        && journal.charged_bytes >= journal.max_disk_bytes - journal.max_disk_bytes / 100
}

pub fn assess<'a>(
    settings: &HealthSettings,
    journal: &JournalFacts,
    uplink: &UplinkState,
    terminals: impl IntoIterator<Item = TerminalFacts<'a>>,
    now: Instant,
) -> Vec<HealthReason> {
    let mut reasons = Vec::new();
    if !journal.available {
        reasons.push(HealthReason::JournalUnavailable);
    }
    if journal_full(journal) {
        reasons.push(HealthReason::JournalFull {
            depth: journal.depth,
        });
    }
    if let Some(since) = uplink.undelivered_since {
        let failing = now.saturating_duration_since(since);
        match &uplink.last_error {
            Some(error) if error.fault() == FaultKind::Configuration => {
                reasons.push(HealthReason::UplinkRejected {
                    error: error.to_string(),
                });
            }
            error if failing >= settings.uplink_after => {
                reasons.push(HealthReason::UplinkUndelivered {
                    for_s: failing.as_secs(),
                    error: error.as_ref().map(ToString::to_string),
                });
            }
            _ => {}
        }
    }
    for terminal in terminals {
        match terminal.source {
            SourceState::Failed { error } => reasons.push(HealthReason::SourceFailed {
                terminal: terminal.id.clone(),
                error: error.clone(),
            }),
            source if !terminal.online => {
                let offline = now.saturating_duration_since(terminal.heard);
                if offline >= settings.terminal_after {
                    reasons.push(HealthReason::TerminalOffline {
                        terminal: terminal.id.clone(),
                        for_s: offline.as_secs(),
                        ever_seen: terminal.ever_seen,
                        source_error: match source {
                            SourceState::Retrying { error } => Some(error.clone()),
                            _ => None,
                        },
                    });
                }
            }
            _ => {}
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::mqtt::{Refusal, UplinkError};
    use crate::uplink::Connection;

    const MINUTE: Duration = Duration::from_secs(60);

    fn journal() -> JournalFacts {
        JournalFacts {
            available: true,
            depth: 3,
            charged_bytes: 100,
            max_disk_bytes: 1000,
        }
    }

    fn id(name: &str) -> TerminalId {
        TerminalId::new(name).expect("valid id")
    }

    fn failing(error: UplinkError, since: Instant) -> UplinkState {
        UplinkState {
            connection: Connection::Disconnected,
            last_error: Some(error),
            undelivered_since: Some(since),
            ..UplinkState::default()
        }
    }

    fn assess_uplink(uplink: &UplinkState, now: Instant) -> Vec<HealthReason> {
        assess(&HealthSettings::default(), &journal(), uplink, [], now)
    }

    #[tokio::test(start_paused = true)]
    async fn a_configuration_fault_is_unhealthy_at_once_a_network_fault_only_after_the_limit() {
        let start = Instant::now();
        let rejected = failing(
            UplinkError::ServerCertificate("UnknownIssuer".into()),
            start,
        );
        let reasons = assess_uplink(&rejected, start);
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].kind(), ReasonKind::UplinkRejected);
        assert!(
            reasons[0].to_string().contains("UnknownIssuer"),
            "{}",
            reasons[0]
        );

        let refused = failing(
            UplinkError::Tcp {
                addr: "127.0.0.1:1".into(),
                cause: "connection refused".into(),
            },
            start,
        );
        tokio::time::advance(4 * MINUTE).await;
        assert_eq!(assess_uplink(&refused, Instant::now()), []);
        tokio::time::advance(MINUTE).await;
        let reasons = assess_uplink(&refused, Instant::now());
        assert_eq!(
            reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["uplink: nothing delivered for 5 min 0 s: cannot connect to the broker at 127.0.0.1:1: connection refused"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_uplink_that_delivers_or_is_not_configured_is_healthy() {
        let now = Instant::now();
        let recovered = UplinkState {
            connection: Connection::Connected,
            last_error: Some(UplinkError::Refused(Refusal::NotAuthorized)),
            undelivered_since: None,
            ..UplinkState::default()
        };
        assert_eq!(assess_uplink(&recovered, now), []);
        assert_eq!(assess_uplink(&UplinkState::not_configured(), now), []);
        // Never connected at all (a black hole): unhealthy after the limit, "still connecting".
        let connecting = UplinkState {
            undelivered_since: Some(now),
            ..UplinkState::default()
        };
        tokio::time::advance(6 * MINUTE).await;
        let reasons = assess_uplink(&connecting, Instant::now());
        assert_eq!(
            reasons[0].to_string(),
            "uplink: nothing delivered for 6 min 0 s (still connecting)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn terminals_offline_too_long_or_failed_are_named() {
        let start = Instant::now();
        let (door, till, gate) = (id("door"), id("till"), id("gate"));
        let failed = SourceState::Failed {
            error: "GPIO is unavailable on this machine".into(),
        };
        let retrying = SourceState::Retrying {
            error: "/dev/ttyUSB0 does not exist".into(),
        };
        let running = SourceState::Running;
        tokio::time::advance(5 * MINUTE).await;
        let now = Instant::now();
        let terminals = [
            TerminalFacts {
                id: &door,
                online: true,
                ever_seen: true,
                heard: start,
                source: &failed,
            },
            TerminalFacts {
                id: &till,
                online: false,
                ever_seen: false,
                heard: start,
                source: &retrying,
            },
            TerminalFacts {
                id: &gate,
                online: false,
                ever_seen: true,
                heard: now - Duration::from_secs(10),
                source: &running,
            },
        ];
        let reasons = assess(
            &HealthSettings::default(),
            &journal(),
            &UplinkState::not_configured(),
            terminals,
            now,
        );
        assert_eq!(
            reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            [
                "terminal door: not started: GPIO is unavailable on this machine",
                "terminal till: never heard from for 5 min 0 s: /dev/ttyUSB0 does not exist",
            ]
        );
    }

    #[test]
    fn a_journal_within_one_percent_of_its_budget_is_full() {
        let at = |charged_bytes| JournalFacts {
            charged_bytes,
            max_disk_bytes: 1_000_000,
            ..journal()
        };
        assert!(!journal_full(&at(989_999)));
        assert!(journal_full(&at(990_000)));
        assert!(journal_full(&at(1_000_000)));
    }

    #[test]
    fn a_failing_or_full_journal_is_a_reason() {
        let now = Instant::now();
        let broken = JournalFacts {
            available: false,
            charged_bytes: 1000,
            ..journal()
        };
        let reasons = assess(
            &HealthSettings::default(),
            &broken,
            &UplinkState::not_configured(),
            [],
            now,
        );
        assert_eq!(
            reasons.iter().map(HealthReason::kind).collect::<Vec<_>>(),
            [ReasonKind::JournalUnavailable, ReasonKind::JournalFull]
        );
    }

    #[test]
    fn reasons_round_trip_through_json() {
        let reason = HealthReason::TerminalOffline {
            terminal: id("door"),
            for_s: 301,
            ever_seen: true,
            source_error: None,
        };
        let json = serde_json::to_string(&reason).expect("serialise");
        assert!(
            json.starts_with("{\"reason\":\"terminal-offline\""),
            "{json}"
        );
        let back: HealthReason = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, reason);
    }
}

//! systemd integration: `sd_notify` over the `NOTIFY_SOCKET` datagram socket (READY, STOPPING,
//! STATUS, WATCHDOG) and the watchdog interval from `WATCHDOG_USEC`. Without systemd (no
//! `NOTIFY_SOCKET`) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio::time::Instant;

use crate::health::ReasonKind;
use crate::status::StatusSnapshot;
use crate::uplink::Connection;

/// `STATUS=` is sent again at least this often, even when nothing changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// How often the status is looked at for changes.
pub const STATUS_CHECK: Duration = Duration::from_secs(1);

/// A connection to systemd's notification socket, if the daemon runs under systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, address))
        });
        Notifier { socket }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification, e.g. `READY=1`. Failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.socket {
            if let Err(err) = socket.send_to_addr(state.as_bytes(), address) {
                log::warn!("cannot notify systemd ({state}): {err}");
            }
        }
    }
}

/// Decides when systemd's `STATUS=` line is sent: when the state changes (healthy or not, the
/// kinds of reasons, the uplink's connection, terminals online), and at least every
/// [`STATUS_REFRESH`] (the counts in the line change with every vote, which alone is no reason).
#[derive(Debug, Default)]
pub struct StatusNotice {
    last: Option<(StateKey, Instant)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StateKey {
    reasons: Vec<(&'static str, String)>,
    uplink: Connection,
    terminals_online: usize,
    terminals: usize,
}

impl StatusNotice {
    /// Whether to send the line for `status` now; remembers it as sent if so.
    pub fn due(&mut self, status: &StatusSnapshot, now: Instant) -> bool {
        let key = StateKey {
            reasons: status
                .health
                .iter()
                .map(|r| {
                    let who = match r {
                        crate::health::HealthReason::TerminalOffline { terminal, .. }
                        | crate::health::HealthReason::SourceFailed { terminal, .. } => {
                            terminal.to_string()
                        }
                        _ => String::new(),
                    };
                    (ReasonKind::label(r.kind()), who)
                })
                .collect(),
            uplink: status.uplink.state,
            terminals_online: status.terminals_online,
            terminals: status.terminals.len(),
        };
        let due = match &self.last {
            None => true,
            Some((last, at)) => *last != key || now.duration_since(*at) >= STATUS_REFRESH,
        };
        if due {
            self.last = Some((key, now));
        }
        due
    }

    /// The one-line status: health first, then terminals, uplink and backlog.
    pub fn line(status: &StatusSnapshot) -> String {
        let health = if status.healthy {
            "healthy".to_string()
        } else {
            let reasons: Vec<String> = status.health.iter().map(ToString::to_string).collect();
            format!("UNHEALTHY: {}", reasons.join("; "))
        };
        let uplink = match status.uplink.state {
            Connection::NotConfigured => "no uplink",
            Connection::Connecting => "uplink connecting",
            Connection::Connected => "uplink connected",
            Connection::Disconnected => "uplink disconnected",
        };
        format!(
            "{health}; {} of {} terminals online; {uplink}; {} votes waiting for upload",
            status.terminals_online,
            status.terminals.len(),
            status.journal.depth
        )
    }
}

/// `CLOCK_MONOTONIC` in µs, for `MONOTONIC_USEC=` next to `RELOADING=1` (sd_notify(3)).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1000
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if systemd set a watchdog for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let address = SocketAddr::from_pathname(&path).expect("address");
        let notifier = Notifier {
            socket: Some((UnixDatagram::unbound().expect("socket"), address)),
        };
        notifier.notify("READY=1");
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).expect("receive");
        assert_eq!(&buffer[..n], b"READY=1");
        assert!(!Notifier { socket: None }.enabled());
    }

    fn snapshot(depth: u64, uplink: &str, health: serde_json::Value) -> StatusSnapshot {
        serde_json::from_value(serde_json::json!({
            "version": "0.1.0", "gateway_id": "gw", "site": "s", "uptime_s": 1,
            "now": "2026-11-28T10:00:00.000Z", "clock_synced": true,
            "healthy": health.as_array().is_some_and(|a| a.is_empty()), "health": health,
            "journal": {"available": true, "depth": depth, "oldest_unsent_age_s": null,
                "next_seq": 1, "dropped": 0, "accepted": 0, "filtered": 0, "duplicates": 0,
                "refused": 0, "commits": 0, "charged_bytes": 0, "max_disk_bytes": 0},
            "uplink": {"state": uplink, "last_upload": null, "last_error": null,
                "last_error_fault": null, "undelivered_for_s": null, "votes_acked": 0,
                "connections": 0},
            "terminals": {"door": {"kind": "gpio", "online": true, "last_seen_ms": 1,
                "battery_mv": null, "flags": 0, "queued": null, "hardware_id": null,
                "firmware": null}},
            "terminals_online": 1,
            "sources": {"frames": 0, "frame_errors": 0, "unexpected_frames": 0,
                "invalid_buttons": 0, "port_disconnects": 0, "gpio_chords": 0,
                "gpio_ignored": 0, "gpio_stuck": 0, "gpio_missed_edges": 0}
        }))
        .expect("a status snapshot")
    }

    #[tokio::test(start_paused = true)]
    async fn status_is_sent_on_changes_and_every_30_s_not_for_every_vote() {
        let mut notice = StatusNotice::default();
        let start = Instant::now();
        let calm = snapshot(3, "connected", serde_json::json!([]));
        assert!(notice.due(&calm, start), "the first one");
        assert_eq!(
            StatusNotice::line(&calm),
            "healthy; 1 of 1 terminals online; uplink connected; 3 votes waiting for upload"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            !notice.due(
                &snapshot(4, "connected", serde_json::json!([])),
                Instant::now()
            ),
            "a vote alone is no change"
        );
        let lost = snapshot(4, "disconnected", serde_json::json!([]));
        assert!(notice.due(&lost, Instant::now()), "the uplink went away");
        let rejected = snapshot(
            4,
            "disconnected",
            serde_json::json!([{"reason": "uplink-rejected", "error": "certificate rejected"}]),
        );
        assert!(notice.due(&rejected, Instant::now()), "unhealthy now");
        assert_eq!(
            StatusNotice::line(&rejected),
            "UNHEALTHY: uplink: cannot deliver: certificate rejected; 1 of 1 terminals online; uplink disconnected; 4 votes waiting for upload"
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!notice.due(&rejected, Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(notice.due(&rejected, Instant::now()), "every 30 s at least");
    }
}

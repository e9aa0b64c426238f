//! `GET /metrics`: the status and the tallies in Prometheus text format (version 0.0.4), rendered
//! from snapshots at each scrape.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::DisplayState;
use crate::alerts::AlertsSnapshot;
use crate::health::ReasonKind;
use crate::status::StatusSnapshot;
use crate::tallies::TalliesSnapshot;
use crate::uplink::Connection;

/// `GET /metrics`.
pub async fn metrics(State(state): State<DisplayState>) -> Response {
    let status = state.status.snapshot();
    let tallies = state.tallies.snapshot.borrow().clone();
    let http = HttpCounts {
        screens: state.screens_connected(),
        connections: state.connections.open(),
        refused: state.connections.refused(),
    };
    let alerts = state.tallies.alerts.borrow().clone();
    let mut text = render(&status, &tallies, &http);
    render_alerts(&mut text, &alerts);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Prometheus text being written (also the ingest's `/metrics`).
pub(crate) struct Exposition(pub(crate) String);

impl Exposition {
    /// `# HELP` and `# TYPE` of a family.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; label values escaped.
    pub(crate) fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}=\"{}\"",
                        v.replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n")
                    )
                })
                .collect();
            let _ = write!(self.0, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one unlabelled sample.
    pub(crate) fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl std::fmt::Display,
    ) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The HTTP server's own counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpCounts {
    /// Event streams open.
    pub screens: usize,
    /// Connections open.
    pub connections: usize,
    /// Connections refused (display.max-connections) since start.
    pub refused: u64,
}

/// The exposition text.
pub fn render(status: &StatusSnapshot, tallies: &TalliesSnapshot, http: &HttpCounts) -> String {
    let mut out = Exposition(String::new());
    out.family(
        "votegate_info",
        "gauge",
        "Build and identity of this gateway.",
    );
    out.sample(
        "votegate_info",
        &[
            ("version", &status.version),
            ("gateway", &status.gateway_id),
            ("site", &status.site),
        ],
        1,
    );
    out.single(
        "votegate_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        status.uptime_s,
    );
    out.single(
        "votegate_healthy",
        "gauge",
        "1 when /healthz answers 200, 0 when it lists reasons.",
        u8::from(status.healthy),
    );
    out.family(
        "votegate_unhealthy_reasons",
        "gauge",
        "Reasons /healthz lists now, per kind (a terminal_offline per terminal).",
    );
    for kind in ReasonKind::ALL {
        let count = status.health.iter().filter(|r| r.kind() == kind).count();
        out.sample(
            "votegate_unhealthy_reasons",
            &[("reason", kind.label())],
            count,
        );
    }
    out.single(
        "votegate_clock_synced",
        "gauge",
        "1 if the system clock is NTP-synchronised.",
        u8::from(status.clock_synced),
    );
    let journal = &status.journal;
    out.single(
        "votegate_votes_accepted_total",
        "counter",
        "Presses stored in the journal since start.",
        journal.accepted,
    );
    out.single(
        "votegate_votes_filtered_total",
        "counter",
        "Accepted presses marked filtered by the anti-abuse rule, since start.",
        journal.filtered,
    );
    out.single(
        "votegate_votes_duplicate_total",
        "counter",
        "Retransmitted votes recognised as already stored, since start.",
        journal.duplicates,
    );
    out.single(
        "votegate_votes_refused_total",
        "counter",
        "Presses refused because the journal was full (reject-new), since start.",
        journal.refused,
    );
    out.single(
        "votegate_votes_dropped_total",
        "counter",
        "Votes lost to the journal's size bound, ever (persistent).",
        journal.dropped,
    );
    out.single(
        "votegate_journal_depth",
        "gauge",
        "Votes buffered, waiting for the uplink.",
        journal.depth,
    );
    out.single(
        "votegate_journal_oldest_unsent_age_seconds",
        "gauge",
        "Age of the oldest vote not yet acknowledged by the broker (0 when none).",
        journal.oldest_unsent_age_s.unwrap_or(0),
    );
    out.single(
        "votegate_journal_available",
        "gauge",
        "1 while the journal's storage works.",
        u8::from(journal.available),
    );
    out.single(
        "votegate_journal_commits_total",
        "counter",
        "Durable journal commits (flush + fsync) since start.",
        journal.commits,
    );
    out.single(
        "votegate_journal_charged_bytes",
        "gauge",
        "Size charged against journal.max-disk-size.",
        journal.charged_bytes,
    );
    out.single(
        "votegate_journal_max_bytes",
        "gauge",
        "journal.max-disk-size.",
        journal.max_disk_bytes,
    );
    let sources = &status.sources;
    out.single(
        "votegate_serial_frames_total",
        "counter",
        "Valid frames received from serial terminals.",
        sources.frames,
    );
    out.single(
        "votegate_serial_frame_errors_total",
        "counter",
        "Garbage or corrupted frames skipped on serial lines.",
        sources.frame_errors,
    );
    out.single(
        "votegate_serial_unexpected_frames_total",
        "counter",
        "Valid frames for another address or direction.",
        sources.unexpected_frames,
    );
    out.single(
        "votegate_serial_invalid_buttons_total",
        "counter",
        "Votes refused for an invalid button number.",
        sources.invalid_buttons,
    );
    out.single(
        "votegate_serial_port_disconnects_total",
        "counter",
        "Serial ports lost and reopened.",
        sources.port_disconnects,
    );
    out.single(
        "votegate_gpio_chords_total",
        "counter",
        "GPIO buttons pressed together (not counted as votes).",
        sources.gpio_chords,
    );
    out.single(
        "votegate_gpio_ignored_presses_total",
        "counter",
        "GPIO presses ignored because another button was held.",
        sources.gpio_ignored,
    );
    out.single(
        "votegate_gpio_stuck_total",
        "counter",
        "GPIO buttons held longer than stuck-after.",
        sources.gpio_stuck,
    );
    out.single(
        "votegate_gpio_missed_edges_total",
        "counter",
        "GPIO edges the kernel dropped (gaps in event sequence numbers).",
        sources.gpio_missed_edges,
    );
    out.single(
        "votegate_uplink_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        u8::from(status.uplink.state == Connection::Connected),
    );
    out.single(
        "votegate_screens_connected",
        "gauge",
        "Screens receiving the live event stream.",
        http.screens,
    );
    out.single(
        "votegate_http_connections",
        "gauge",
        "HTTP connections open (display.max-connections bounds them).",
        http.connections,
    );
    out.single(
        "votegate_http_connections_refused_total",
        "counter",
        "HTTP connections answered 503 because display.max-connections were open, since start.",
        http.refused,
    );
    out.single(
        "votegate_terminals_online",
        "gauge",
        "Terminals heard from recently.",
        status.terminals_online,
    );
    out.family(
        "votegate_terminal_online",
        "gauge",
        "1 if the terminal was heard from recently.",
    );
    for (id, terminal) in &status.terminals {
        out.sample(
            "votegate_terminal_online",
            &[("terminal", id.as_str())],
            u8::from(terminal.online),
        );
    }
    out.family(
        "votegate_terminal_battery_millivolts",
        "gauge",
        "Battery voltage reported by the terminal.",
    );
    for (id, terminal) in &status.terminals {
        if let Some(mv) = terminal.battery_mv {
            out.sample(
                "votegate_terminal_battery_millivolts",
                &[("terminal", id.as_str())],
                mv,
            );
        }
    }
    out.family(
        "votegate_votes_today",
        "gauge",
        "Counted votes today (site time zone, within opening hours), per terminal and button.",
    );
    for (id, windows) in &tallies.terminals {
        for (button, count) in ["1", "2", "3", "4"].iter().zip(windows.today.0) {
            out.sample(
                "votegate_votes_today",
                &[("terminal", id.as_str()), ("button", button)],
                count,
            );
        }
    }
    out.family(
        "votegate_happy_index_today",
        "gauge",
        "Today's happy index (0-100), per terminal; absent without votes.",
    );
    for (id, windows) in &tallies.terminals {
        if let Some(index) = windows.today.happy_index() {
            out.sample(
                "votegate_happy_index_today",
                &[("terminal", id.as_str())],
                format!("{index:.3}"),
            );
        }
    }
    out.0
}

/// The alert gauges: how many are open, and each open alert by scope and kind.
pub fn render_alerts(text: &mut String, alerts: &AlertsSnapshot) {
    let mut out = Exposition(std::mem::take(text));
    out.single(
        "votegate_alerts_open",
        "gauge",
        "Alerts open now (GET /api/v1/alerts).",
        alerts.open.len(),
    );
    out.family(
        "votegate_alert_open",
        "gauge",
        "1 for each open alert, by its scope (site or terminal) and kind, with the number that opened it as `value`.",
    );
    for alert in &alerts.open {
        let id = alert.id.to_string();
        let value = alert.value.to_string();
        out.sample(
            "votegate_alert_open",
            &[
                ("id", id.as_str()),
                ("scope", alert.scope.as_str()),
                ("kind", alert.kind.name()),
                ("value", value.as_str()),
            ],
            1,
        );
    }
    *text = out.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition(String::new());
        out.sample("m", &[("a", "x\"y\\z")], 1);
        assert_eq!(out.0, "m{a=\"x\\\"y\\\\z\"} 1\n");
    }
}

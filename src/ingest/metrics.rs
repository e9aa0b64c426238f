//! The ingest's `/metrics` (Prometheus text) and `/healthz`: what this replica did since it
//! started (counters, histograms, connections), and the completeness ledger's live view of every
//! gateway (the figures of `ingest report`, from [`super::report::Report::build_live`], read from
//! PostgreSQL every `ledger-interval` by one task, not at each scrape).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::report::{GatewayReport, Report};
use super::store::BatchOutcome;
use crate::display::metrics::Exposition;

/// Upper bounds (seconds) of the histograms' buckets.
const BUCKETS: [f64; 17] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
    3600.0,
];

/// A Prometheus histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] (not cumulative here).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations above the last bound.
    over: AtomicU64,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        match BUCKETS.iter().position(|bound| seconds <= *bound) {
            Some(index) => self.buckets[index].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        out.family(name, "histogram", help);
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            out.sample(
                &format!("{name}_bucket"),
                &[("le", &bound.to_string())],
                cumulative,
            );
        }
        cumulative += self.over.load(Ordering::Relaxed);
        out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], cumulative);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.sample(&format!("{name}_sum"), &[], sum);
        out.sample(&format!("{name}_count"), &[], cumulative);
    }
}

/// What this replica did since it started, and its live state. Shared by the consumer's tasks.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Votes new to the store.
    pub inserted: AtomicU64,
    /// Redelivered votes absorbed.
    pub duplicates: AtomicU64,
    /// Conflicting arrivals (alarmed).
    pub conflicts: AtomicU64,
    /// Dropped ranges new to the store.
    pub dropped_ranges: AtomicU64,
    /// Messages that were not batches, or batches that can never be written (acknowledged and
    /// dropped, logged as errors).
    pub rejected: AtomicU64,
    /// Connections to the broker lost or refused.
    pub broker_failures: AtomicU64,
    /// PostgreSQL failures (connects, statements, COMMITs).
    pub database_failures: AtomicU64,
    /// Subscribed to the broker now.
    pub subscribed: AtomicBool,
    /// PostgreSQL connections open now.
    pub database_connections: AtomicU64,
    /// Messages received and not yet acknowledged.
    pub unacknowledged: AtomicU64,
    /// BEGIN to COMMIT of a batch.
    pub write_seconds: Histogram,
    /// From the newest vote's timestamp to the COMMIT that stored it (batches with new votes):
    /// the age of the cloud's newest data; publish → COMMIT when the gateway publishes at once.
    pub delay_seconds: Histogram,
    /// The ledger's live view and when it was read (Unix ms), or why it could not be.
    pub ledger: Mutex<LedgerView>,
}

/// The last reading of the ledger.
#[derive(Debug, Default)]
pub enum LedgerView {
    /// Not read yet.
    #[default]
    Unread,
    /// Read at this time (Unix ms, the database's clock).
    Read(i64, Report),
}

impl IngestMetrics {
    /// Counts a committed batch.
    pub fn committed(
        &self,
        outcome: &BatchOutcome,
        write: Duration,
        newest_vote_age: Option<Duration>,
    ) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.inserted.fetch_add(outcome.inserted, Ordering::Relaxed);
        self.duplicates
            .fetch_add(outcome.duplicates, Ordering::Relaxed);
        self.conflicts
            .fetch_add(outcome.conflicts, Ordering::Relaxed);
        self.dropped_ranges
            .fetch_add(outcome.dropped_ranges, Ordering::Relaxed);
        self.write_seconds.observe(write);
        if let (true, Some(age)) = (outcome.inserted > 0, newest_vote_age) {
            self.delay_seconds.observe(age);
        }
    }

    /// Healthy: subscribed and at least one PostgreSQL connection open.
    pub fn healthy(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
            && self.database_connections.load(Ordering::Relaxed) > 0
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = Exposition(String::new());
        let counters: [(&str, &str, &AtomicU64); 8] = [
            ("votegate_ingest_batches_total", "Batches committed by this replica.", &self.batches),
            ("votegate_ingest_votes_inserted_total", "Votes new to the store, written by this replica.", &self.inserted),
            ("votegate_ingest_duplicates_total", "Redelivered votes absorbed by this replica.", &self.duplicates),
            ("votegate_ingest_conflicts_total", "Votes redelivered with different content (kept out of votes, recorded in vote_conflicts).", &self.conflicts),
            ("votegate_ingest_dropped_ranges_total", "Dropped ranges reported by gateways, new to the store.", &self.dropped_ranges),
            ("votegate_ingest_rejected_messages_total", "Messages that are not batches or can never be written (acknowledged, logged).", &self.rejected),
            ("votegate_ingest_broker_failures_total", "Broker connections lost or refused.", &self.broker_failures),
            ("votegate_ingest_database_failures_total", "PostgreSQL connections or statements that failed.", &self.database_failures),
        ];
        for (name, help, value) in counters {
            out.single(name, "counter", help, value.load(Ordering::Relaxed));
        }
        out.single(
            "votegate_ingest_subscribed",
            "gauge",
            "1 when subscribed to the broker.",
            u8::from(self.subscribed.load(Ordering::Relaxed)),
        );
        out.single(
            "votegate_ingest_database_connections",
            "gauge",
            "PostgreSQL connections open.",
            self.database_connections.load(Ordering::Relaxed),
        );
        out.single(
            "votegate_ingest_unacknowledged_messages",
            "gauge",
            "Messages received and not yet acknowledged to the broker.",
            self.unacknowledged.load(Ordering::Relaxed),
        );
        self.write_seconds.render(
            &mut out,
            "votegate_ingest_batch_write_seconds",
            "BEGIN to COMMIT of one batch.",
        );
        self.delay_seconds.render(
            &mut out,
            "votegate_ingest_commit_delay_seconds",
            "From a batch's newest vote timestamp to its COMMIT (batches with new votes).",
        );
        if let Ok(ledger) = self.ledger.lock() {
            render_ledger(&mut out, &ledger);
        }
        out.0
    }
}

/// One figure of a gateway's line of the report.
type Field = fn(&GatewayReport) -> u64;

fn render_ledger(out: &mut Exposition, ledger: &LedgerView) {
    let LedgerView::Read(at_ms, report) = ledger else {
        return;
    };
    out.single(
        "votegate_ingest_ledger_read_timestamp_seconds",
        "gauge",
        "When the ledger below was read (Unix time).",
        *at_ms as f64 / 1000.0,
    );
    let total = |field: Field| -> u64 { report.gateways.iter().map(field).sum() };
    out.single(
        "votegate_ingest_ledger_gateways",
        "gauge",
        "Gateways in the ledger.",
        report.gateways.len(),
    );
    out.single(
        "votegate_ingest_ledger_missing",
        "gauge",
        "Seqs unaccounted for longer than the grace period, all gateways (0 when complete).",
        total(|g| g.missing),
    );
    out.single(
        "votegate_ingest_ledger_conflicts",
        "gauge",
        "Votes with conflicting redeliveries, all gateways.",
        total(|g| g.conflicts),
    );
    let families: [(&str, &str, Field); 8] = [
        ("received", "Votes stored.", |g| g.received),
        (
            "dropped",
            "Seqs the gateway reported dropped (not received).",
            |g| g.dropped,
        ),
        (
            "missing",
            "Seqs unaccounted for longer than the grace period.",
            |g| g.missing,
        ),
        (
            "pending",
            "Seqs unaccounted for, younger than the grace period.",
            |g| g.pending,
        ),
        ("duplicates", "Redelivered votes absorbed.", |g| {
            g.duplicates
        }),
        ("conflicts", "Votes with conflicting redeliveries.", |g| {
            g.conflicts
        }),
        (
            "contiguous_through",
            "Every seq up to this one is received or dropped.",
            |g| g.contiguous_through,
        ),
        ("highest_seq", "The highest seq accounted for.", |g| {
            g.highest_seq
        }),
    ];
    for (suffix, help, field) in families {
        let name = format!("votegate_ingest_gateway_{suffix}");
        out.family(&name, "gauge", help);
        for g in &report.gateways {
            out.sample(
                &name,
                &[("gateway", &g.gateway_id), ("site", &g.site)],
                field(g),
            );
        }
    }
}

/// Serves `/metrics` and `/healthz` (200 when subscribed with a PostgreSQL connection, else
/// 503) until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<IngestMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(exposition))
        .route("/healthz", get(healthz))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the metrics listener (its errors name the address).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| format!("cannot listen on {addr} (metrics-listen): {err}"))
}

async fn exposition(State(metrics): State<Arc<IngestMetrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn healthz(State(metrics): State<Arc<IngestMetrics>>) -> Response {
    if metrics.healthy() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let why = match (
            metrics.subscribed.load(Ordering::Relaxed),
            metrics.database_connections.load(Ordering::Relaxed) > 0,
        ) {
            (false, false) => "not subscribed to the broker; no PostgreSQL connection\n",
            (false, true) => "not subscribed to the broker\n",
            _ => "no PostgreSQL connection\n",
        };
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_what_lies_above_its_last_bound() {
        let h = Histogram::default();
        for ms in [0, 3, 3, 40, 7_200_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = Exposition(String::new());
        h.render(&mut out, "x", "help");
        let text = out.0;
        assert!(text.contains("x_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"0.005\"} 3\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"0.05\"} 4\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"3600\"} 4\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("x_count 5\n"), "{text}");
    }

    #[test]
    fn a_batch_without_new_votes_has_no_delay() {
        let m = IngestMetrics::default();
        let redelivery = BatchOutcome {
            duplicates: 10,
            ..BatchOutcome::default()
        };
        m.committed(
            &redelivery,
            Duration::from_millis(2),
            Some(Duration::from_secs(90)),
        );
        assert_eq!(m.delay_seconds.count.load(Ordering::Relaxed), 0);
        assert_eq!(m.write_seconds.count.load(Ordering::Relaxed), 1);
        assert_eq!(m.duplicates.load(Ordering::Relaxed), 10);
        assert!(!m.healthy());
        m.subscribed.store(true, Ordering::Relaxed);
        m.database_connections.store(2, Ordering::Relaxed);
        assert!(m.healthy());
        let text = m.render();
        assert!(
            text.contains("votegate_ingest_duplicates_total 10\n"),
            "{text}"
        );
        assert!(
            !text.contains("votegate_ingest_ledger_missing"),
            "not read yet"
        );
    }
}

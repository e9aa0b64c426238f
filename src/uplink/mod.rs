//! The uplink: forwards the journal's votes to the cloud over MQTT/TLS, and deletes them from the
//! journal only after the broker acknowledged the batch that carried them.
//!
//! Delivery is owned by the journal, not by the MQTT library (DESIGN.md practice 7). Each
//! connection is a fresh rumqttc client with a clean session; [`inflight`] maps packet ids to
//! batches and computes how far the journal may delete; after every reconnect sending restarts
//! from the oldest unacknowledged vote, so redelivered votes keep their seq. Two cursors read the
//! journal: live votes (pressed since the connection came up) go first, the backlog fills the
//! remaining in-flight slots, so draining days of backlog never delays a fresh vote by more than
//! a few batches.
//!
//! | file | part |
//! | --- | --- |
//! | [`payload`] | the batch schema, postcard and JSON (pure) |
//! | [`batch`] | cutting votes into batches within the limits (pure) |
//! | [`inflight`] | packet id ↔ batch, the ack frontier (pure) |
//! | [`ratelimit`] | optional publish and byte rate limits (pure) |
//! | [`mqtt`] | the only file importing rumqttc, and rustls for the connection: TLS, connection, errors, the check probe |
//! | [`files`] | the CA, client certificate, key and password files checked offline (rustls, x509-parser) |
//! | [`task`] | the loop that ties them together |

pub mod batch;
pub mod files;
pub mod inflight;
pub mod mqtt;
pub mod payload;
pub mod ratelimit;
pub mod task;

use std::path::PathBuf;
use std::time::Duration;

use payload::PayloadFormat;

/// Where the broker's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// The system's trusted roots (`/etc/ssl/certs`).
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// TLS settings (the server certificate is always verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trusted CAs.
    pub ca: CaSource,
    /// Client certificate chain and key (PEM files), for mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols, e.g. `x-amzn-mqtt-ca` for AWS IoT Core on port 443.
    pub alpn: Vec<String>,
}

/// Everything the uplink needs, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS, or `None` for plain MQTT (only when the config says `tls = false`).
    pub tls: Option<TlsSettings>,
    /// Username and the file holding the password (first line).
    pub username: Option<String>,
    /// The password file.
    pub password_file: Option<PathBuf>,
    /// MQTT client id.
    pub client_id: String,
    /// Topic prefix, placeholders filled in.
    pub topic_prefix: String,
    /// Payload encoding.
    pub format: PayloadFormat,
    /// Most votes per batch.
    pub max_batch_votes: usize,
    /// Most bytes per batch payload.
    pub max_payload_bytes: usize,
    /// How long live votes may wait to share a batch.
    pub max_batch_age: Duration,
    /// Batches published and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// Longest wait between reconnection attempts.
    pub backoff_cap: Duration,
    /// How often telemetry is published.
    pub telemetry_interval: Duration,
    /// Optional limit on publishes per second.
    pub max_publishes_per_second: Option<f64>,
    /// Optional limit on payload bytes per second.
    pub max_bytes_per_second: Option<f64>,
}

impl UplinkSettings {
    /// `{prefix}/votes`.
    pub fn votes_topic(&self) -> String {
        format!("{}/votes", self.topic_prefix)
    }

    /// `{prefix}/status` (retained).
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.topic_prefix)
    }

    /// `{prefix}/telemetry`.
    pub fn telemetry_topic(&self) -> String {
        format!("{}/telemetry", self.topic_prefix)
    }

    /// `{prefix}/alerts`.
    pub fn alerts_topic(&self) -> String {
        format!("{}/alerts", self.topic_prefix)
    }
}

/// Where the connection to the broker stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connection {
    /// No `[uplink]` table: votes stay in the journal.
    NotConfigured,
    /// Trying to connect.
    #[default]
    Connecting,
    /// Connected (the broker accepted our CONNECT).
    Connected,
    /// The last attempt failed or the connection was lost; waiting to retry.
    Disconnected,
}

/// Whether an uplink problem needs someone to change something, or only time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Retrying cannot help: a certificate rejected, credentials refused, a key file missing.
    Configuration,
    /// The network or the broker is away; retrying may help.
    Network,
}

/// What the uplink reports for the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkState {
    /// The connection.
    pub connection: Connection,
    /// The last problem, if any (kept after recovery, for the status page).
    pub last_error: Option<mqtt::UplinkError>,
    /// Since when nothing has been delivered: set when the uplink starts or loses its
    /// connection, cleared when the broker acknowledges a publish. `None` while delivering.
    pub undelivered_since: Option<tokio::time::Instant>,
    /// Wall clock (ms) of the last acknowledged batch.
    pub last_upload_ms: Option<u64>,
    /// Votes acknowledged by the broker since start.
    pub votes_acked: u64,
    /// Batches acknowledged since start.
    pub batches_acked: u64,
    /// Connections made since start.
    pub connections: u64,
    /// The batch size limit in force (lowered if the broker refuses large packets).
    pub max_payload_bytes: usize,
}

impl UplinkState {
    /// The state of a gateway without `[uplink]`.
    pub fn not_configured() -> UplinkState {
        UplinkState {
            connection: Connection::NotConfigured,
            ..UplinkState::default()
        }
    }

    /// The problem that keeps the uplink from delivering now, if any.
    pub fn current_fault(&self) -> Option<&mqtt::UplinkError> {
        self.undelivered_since?;
        self.last_error.as_ref()
    }
}

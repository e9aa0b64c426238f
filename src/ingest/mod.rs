//! `votegate ingest`: the cloud-side reference consumer (CONTRACT § Cloud ingest; issue 17),
//! built with the cargo feature `ingest`. Batches (the gateway's own [`crate::uplink::payload`])
//! are written to PostgreSQL, one transaction each, idempotently on `(gateway_id, seq)`; the
//! completeness ledger accounts for every seq of every gateway.
//!
//! - this file: the config (TOML, strict, errors name key and line, like the gateway's);
//! - [`schema`]: the migrations; [`store`]: the only file that talks to PostgreSQL;
//! - [`ledger`]: the completeness arithmetic, pure; [`report`]: what `ingest report` prints;
//! - [`consumer`]: MQTT (shared subscription, manual acks) → store, acknowledging after COMMIT.

pub mod acks;
pub mod consumer;
pub mod fleet;
pub mod ledger;
pub mod metrics;
pub mod report;
pub mod schema;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Document};

/// The topic filter when the config does not say: every gateway's batches.
pub const DEFAULT_TOPIC: &str = "votegate/+/+/votes";
/// The shared-subscription group when the config does not say.
pub const DEFAULT_GROUP: &str = "votegate-ingest";
/// PostgreSQL connections per replica when the config does not say.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// The most connections a replica may open.
pub const MAX_CONNECTIONS: usize = 64;

/// The validated ingest config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// `postgres-url`, e.g. `postgresql://ingest@db.example.com:5432/votes`.
    pub postgres_url: String,
    /// `[mqtt]`: needed to consume; `ingest report` works without it.
    pub mqtt: Option<MqttSettings>,
    /// `connections`: PostgreSQL connections writing batches at once (default 4).
    pub connections: usize,
    /// `metrics-listen`: where `/metrics` and `/healthz` are served (none by default).
    pub metrics_listen: Option<SocketAddr>,
    /// `ledger-interval`: how often `/metrics` reads the ledger (default 15 s).
    pub ledger_interval: Duration,
    /// `missing-grace`: in `/metrics`, a gap is missing (not pending) once the seq above it is
    /// this old (default 5 min, as `ingest report --grace`).
    pub missing_grace: Duration,
}

/// `[mqtt]`: the broker, as the gateway's `[uplink]` keys, plus the subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port (8883 with TLS, 1883 without, by default).
    pub port: u16,
    /// TLS (the default) or plain MQTT (`tls = false`).
    pub tls: bool,
    /// CA file that signs the broker's certificate (the system's roots when absent).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Username and the file holding the password.
    pub credentials: Option<(String, PathBuf)>,
    /// The topic filter (default [`DEFAULT_TOPIC`]).
    pub topic: String,
    /// The shared-subscription group (default [`DEFAULT_GROUP`]).
    pub group: String,
    /// `client-id`: stable per replica (the broker keeps its session and unacknowledged messages
    /// across restarts); default `votegate-ingest-{hostname}`.
    pub client_id: String,
}

impl MqttSettings {
    /// What the consumer subscribes to: `$share/{group}/{topic}`.
    pub fn shared_filter(&self) -> String {
        format!("$share/{}/{}", self.group, self.topic)
    }

    /// The TLS settings of this `[mqtt]` (none with `tls = false`), as the uplink takes them.
    pub fn tls_settings(&self) -> Option<crate::uplink::TlsSettings> {
        self.tls.then(|| crate::uplink::TlsSettings {
            ca: match &self.ca_file {
                Some(path) => crate::uplink::CaSource::File(path.clone()),
                None => crate::uplink::CaSource::System,
            },
            client_auth: self.client_cert.clone(),
            alpn: Vec::new(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawIngest {
    postgres_url: Spanned<String>,
    connections: Option<Spanned<i64>>,
    metrics_listen: Option<Spanned<String>>,
    ledger_interval: Option<Spanned<String>>,
    missing_grace: Option<Spanned<String>>,
    mqtt: Option<RawMqtt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMqtt {
    host: Spanned<String>,
    port: Option<Spanned<i64>>,
    tls: Option<Spanned<bool>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
}

impl IngestConfig {
    /// Reads and validates an ingest config file.
    pub fn load(path: &Path) -> Result<IngestConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        IngestConfig::from_toml(path, &text)
    }

    /// Validates config text; `path` names the file in errors and anchors relative paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<IngestConfig, ConfigError> {
        let doc = Document::new(path, text);
        let raw: RawIngest = toml::from_str(text).map_err(|err| doc.toml_error(&err))?;
        let url = raw.postgres_url.get_ref().trim();
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err(doc.invalid(
                "postgres-url",
                &raw.postgres_url,
                "expected a URL like \"postgresql://ingest@db.example.com:5432/votes\"",
            ));
        }
        let mqtt = raw.mqtt.as_ref().map(|m| mqtt(&doc, m)).transpose()?;
        let connections = match &raw.connections {
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| {
                    doc.invalid(
                        "connections",
                        n,
                        format!("must be 1 to {MAX_CONNECTIONS}, found {}", n.get_ref()),
                    )
                })?,
            None => DEFAULT_CONNECTIONS,
        };
        let metrics_listen = raw
            .metrics_listen
            .as_ref()
            .map(|listen| {
                listen.get_ref().parse::<SocketAddr>().map_err(|_| {
                    doc.invalid(
                        "metrics-listen",
                        listen,
                        format!(
                            "{:?} is not an address and port like \"127.0.0.1:9187\"",
                            listen.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let duration = |key: &str, value: &Option<Spanned<String>>, default: Duration| match value {
            Some(text) => crate::config::units::parse_duration(text.get_ref())
                .map_err(|problem| doc.invalid(key, text, problem))
                .and_then(|d| match d.is_zero() && key == "ledger-interval" {
                    true => Err(doc.invalid(key, text, "must be longer than 0 s")),
                    false => Ok(d),
                }),
            None => Ok(default),
        };
        Ok(IngestConfig {
            path: path.to_path_buf(),
            postgres_url: url.to_string(),
            mqtt,
            connections,
            metrics_listen,
            ledger_interval: duration(
                "ledger-interval",
                &raw.ledger_interval,
                Duration::from_secs(15),
            )?,
            missing_grace: duration(
                "missing-grace",
                &raw.missing_grace,
                Duration::from_secs(300),
            )?,
        })
    }
}

fn mqtt(doc: &Document<'_>, raw: &RawMqtt) -> Result<MqttSettings, ConfigError> {
    let host = raw.host.get_ref().trim();
    if host.is_empty() || host.contains("://") || host.contains('/') {
        return Err(doc.invalid(
            "mqtt.host",
            &raw.host,
            format!(
                "{:?} is not a host name or address (write the port in `port`, no scheme)",
                raw.host.get_ref()
            ),
        ));
    }
    let tls = raw.tls.as_ref().is_none_or(|t| *t.get_ref());
    if !tls {
        for (key, value) in [
            ("ca-file", &raw.ca_file),
            ("client-cert", &raw.client_cert),
            ("client-key", &raw.client_key),
        ] {
            if let Some(value) = value {
                return Err(doc.invalid(
                    &format!("mqtt.{key}"),
                    value,
                    "is only used with TLS (remove `tls = false`)",
                ));
            }
        }
    }
    let port = match &raw.port {
        Some(port) => u16::try_from(*port.get_ref())
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                doc.invalid(
                    "mqtt.port",
                    port,
                    format!("must be 1 to 65535, found {}", port.get_ref()),
                )
            })?,
        None if tls => 8883,
        None => 1883,
    };
    let path = |value: &Spanned<String>| doc.resolve_path(value.get_ref());
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => Some((path(cert), path(key))),
        (Some(cert), None) => {
            return Err(doc.invalid("mqtt.client-cert", cert, "needs `client-key` too"))
        }
        (None, Some(key)) => {
            return Err(doc.invalid("mqtt.client-key", key, "needs `client-cert` too"))
        }
        (None, None) => None,
    };
    let credentials = match (&raw.username, &raw.password_file) {
        (Some(user), Some(file)) => Some((user.get_ref().clone(), path(file))),
        (Some(user), None) => {
            return Err(doc.invalid("mqtt.username", user, "needs `password-file` too"))
        }
        (None, Some(file)) => {
            return Err(doc.invalid("mqtt.password-file", file, "needs `username` too"))
        }
        (None, None) => None,
    };
    let topic = match &raw.topic {
        Some(topic) => {
            let text = topic.get_ref();
            if text.is_empty() || text.starts_with('$') || text.starts_with('/') {
                return Err(doc.invalid(
                    "mqtt.topic",
                    topic,
                    format!("{text:?} must not be empty or start with '$' or '/'"),
                ));
            }
            text.clone()
        }
        None => DEFAULT_TOPIC.to_string(),
    };
    let group = match &raw.group {
        Some(group) => {
            let text = group.get_ref();
            if text.is_empty() || text.contains(['/', '+', '#']) {
                return Err(doc.invalid(
                    "mqtt.group",
                    group,
                    format!("{text:?} must not be empty or contain '/', '+' or '#'"),
                ));
            }
            text.clone()
        }
        None => DEFAULT_GROUP.to_string(),
    };
    let client_id = match &raw.client_id {
        Some(id) => {
            if id.get_ref().is_empty() || id.get_ref().len() > 128 {
                return Err(doc.invalid("mqtt.client-id", id, "must be 1 to 128 characters"));
            }
            id.get_ref().clone()
        }
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("votegate-ingest-{}", host.trim())
        }
    };
    Ok(MqttSettings {
        client_id,
        host: host.to_string(),
        port,
        tls,
        ca_file: raw.ca_file.as_ref().map(path),
        client_cert,
        credentials,
        topic,
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<IngestConfig, String> {
        IngestConfig::from_toml(Path::new("/etc/votegate/ingest.toml"), text)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_config_is_read_with_defaults_and_relative_paths() {
        let config = load(
            "postgres-url = \"postgresql://ingest@db:5432/votes\"\n\
             [mqtt]\nhost = \"broker.example.com\"\nca-file = \"ca.pem\"\n\
             client-cert = \"ingest.pem\"\nclient-key = \"/keys/ingest.key\"\n",
        )
        .expect("valid");
        assert_eq!(config.postgres_url, "postgresql://ingest@db:5432/votes");
        let mqtt = config.mqtt.expect("[mqtt]");
        assert_eq!((mqtt.port, mqtt.tls), (8883, true));
        assert_eq!(mqtt.ca_file, Some(PathBuf::from("/etc/votegate/ca.pem")));
        assert_eq!(
            mqtt.client_cert,
            Some((
                PathBuf::from("/etc/votegate/ingest.pem"),
                PathBuf::from("/keys/ingest.key")
            ))
        );
        assert_eq!(
            mqtt.shared_filter(),
            "$share/votegate-ingest/votegate/+/+/votes"
        );
        assert_eq!(config.connections, DEFAULT_CONNECTIONS);
        assert_eq!(config.metrics_listen, None);
        assert_eq!(
            (config.ledger_interval, config.missing_grace),
            (Duration::from_secs(15), Duration::from_secs(300))
        );
        let tuned = load(
            "postgres-url = \"postgresql://db/votes\"\nconnections = 8\n\
             metrics-listen = \"0.0.0.0:9187\"\nledger-interval = \"5s\"\nmissing-grace = \"1m\"\n",
        )
        .expect("valid");
        assert_eq!(tuned.connections, 8);
        assert_eq!(
            tuned.metrics_listen,
            Some("0.0.0.0:9187".parse().expect("addr"))
        );
        assert_eq!(
            (tuned.ledger_interval, tuned.missing_grace),
            (Duration::from_secs(5), Duration::from_secs(60))
        );
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let err =
            load("postgres-url = \"postgresql://db/votes\"\n[mqtt]\nhost = \"b\"\nprot = 1\n")
                .expect_err("unknown key");
        assert!(err.contains("line 4") && err.contains("mqtt.prot"), "{err}");
        let err = load("postgres-url = \"mysql://db\"\n").expect_err("not postgres");
        assert!(
            err.contains("line 1") && err.contains("postgres-url"),
            "{err}"
        );
        let err = load("postgres-url = \"postgresql://db\"\n[mqtt]\nhost = \"b\"\nport = 0\n")
            .expect_err("port");
        assert!(err.contains("line 4") && err.contains("mqtt.port"), "{err}");
        let err = load(
            "postgres-url = \"postgresql://db\"\n[mqtt]\nhost = \"b\"\ntls = false\nca-file = \"x\"\n",
        )
        .expect_err("ca without tls");
        assert!(
            err.contains("line 5") && err.contains("mqtt.ca-file"),
            "{err}"
        );
        let err =
            load("postgres-url = \"postgresql://db\"\n[mqtt]\nhost = \"b\"\ngroup = \"a/b\"\n")
                .expect_err("group");
        assert!(
            err.contains("line 4") && err.contains("mqtt.group"),
            "{err}"
        );
        for (line, key) in [
            ("connections = 0", "connections"),
            ("connections = 65", "connections"),
            ("metrics-listen = \"localhost\"", "metrics-listen"),
            ("ledger-interval = \"0s\"", "ledger-interval"),
            ("missing-grace = \"soon\"", "missing-grace"),
        ] {
            let err =
                load(&format!("postgres-url = \"postgresql://db\"\n{line}\n")).expect_err(line);
            assert!(err.contains("line 2") && err.contains(key), "{line}: {err}");
        }
        let err = load("[mqtt]\nhost = \"b\"\n").expect_err("no url");
        assert!(err.contains("postgres-url"), "{err}");
    }
}

//! The config file as written: serde structs that mirror the TOML one to one. Every struct
//! denies unknown keys; values that validation may reject are `Spanned` so that the error can
//! name their line. Nothing here decides what a value means: see `super::validate`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    pub gateway_id: Spanned<String>,
    pub site: Spanned<String>,
    pub data_dir: Option<Spanned<String>>,
    pub time_zone: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub unhealthy_after: Option<Spanned<String>>,
    #[serde(default)]
    pub display: RawDisplay,
    pub opening_hours: Option<RawOpeningHours>,
    #[serde(default)]
    pub journal: RawJournal,
    pub uplink: Option<RawUplink>,
    #[serde(default)]
    pub filter: RawFilter,
    #[serde(default)]
    pub terminal: Vec<Spanned<RawTerminal>>,
    #[serde(default)]
    pub serial_port: Vec<Spanned<RawSerialPort>>,
    pub gpio: Option<RawGpio>,
    #[serde(default)]
    pub alert: Vec<Spanned<RawAlert>>,
}

/// One `[[alert]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAlert {
    pub kind: Spanned<String>,
    pub threshold: Spanned<f64>,
    pub window: Option<Spanned<String>>,
    pub min_votes: Option<Spanned<i64>>,
    pub terminal: Option<Spanned<String>>,
    pub button: Option<Spanned<i64>>,
    pub hold_down: Option<Spanned<String>>,
}

/// The `[gpio]` table: where GPIO terminals get their pins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawGpio {
    pub backend: Spanned<String>,
    pub socket: Option<Spanned<String>>,
}

/// The `[uplink]` table: the MQTT broker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawUplink {
    pub host: Spanned<String>,
    pub port: Option<Spanned<i64>>,
    pub tls: Option<Spanned<bool>>,
    pub allow_plaintext_credentials: Option<Spanned<bool>>,
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    pub alpn: Option<Spanned<Vec<String>>>,
    pub username: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub topic_prefix: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub max_batch_votes: Option<Spanned<i64>>,
    pub max_payload_size: Option<Spanned<SizeValue>>,
    pub max_batch_age: Option<Spanned<String>>,
    pub max_in_flight: Option<Spanned<i64>>,
    pub keepalive: Option<Spanned<String>>,
    pub backoff_cap: Option<Spanned<String>>,
    pub telemetry_interval: Option<Spanned<String>>,
    pub max_publishes_per_second: Option<Spanned<f64>>,
    pub max_bytes_per_second: Option<Spanned<SizeValue>>,
    pub unhealthy_after: Option<Spanned<String>>,
}

/// The `[display]` table: the in-store screen and the HTTP API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawDisplay {
    pub title: Option<Spanned<String>>,
    pub day_starts_at: Option<Spanned<String>>,
    pub max_screens: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub allowed_origins: Option<Spanned<Vec<String>>>,
    pub language: Option<Spanned<String>>,
    pub labels: Option<BTreeMap<String, Spanned<String>>>,
}

/// The `[opening-hours]` table: every weekday, as `"08:00-20:00"`, a list of such, or `"closed"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawOpeningHours {
    pub monday: Spanned<Hours>,
    pub tuesday: Spanned<Hours>,
    pub wednesday: Spanned<Hours>,
    pub thursday: Spanned<Hours>,
    pub friday: Spanned<Hours>,
    pub saturday: Spanned<Hours>,
    pub sunday: Spanned<Hours>,
}

/// One day's opening hours as written.
#[derive(Debug)]
pub(super) enum Hours {
    One(String),
    Many(Vec<String>),
}

/// By hand rather than `#[serde(untagged)]`, whose error names the Rust type.
impl<'de> Deserialize<'de> for Hours {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Hours, D::Error> {
        struct HoursVisitor;
        impl<'de> Visitor<'de> for HoursVisitor {
            type Value = Hours;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("hours like \"08:00-20:00\", a list of such, or \"closed\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Hours, E> {
                Ok(Hours::One(text.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Hours, A::Error> {
                let mut ranges = Vec::new();
                while let Some(range) = seq.next_element()? {
                    ranges.push(range);
                }
                Ok(Hours::Many(ranges))
            }
        }
        deserializer.deserialize_any(HoursVisitor)
    }
}

/// One `[[serial-port]]` table: settings of a port that terminals name with `port`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawSerialPort {
    pub path: Spanned<String>,
    pub mode: Option<Spanned<String>>,
    pub baud: Option<Spanned<i64>>,
    pub poll_interval: Option<Spanned<String>>,
    pub reply_timeout: Option<Spanned<String>>,
    pub offline_after: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawJournal {
    pub max_disk_size: Option<Spanned<SizeValue>>,
    pub when_full: Option<Spanned<String>>,
    pub cache_size: Option<Spanned<SizeValue>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawFilter {
    pub min_interval: Option<Spanned<String>>,
}

/// One `[[terminal]]` table. All kinds share one struct (rather than a serde-tagged enum, which
/// would lose the spans); validation rejects keys that do not belong to the terminal's kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTerminal {
    pub id: Spanned<String>,
    pub kind: Spanned<String>,
    pub min_interval: Option<Spanned<String>>,
    pub presses_per_minute: Option<Spanned<f64>>,
    pub port: Option<Spanned<String>>,
    pub address: Option<Spanned<i64>>,
    pub pins: Option<Spanned<Vec<i64>>>,
    pub pull: Option<Spanned<String>>,
    pub active: Option<Spanned<String>>,
    pub debounce: Option<Spanned<String>>,
    pub stuck_after: Option<Spanned<String>>,
    pub led_pin: Option<Spanned<i64>>,
    pub led_blink: Option<Spanned<String>>,
}

/// A size written either as a number of bytes or as text with a unit.
#[derive(Debug)]
pub(super) enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// By hand rather than `#[serde(untagged)]`, whose error names the Rust type.
impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SizeValue, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"16 MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(bytes))
            }
            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<SizeValue, E> {
                u64::try_from(bytes)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(bytes), &self))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(text.to_string()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

//! Validation of `[uplink]`. Key files (CA, client certificate, password) are not read here: the
//! uplink reads them when it connects and reports a missing one plainly, and `votegate check`
//! checks them (`uplink::files`), so a config can be prepared before its files are in place.

use std::time::Duration;

use toml::Spanned;

use super::raw::RawUplink;
use super::{units, ConfigError, Document};
use crate::uplink::payload::PayloadFormat;
use crate::uplink::{CaSource, TlsSettings, UplinkSettings};

/// AWS IoT Core's payload limit, and the default.
const DEFAULT_MAX_PAYLOAD: usize = 128 * 1024;
/// The most a batch may be (mosquitto's default message size limit is 256 MiB; brokers in the
/// cloud allow far less).
const MAX_PAYLOAD_LIMIT: u64 = 16 * 1024 * 1024;

/// Whether `host` is this machine (a loopback address or `localhost`), where clear text never
/// leaves it.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Document<'_> {
    pub(super) fn uplink(
        &self,
        raw: &RawUplink,
        gateway_id: &str,
        site: &str,
    ) -> Result<UplinkSettings, ConfigError> {
        let host = raw.host.get_ref().trim();
        if host.is_empty() || host.contains("://") || host.contains('/') {
            return Err(self.invalid(
                "uplink.host",
                &raw.host,
                format!(
                    "{:?} is not a host name or address (write the port in `port`, no scheme)",
                    raw.host.get_ref()
                ),
            ));
        }
        let tls_on = raw.tls.as_ref().map(|t| *t.get_ref()).unwrap_or(true);
        let tls = if tls_on {
            Some(self.tls(raw)?)
        } else {
            for (key, value) in [
                ("ca-file", &raw.ca_file),
                ("client-cert", &raw.client_cert),
                ("client-key", &raw.client_key),
            ] {
                if let Some(value) = value {
                    return Err(self.invalid(
                        &format!("uplink.{key}"),
                        value,
                        "is only used with TLS (remove `tls = false`)",
                    ));
                }
            }
            self.plaintext_credentials(raw, host)?;
            None
        };
        if let (Some(allow), true) = (&raw.allow_plaintext_credentials, tls_on) {
            return Err(self.invalid(
                "uplink.allow-plaintext-credentials",
                allow,
                "is only used with `tls = false`",
            ));
        }
        let port = match &raw.port {
            Some(port) => u16::try_from(*port.get_ref())
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    self.invalid(
                        "uplink.port",
                        port,
                        format!("must be 1 to 65535, found {}", port.get_ref()),
                    )
                })?,
            None if tls_on => 8883,
            None => 1883,
        };
        match (&raw.username, &raw.password_file) {
            (Some(username), None) => {
                return Err(self.invalid("uplink.username", username, "needs `password-file` too"))
            }
            (None, Some(file)) => {
                return Err(self.invalid("uplink.password-file", file, "needs `username` too"))
            }
            _ => {}
        }
        let client_id = match &raw.client_id {
            Some(id) => {
                if id.get_ref().is_empty() || id.get_ref().len() > 128 {
                    return Err(self.invalid(
                        "uplink.client-id",
                        id,
                        "must be 1 to 128 characters",
                    ));
                }
                id.get_ref().clone()
            }
            None => gateway_id.to_string(),
        };
        let topic_prefix = match &raw.topic_prefix {
            Some(prefix) => {
                let text = prefix.get_ref();
                if text.is_empty()
                    || text.starts_with('/')
                    || text.ends_with('/')
                    || text.contains(['#', '+'])
                {
                    return Err(self.invalid(
                        "uplink.topic-prefix",
                        prefix,
                        format!("{text:?} must not be empty, start or end with '/', or contain '#' or '+'"),
                    ));
                }
                text.replace("{site}", site)
                    .replace("{gateway_id}", gateway_id)
            }
            None => format!("votegate/{site}/{gateway_id}"),
        };
        let format = match &raw.format {
            None => PayloadFormat::Postcard,
            Some(format) => match format.get_ref().as_str() {
                "postcard" => PayloadFormat::Postcard,
                "json" => PayloadFormat::Json,
                other => {
                    return Err(self.invalid(
                        "uplink.format",
                        format,
                        format!("expected \"postcard\" or \"json\", found {other:?}"),
                    ))
                }
            },
        };
        let max_payload_bytes = match &raw.max_payload_size {
            Some(value) => {
                let bytes = self.size("uplink.max-payload-size", value)?;
                if !(1024..=MAX_PAYLOAD_LIMIT).contains(&bytes) {
                    return Err(self.invalid(
                        "uplink.max-payload-size",
                        value,
                        "must be between 1 KiB and 16 MiB",
                    ));
                }
                bytes as usize
            }
            None => DEFAULT_MAX_PAYLOAD,
        };
        let max_bytes_per_second = match &raw.max_bytes_per_second {
            Some(value) => {
                let bytes = self.size("uplink.max-bytes-per-second", value)?;
                if bytes < 1024 {
                    return Err(self.invalid(
                        "uplink.max-bytes-per-second",
                        value,
                        "must be at least 1 KiB",
                    ));
                }
                Some(bytes as f64)
            }
            None => None,
        };
        let max_publishes_per_second = match &raw.max_publishes_per_second {
            Some(value) if !(*value.get_ref() > 0.0 && *value.get_ref() <= 10_000.0) => {
                return Err(self.invalid(
                    "uplink.max-publishes-per-second",
                    value,
                    "must be above 0 and at most 10000",
                ))
            }
            Some(value) => Some(*value.get_ref()),
            None => None,
        };
        let ms = Duration::from_millis;
        Ok(UplinkSettings {
            host: host.to_string(),
            port,
            tls,
            username: raw.username.as_ref().map(|u| u.get_ref().clone()),
            password_file: raw
                .password_file
                .as_ref()
                .map(|p| self.resolve_path(p.get_ref())),
            client_id,
            topic_prefix,
            format,
            max_batch_votes: self.count(
                "uplink.max-batch-votes",
                &raw.max_batch_votes,
                1000,
                1..=100_000,
            )?,
            max_payload_bytes,
            max_batch_age: self.bounded_duration(
                "uplink.max-batch-age",
                &raw.max_batch_age,
                ms(1000),
                (ms(0), ms(60_000)),
            )?,
            max_in_flight: self.count("uplink.max-in-flight", &raw.max_in_flight, 8, 1..=64)?,
            keepalive: self.bounded_duration(
                "uplink.keepalive",
                &raw.keepalive,
                ms(30_000),
                (ms(5_000), ms(3_600_000)),
            )?,
            backoff_cap: self.bounded_duration(
                "uplink.backoff-cap",
                &raw.backoff_cap,
                ms(60_000),
                (ms(100), ms(3_600_000)),
            )?,
            telemetry_interval: self.bounded_duration(
                "uplink.telemetry-interval",
                &raw.telemetry_interval,
                ms(60_000),
                (ms(1_000), ms(86_400_000)),
            )?,
            max_publishes_per_second,
            max_bytes_per_second,
        })
    }

    /// Refuses to send a password in clear text over a network, unless the config says the
    /// network is trusted (`allow-plaintext-credentials = true`).
    fn plaintext_credentials(&self, raw: &RawUplink, host: &str) -> Result<(), ConfigError> {
        let allowed = raw
            .allow_plaintext_credentials
            .as_ref()
            .is_some_and(|allow| *allow.get_ref());
        let (Some(tls), Some(_)) = (&raw.tls, &raw.password_file) else {
            return Ok(());
        };
        if allowed || is_loopback(host) {
            return Ok(());
        }
        Err(self.invalid(
            "uplink.tls",
            tls,
            format!(
                "false would send the password of `uplink.username` in clear text to {host}; \
                 remove `tls = false`, or set `allow-plaintext-credentials = true` if every network \
                 between here and the broker is trusted"
            ),
        ))
    }

    fn tls(&self, raw: &RawUplink) -> Result<TlsSettings, ConfigError> {
        let ca = match &raw.ca_file {
            Some(path) => CaSource::File(self.resolve_path(path.get_ref())),
            None => CaSource::System,
        };
        let client_auth = match (&raw.client_cert, &raw.client_key) {
            (Some(cert), Some(key)) => Some((
                self.resolve_path(cert.get_ref()),
                self.resolve_path(key.get_ref()),
            )),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(self.invalid("uplink.client-cert", cert, "needs `client-key` too"))
            }
            (None, Some(key)) => {
                return Err(self.invalid("uplink.client-key", key, "needs `client-cert` too"))
            }
        };
        let alpn = match &raw.alpn {
            Some(list) => {
                if list.get_ref().iter().any(|p| p.is_empty() || p.len() > 255) {
                    return Err(self.invalid(
                        "uplink.alpn",
                        list,
                        "each protocol must be 1 to 255 bytes",
                    ));
                }
                list.get_ref().clone()
            }
            None => Vec::new(),
        };
        Ok(TlsSettings {
            ca,
            client_auth,
            alpn,
        })
    }

    fn count(
        &self,
        key: &str,
        value: &Option<Spanned<i64>>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        usize::try_from(*value.get_ref())
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                self.invalid(
                    key,
                    value,
                    format!(
                        "must be {} to {}, found {}",
                        range.start(),
                        range.end(),
                        value.get_ref()
                    ),
                )
            })
    }

    fn bounded_duration(
        &self,
        key: &str,
        value: &Option<Spanned<String>>,
        default: Duration,
        range: (Duration, Duration),
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let parsed = units::parse_duration(value.get_ref())
            .map_err(|problem| self.invalid(key, value, problem))?;
        if parsed < range.0 || parsed > range.1 {
            return Err(self.invalid(
                key,
                value,
                format!("must be between {:?} and {:?}", range.0, range.1),
            ));
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_this_machine_is_loopback() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "mqtt.example.com",
            "10.0.0.1",
            "::2",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}

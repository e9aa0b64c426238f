//! The gateway's configuration: a TOML file, read strictly.
//!
//! Loading happens in two steps, as in ntpd-rs: [`raw`] deserialises the file into structs that
//! mirror it (unknown keys are errors), then [`Config::from_toml`] validates every value into the
//! typed settings the daemon uses. Every error names the file, the key (as a dotted path such as
//! `journal.when-full`) and, where it can, the line. Relative paths are relative to the config
//! file's folder.

mod alerts;
mod display;
mod gpio;
mod raw;
mod serial;
pub mod units;
mod uplink;

use std::collections::HashSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::journal::{Limits, WhenFull, MIN_DISK_BYTES};
use crate::model::{validate_id, TerminalId};
pub use gpio::GpioBackend;
use raw::{RawConfig, RawTerminal, SizeValue};

/// Where `votegate run` and `votegate check` look without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/votegate/votegate.toml";
/// The journal's folder when the config does not say.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/votegate";
/// The anti-abuse interval when the config does not say: see README § Press filter.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// The longest `min-interval` accepted; longer would hide real customers.
const MAX_MIN_INTERVAL: Duration = Duration::from_secs(3600);
/// The fastest simulated terminal: 100 presses a second.
const MAX_PRESSES_PER_MINUTE: f64 = 6000.0;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {cause}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why (part of the message, so not also a `source`).
        cause: std::io::Error,
    },
    /// The file was read but a value is missing, malformed or invalid.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the offending key or value, when known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    /// This gateway's id: part of every vote's global id `(gateway_id, seq)`.
    pub gateway_id: String,
    /// The site (store) this gateway serves.
    pub site: String,
    /// The journal's folder.
    pub data_dir: PathBuf,
    /// The site's time zone (for "today" in the tallies).
    pub time_zone: TimeZoneSetting,
    /// Log level (the `VOTEGATE_LOG` environment variable overrides it).
    pub log_level: log::LevelFilter,
    /// Where the HTTP API and the display page listen.
    pub listen: std::net::SocketAddr,
    /// The in-store screen.
    pub display: DisplayConfig,
    /// Opening hours, if configured: presses outside them are counted apart.
    pub opening_hours: Option<crate::tallies::OpeningHours>,
    /// Journal size limits and cache.
    pub journal: Limits,
    /// The terminals, in file order.
    pub terminals: Vec<TerminalConfig>,
    /// The serial ports the serial terminals use, each with its terminals.
    pub serial_ports: Vec<SerialPortConfig>,
    /// The MQTT uplink, if configured (`[uplink]`); without it votes stay in the journal.
    pub uplink: Option<crate::uplink::UplinkSettings>,
    /// Where GPIO terminals get their pins (`[gpio]`; the Pi's header by default).
    pub gpio: GpioBackend,
    /// When faults make `/healthz` unhealthy (`unhealthy-after`, `uplink.unhealthy-after`).
    pub health: crate::health::HealthSettings,
    /// The alert rules (`[[alert]]`; the default rule when there is none).
    pub alerts: Vec<crate::alerts::AlertRule>,
}

/// How terminals share a serial port (hardware/PROTOCOL.md § 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMode {
    /// One terminal on the port; it talks whenever it has something to say.
    Point,
    /// Up to 32 terminals on an RS-485 bus; the gateway polls them by address.
    Bus,
}

/// One serial port and the terminals on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialPortConfig {
    /// The device, ideally a stable `/dev/serial/by-id/...` path.
    pub path: PathBuf,
    /// Line speed (8N1).
    pub baud: u32,
    /// Point-to-point or bus.
    pub mode: PortMode,
    /// Bus: a round of polls starts at most this often.
    pub poll_interval: Duration,
    /// Bus: how long to wait for a polled terminal's answer.
    pub reply_timeout: Duration,
    /// Point: a terminal silent this long is offline.
    pub offline_after: Duration,
    /// `(address, terminal)`: address 0 in point mode.
    pub terminals: Vec<(u8, TerminalId)>,
}

/// Where the HTTP API listens when the config does not say: this machine only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// `display.max-connections` when the config does not say: well under the unit's
/// `LimitNOFILE=4096`, which also covers the journal, serial ports and the broker.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Settings of the display page and the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayConfig {
    /// The question above the smileys.
    pub title: String,
    /// When the tally day starts (local time).
    pub day_start: jiff::civil::Time,
    /// Most screens (server-sent event streams) served at once.
    pub max_screens: usize,
    /// Most HTTP connections open at once (more get 503); above `max_screens`.
    pub max_connections: usize,
    /// Origins allowed by CORS (`*` = any), for screens served from elsewhere.
    pub allowed_origins: Vec<String>,
    /// The page's language (labels, number, date and time formats).
    pub language: crate::labels::Language,
    /// Every label of the page: the language's built-ins with `[display.labels]` applied.
    pub labels: std::collections::BTreeMap<&'static str, String>,
}

impl Default for DisplayConfig {
    fn default() -> DisplayConfig {
        DisplayConfig {
            title: crate::labels::Language::En.default_title().to_string(),
            day_start: jiff::civil::Time::midnight(),
            max_screens: 64,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_origins: vec!["*".to_string()],
            language: crate::labels::Language::En,
            labels: crate::labels::resolve(crate::labels::Language::En, &Default::default()),
        }
    }
}

/// A validated IANA time zone.
#[derive(Debug, Clone)]
pub struct TimeZoneSetting {
    /// The name as configured (or the system's), e.g. `Europe/Berlin`.
    pub name: String,
    /// The zone's rules.
    pub zone: jiff::tz::TimeZone,
}

/// One terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct TerminalConfig {
    /// Its id, as it appears in votes, tallies and URLs.
    pub id: TerminalId,
    /// Presses closer together than this (after a counted press) are journaled as filtered.
    pub min_interval: Duration,
    /// Where its presses come from.
    pub source: SourceConfig,
}

/// The kind of a terminal and the settings that kind needs.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// Random presses for demos and tests (`kind = "simulated"`).
    Simulated {
        /// Mean press rate; presses arrive as a Poisson process.
        presses_per_minute: f64,
    },
    /// A terminal speaking hardware/PROTOCOL.md on a serial port (`kind = "serial"`).
    Serial {
        /// The port's path.
        port: PathBuf,
        /// Its bus address, or 0 on a point-to-point port.
        address: u8,
    },
    /// Buttons wired to the Pi's GPIO header (`kind = "gpio"`).
    Gpio(crate::sources::gpio::GpioSettings),
}

impl SourceConfig {
    /// The `kind` value that selects this source.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Simulated { .. } => "simulated",
            SourceConfig::Serial { .. } => "serial",
            SourceConfig::Gpio(_) => "gpio",
        }
    }
}

impl Config {
    /// How the tallies count the site's day.
    pub fn tally_rules(&self) -> crate::tallies::TallyRules {
        crate::tallies::TallyRules {
            zone: self.time_zone.zone.clone(),
            zone_name: self.time_zone.name.clone(),
            day_start: self.display.day_start,
            opening_hours: self.opening_hours.clone(),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Config::from_toml(path, &text)
    }

    /// Validates config text; `path` names the file in errors and anchors relative paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let doc = Document { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|err| doc.toml_error(&err))?;
        doc.validate(raw)
    }
}

/// The file being validated: turns spans into line numbers for error messages. The ingest's
/// config (`crate::ingest`) validates with it too.
pub(crate) struct Document<'a> {
    path: &'a Path,
    text: &'a str,
}

impl<'a> Document<'a> {
    /// The file at `path` with contents `text`.
    #[cfg_attr(not(feature = "ingest"), allow(dead_code))]
    pub(crate) fn new(path: &'a Path, text: &'a str) -> Document<'a> {
        Document { path, text }
    }
}

impl Document<'_> {
    pub(crate) fn error(&self, line: Option<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            message,
        }
    }

    /// An error about the value of `key`, located at the value's span.
    pub(crate) fn invalid<T>(
        &self,
        key: &str,
        value: &Spanned<T>,
        problem: impl Display,
    ) -> ConfigError {
        self.error(
            Some(line_of(self.text, value.span().start)),
            format!("key `{key}`: {problem}"),
        )
    }

    /// Rewrites a TOML/serde error so that it names the key path and line.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let plain = plain_type_error(err.message());
        let message = plain.as_deref().unwrap_or(err.message());
        let Some(span) = err.span() else {
            return self.error(None, message.to_string());
        };
        let table = table_at(self.text, span.start);
        let qualify = |key: &str| match &table {
            Some(table) => format!("{table}.{key}"),
            None => key.to_string(),
        };
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some((key, expected)) = rest.split_once('`') {
                let expected = expected.trim_start_matches(',').trim();
                return self.error(
                    Some(line_of(self.text, span.start)),
                    format!("unknown key `{}`, {expected}", qualify(key)),
                );
            }
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let key = rest.trim_end_matches('`');
            let line = table.as_ref().map(|_| line_of(self.text, span.start));
            let place = match &table {
                Some(table) => format!("in [{table}]"),
                None => "at the top level".to_string(),
            };
            return self.error(line, format!("missing key `{}` {place}", qualify(key)));
        }
        let line = line_of(self.text, span.start);
        match key_on_line(self.text, span.start) {
            Some(key) => self.error(Some(line), format!("key `{}`: {message}", qualify(&key))),
            None => self.error(Some(line), message.to_string()),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let gateway_id = self.id("gateway-id", &raw.gateway_id)?;
        let site = self.id("site", &raw.site)?;
        let data_dir = match &raw.data_dir {
            Some(dir) if dir.get_ref().trim().is_empty() => {
                return Err(self.invalid("data-dir", dir, "must not be empty"))
            }
            Some(dir) => self.resolve_path(dir.get_ref()),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let time_zone = self.time_zone(raw.time_zone.as_ref())?;
        let log_level = match &raw.log_level {
            Some(level) => level.get_ref().parse().map_err(|_| {
                self.invalid(
                    "log-level",
                    level,
                    format!(
                        "expected one of \"error\", \"warn\", \"info\", \"debug\", \"trace\", found {:?}",
                        level.get_ref()
                    ),
                )
            })?,
            None => log::LevelFilter::Info,
        };
        let listen = self.listen(raw.listen.as_ref())?;
        let display = self.display(&raw.display)?;
        let opening_hours = raw
            .opening_hours
            .as_ref()
            .map(|hours| self.opening_hours(hours))
            .transpose()?;
        let journal = self.journal(&raw.journal)?;
        let default_interval = match &raw.filter.min_interval {
            Some(value) => self.min_interval("filter.min-interval", value)?,
            None => DEFAULT_MIN_INTERVAL,
        };
        let terminals = self.terminals(&raw.terminal, default_interval)?;
        let serial_ports = self.serial_ports(&raw.serial_port, &raw.terminal, &terminals)?;
        self.check_gpio_pins(&raw.terminal, &terminals)?;
        let gpio = self.gpio_backend(raw.gpio.as_ref())?;
        let uplink = raw
            .uplink
            .as_ref()
            .map(|uplink| self.uplink(uplink, &gateway_id, &site))
            .transpose()?;
        let alerts = self.alerts(&raw.alert, &terminals)?;
        let health = crate::health::HealthSettings {
            terminal_after: self
                .unhealthy_after("unhealthy-after", raw.unhealthy_after.as_ref())?,
            uplink_after: self.unhealthy_after(
                "uplink.unhealthy-after",
                raw.uplink.as_ref().and_then(|u| u.unhealthy_after.as_ref()),
            )?,
        };
        Ok(Config {
            path: self.path.to_path_buf(),
            gateway_id,
            site,
            data_dir,
            time_zone,
            log_level,
            listen,
            display,
            opening_hours,
            journal,
            terminals,
            serial_ports,
            uplink,
            gpio,
            health,
            alerts,
        })
    }

    fn unhealthy_after(
        &self,
        key: &str,
        value: Option<&Spanned<String>>,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(crate::health::DEFAULT_UNHEALTHY_AFTER);
        };
        let parsed = units::parse_duration(value.get_ref())
            .map_err(|problem| self.invalid(key, value, problem))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&parsed) {
            return Err(self.invalid(key, value, "must be between 1s and 24h"));
        }
        Ok(parsed)
    }

    fn id(&self, key: &str, value: &Spanned<String>) -> Result<String, ConfigError> {
        validate_id(value.get_ref()).map_err(|problem| {
            self.invalid(key, value, format!("{:?} {problem}", value.get_ref()))
        })?;
        Ok(value.get_ref().clone())
    }

    pub(crate) fn resolve_path(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() {
            return path.to_path_buf();
        }
        match self.path.parent() {
            Some(folder) => folder.join(path),
            None => path.to_path_buf(),
        }
    }

    fn time_zone(&self, value: Option<&Spanned<String>>) -> Result<TimeZoneSetting, ConfigError> {
        let Some(value) = value else {
            let zone = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
            let name = zone.iana_name().unwrap_or("UTC").to_string();
            return Ok(TimeZoneSetting { name, zone });
        };
        let zone = jiff::tz::TimeZone::get(value.get_ref()).map_err(|_| {
            self.invalid(
                "time-zone",
                value,
                format!(
                    "{:?} is not a known IANA time zone (like \"Europe/Berlin\"; see `timedatectl list-timezones`)",
                    value.get_ref()
                ),
            )
        })?;
        Ok(TimeZoneSetting {
            name: value.get_ref().clone(),
            zone,
        })
    }

    fn journal(&self, raw: &raw::RawJournal) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let max_disk_bytes = match &raw.max_disk_size {
            Some(value) => self.size("journal.max-disk-size", value)?,
            None => defaults.max_disk_bytes,
        };
        if let Some(value) = &raw.max_disk_size {
            if max_disk_bytes < MIN_DISK_BYTES {
                return Err(self.invalid(
                    "journal.max-disk-size",
                    value,
                    format!("must be at least {}", units::format_size(MIN_DISK_BYTES)),
                ));
            }
        }
        let when_full = match &raw.when_full {
            Some(value) => match value.get_ref().as_str() {
                "drop-oldest" => WhenFull::DropOldest,
                "reject-new" => WhenFull::RejectNew,
                other => {
                    return Err(self.invalid(
                        "journal.when-full",
                        value,
                        format!("expected \"drop-oldest\" or \"reject-new\", found {other:?}"),
                    ))
                }
            },
            None => defaults.when_full,
        };
        let cache_bytes = match &raw.cache_size {
            Some(value) => {
                let bytes = self.size("journal.cache-size", value)?;
                if bytes < 1024 * 1024 {
                    return Err(self.invalid(
                        "journal.cache-size",
                        value,
                        "must be at least 1 MiB",
                    ));
                }
                bytes
            }
            None => defaults.cache_bytes,
        };
        Ok(Limits {
            max_disk_bytes,
            when_full,
            cache_bytes,
            tuning: Default::default(),
        })
    }

    fn size(&self, key: &str, value: &Spanned<SizeValue>) -> Result<u64, ConfigError> {
        match value.get_ref() {
            SizeValue::Bytes(bytes) => Ok(*bytes),
            SizeValue::Text(text) => {
                units::parse_size(text).map_err(|problem| self.invalid(key, value, problem))
            }
        }
    }

    fn min_interval(&self, key: &str, value: &Spanned<String>) -> Result<Duration, ConfigError> {
        let interval = units::parse_duration(value.get_ref())
            .map_err(|problem| self.invalid(key, value, problem))?;
        if interval > MAX_MIN_INTERVAL {
            return Err(self.invalid(key, value, "must be at most 1h"));
        }
        Ok(interval)
    }

    fn terminals(
        &self,
        raw: &[Spanned<RawTerminal>],
        default_interval: Duration,
    ) -> Result<Vec<TerminalConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.error(
                None,
                "no terminals: add at least one [[terminal]] table (see examples/)".to_string(),
            ));
        }
        let mut seen = HashSet::new();
        let mut terminals = Vec::with_capacity(raw.len());
        for table in raw {
            let terminal = self.terminal(table.get_ref(), default_interval)?;
            if !seen.insert(terminal.id.clone()) {
                return Err(self.invalid(
                    "terminal.id",
                    &table.get_ref().id,
                    format!(
                        "{:?} is used by another terminal; ids must be unique",
                        terminal.id.as_str()
                    ),
                ));
            }
            terminals.push(terminal);
        }
        Ok(terminals)
    }

    fn terminal(
        &self,
        raw: &RawTerminal,
        default_interval: Duration,
    ) -> Result<TerminalConfig, ConfigError> {
        let id = TerminalId::new(raw.id.get_ref()).map_err(|problem| {
            self.invalid(
                "terminal.id",
                &raw.id,
                format!("{:?} {problem}", raw.id.get_ref()),
            )
        })?;
        let min_interval = match &raw.min_interval {
            Some(value) => self.min_interval("terminal.min-interval", value)?,
            None => default_interval,
        };
        let source = match raw.kind.get_ref().as_str() {
            "simulated" => self.simulated(raw)?,
            "serial" => self.serial_terminal(raw)?,
            "gpio" => self.gpio_terminal(raw)?,
            other => {
                return Err(self.invalid(
                    "terminal.kind",
                    &raw.kind,
                    format!("expected \"simulated\", \"serial\" or \"gpio\", found {other:?}"),
                ))
            }
        };
        Ok(TerminalConfig {
            id,
            min_interval,
            source,
        })
    }

    /// Rejects a key that the terminal's kind does not use.
    fn unused<T>(
        &self,
        key: &str,
        value: &Option<Spanned<T>>,
        kind: &str,
    ) -> Result<(), ConfigError> {
        match value {
            Some(value) => Err(self.invalid(
                &format!("terminal.{key}"),
                value,
                format!("is not used by kind = {kind:?}"),
            )),
            None => Ok(()),
        }
    }

    /// Rejects the GPIO keys on a terminal of another kind.
    fn unused_gpio_keys(&self, raw: &RawTerminal, kind: &str) -> Result<(), ConfigError> {
        self.unused("pins", &raw.pins, kind)?;
        self.unused("pull", &raw.pull, kind)?;
        self.unused("active", &raw.active, kind)?;
        self.unused("debounce", &raw.debounce, kind)?;
        self.unused("stuck-after", &raw.stuck_after, kind)?;
        self.unused("led-pin", &raw.led_pin, kind)?;
        self.unused("led-blink", &raw.led_blink, kind)
    }

    fn simulated(&self, raw: &RawTerminal) -> Result<SourceConfig, ConfigError> {
        self.unused("port", &raw.port, "simulated")?;
        self.unused("address", &raw.address, "simulated")?;
        self.unused_gpio_keys(raw, "simulated")?;
        let Some(rate) = &raw.presses_per_minute else {
            return Err(self.invalid(
                "terminal.presses-per-minute",
                &raw.kind,
                "is required for kind = \"simulated\"",
            ));
        };
        let presses_per_minute = *rate.get_ref();
        if !(presses_per_minute > 0.0 && presses_per_minute <= MAX_PRESSES_PER_MINUTE) {
            return Err(self.invalid(
                "terminal.presses-per-minute",
                rate,
                format!("must be above 0 and at most {MAX_PRESSES_PER_MINUTE}, found {presses_per_minute}"),
            ));
        }
        Ok(SourceConfig::Simulated { presses_per_minute })
    }
}

/// serde's "invalid type: string \"x\", expected f64" in words an installer knows: "expected a
/// number, found the text \"x\"". `None` when the message is not about a value's type.
fn plain_type_error(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (found, expected) = rest.split_once(", expected ")?;
    let expected = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" => "text in quotes",
        "a sequence" => "a list in square brackets",
        "a map" => "a table",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    let found = match found.split_once(' ') {
        Some(("string", text)) => format!("the text {text}"),
        Some(("integer" | "boolean", value)) => value.trim_matches('`').to_string(),
        Some(("floating", value)) => value
            .trim_start_matches("point ")
            .trim_matches('`')
            .to_string(),
        _ => match found {
            "sequence" => "a list".to_string(),
            "map" => "a table".to_string(),
            other => other.to_string(),
        },
    };
    Some(format!("expected {expected}, found {found}"))
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line that holds a byte offset.
fn line_text(text: &str, offset: usize) -> &str {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    &text[start..end]
}

/// The name of the `[table]` or `[[table]]` whose body holds `offset` (its header included).
fn table_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    text[..line_end]
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(|header| {
            header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
}

/// The key assigned on the line that holds `offset`, if that line is `key = value`.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let line = line_text(text, offset).trim();
    if line.starts_with('[') || line.starts_with('#') {
        return None;
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"').trim_matches('\'');
    (!key.is_empty()).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
gateway-id = "gw-1"
site = "store-042"
time-zone = "Europe/Berlin"

[[terminal]]
id = "entrance"
kind = "simulated"
presses-per-minute = 6
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/etc/votegate/votegate.toml"), text)
    }

    fn error(text: &str) -> String {
        match load(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_minimal_config_gets_documented_defaults() {
        let config = load(MINIMAL).expect("valid");
        assert_eq!(config.gateway_id, "gw-1");
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.time_zone.name, "Europe/Berlin");
        assert_eq!(config.journal, Limits::default());
        assert_eq!(config.log_level, log::LevelFilter::Info);
        assert_eq!(config.terminals.len(), 1);
        assert_eq!(config.terminals[0].min_interval, DEFAULT_MIN_INTERVAL);
        assert_eq!(
            config.terminals[0].source,
            SourceConfig::Simulated {
                presses_per_minute: 6.0
            }
        );
    }

    #[test]
    fn relative_data_dir_is_relative_to_the_config_file() {
        let text = MINIMAL.replace("site =", "data-dir = \"state/journal\"\nsite =");
        let config = load(&text).expect("valid");
        assert_eq!(
            config.data_dir,
            PathBuf::from("/etc/votegate/state/journal")
        );
    }

    #[test]
    fn per_terminal_min_interval_overrides_the_filter_default() {
        let text = format!("{MINIMAL}min-interval = \"500ms\"\n").replace(
            "[[terminal]]",
            "[filter]\nmin-interval = \"3s\"\n\n[[terminal]]",
        );
        let config = load(&text).expect("valid");
        assert_eq!(config.terminals[0].min_interval, Duration::from_millis(500));
    }

    #[test]
    fn the_language_sets_title_and_labels_and_overrides_apply() {
        let config = load(MINIMAL).expect("valid");
        assert_eq!(config.display.language, crate::labels::Language::En);
        assert_eq!(config.display.title, "How was your visit today?");
        assert_eq!(config.display.labels["happy"], "Happy");
        let text = MINIMAL.replace(
            "[[terminal]]",
            "[display]\nlanguage = \"de\"\n\n[display.labels]\nvotes = \"Stimmen gesamt\"\nmore = \"und {n} weitere\"\n\n[[terminal]]",
        );
        let config = load(&text).expect("valid");
        assert_eq!(config.display.title, "Wie war Ihr Besuch heute?");
        assert_eq!(config.display.labels["votes"], "Stimmen gesamt");
        assert_eq!(config.display.labels["more"], "und {n} weitere");
        assert_eq!(config.display.labels["happy"], "Zufrieden");
    }

    #[test]
    fn unknown_languages_labels_and_placeholders_name_key_and_line() {
        let text = MINIMAL.replace(
            "[[terminal]]",
            "[display]\nlanguage = \"pt\"\n\n[[terminal]]",
        );
        assert_eq!(
            error(&text),
            "/etc/votegate/votegate.toml, line 7: key `display.language`: \"pt\" is not a built-in language; choose one of en, de, fr, es, it, nl, sv, fi"
        );
        let text = MINIMAL.replace(
            "[[terminal]]",
            "[display.labels]\nhappy = \"Glad\"\nvots = \"Stimmen\"\n\n[[terminal]]",
        );
        let message = error(&text);
        assert!(
            message.starts_with("/etc/votegate/votegate.toml, line 8: key `display.labels.vots`: \"vots\" is not a label; the labels are: very-unhappy, unhappy, happy,"),
            "{message}"
        );
        let text = MINIMAL.replace(
            "[[terminal]]",
            "[display.labels]\nmore = \"+{count} more\"\n\n[[terminal]]",
        );
        assert_eq!(
            error(&text),
            "/etc/votegate/votegate.toml, line 7: key `display.labels.more`: \"{count}\" is not a value of label \"more\"; it can use: {n}"
        );
    }

    #[test]
    fn unknown_keys_name_their_table_and_line() {
        let text = MINIMAL.replace(
            "[[terminal]]",
            "[journal]\nmax-size = \"1 GiB\"\n\n[[terminal]]",
        );
        assert_eq!(
            error(&text),
            "/etc/votegate/votegate.toml, line 7: unknown key `journal.max-size`, expected one of `max-disk-size`, `when-full`, `cache-size`"
        );
    }

    #[test]
    fn invalid_values_name_key_and_line() {
        let text = MINIMAL.replace("presses-per-minute = 6", "presses-per-minute = -1");
        assert_eq!(
            error(&text),
            "/etc/votegate/votegate.toml, line 9: key `terminal.presses-per-minute`: must be above 0 and at most 6000, found -1"
        );
        let text = MINIMAL.replace("presses-per-minute = 6", "presses-per-minute = \"fast\"");
        assert_eq!(
            error(&text),
            "/etc/votegate/votegate.toml, line 9: key `terminal.presses-per-minute`: expected a number, found the text \"fast\""
        );
    }

    #[test]
    fn type_errors_name_no_rust_type() {
        for (serde, plain) in [
            (
                "invalid type: string \"8883\", expected i64",
                "expected a whole number, found the text \"8883\"",
            ),
            (
                "invalid type: floating point `1.5`, expected u64",
                "expected a whole number, found 1.5",
            ),
            (
                "invalid type: integer `5`, expected f64",
                "expected a number, found 5",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "expected true or false, found the text \"yes\"",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "expected text in quotes, found 5",
            ),
            (
                "invalid type: map, expected a sequence",
                "expected a list in square brackets, found a table",
            ),
        ] {
            assert_eq!(plain_type_error(serde).as_deref(), Some(plain), "{serde}");
        }
        assert_eq!(plain_type_error("duplicate key"), None);
    }

    #[test]
    fn plaintext_credentials_go_only_to_this_machine_or_where_allowed() {
        let uplink = |host: &str, extra: &str| {
            MINIMAL.replace(
                "[[terminal]]",
                &format!("[uplink]\nhost = \"{host}\"\ntls = false\nusername = \"u\"\npassword-file = \"/p\"\n{extra}\n[[terminal]]"),
            )
        };
        assert!(load(&uplink("127.0.0.1", "")).is_ok());
        assert!(load(&uplink(
            "mqtt.example.com",
            "allow-plaintext-credentials = true"
        ))
        .is_ok());
        assert!(
            error(&uplink("mqtt.example.com", "")).contains("in clear text to mqtt.example.com")
        );
    }

    #[test]
    fn missing_top_level_keys_are_named() {
        let text = MINIMAL.replace("site = \"store-042\"\n", "");
        assert_eq!(
            error(&text),
            "/etc/votegate/votegate.toml: missing key `site` at the top level"
        );
    }

    #[test]
    fn duplicate_terminal_ids_point_at_the_second() {
        let text = format!("{MINIMAL}\n[[terminal]]\nid = \"entrance\"\nkind = \"simulated\"\npresses-per-minute = 1\n");
        assert_eq!(
            error(&text),
            "/etc/votegate/votegate.toml, line 12: key `terminal.id`: \"entrance\" is used by another terminal; ids must be unique"
        );
    }

    #[test]
    fn line_helpers_find_tables_and_keys() {
        let text = "a = 1\n[journal]\nwhen-full = \"x\"\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, text.find("when").unwrap_or(0)), 3);
        assert_eq!(table_at(text, 2), None);
        assert_eq!(table_at(text, text.len() - 2).as_deref(), Some("journal"));
        assert_eq!(
            key_on_line(text, text.len() - 2).as_deref(),
            Some("when-full")
        );
    }
}

//! Validation of serial terminals and `[[serial-port]]` tables.
//!
//! A serial terminal names its port (`port = "/dev/serial/by-id/…"`) and, on a bus, its
//! `address`. A port without a `[[serial-port]]` table is point-to-point at 115200 baud; the
//! table sets `mode = "bus"`, the baud rate and the timing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawSerialPort, RawTerminal};
use super::{ConfigError, Document, PortMode, SerialPortConfig, SourceConfig, TerminalConfig};
use crate::sources::serial::frame::MAX_BUS_ADDRESS;

/// Line speeds a config may ask for.
const BAUD_RATES: [u32; 8] = [
    9600, 19200, 38400, 57600, 115_200, 230_400, 460_800, 921_600,
];
/// Terminals one RS-485 bus carries (32 unit loads).
const MAX_BUS_TERMINALS: usize = 32;
const DEFAULT_BAUD: u32 = 115_200;
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_millis(30);
/// Three missed 60-second statuses (hardware/PROTOCOL.md § 5.2).
const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(180);

/// A port's settings before its terminals are attached.
struct PortSettings {
    baud: u32,
    mode: PortMode,
    poll_interval: Duration,
    reply_timeout: Duration,
    offline_after: Duration,
}

impl Document<'_> {
    pub(super) fn serial_terminal(&self, raw: &RawTerminal) -> Result<SourceConfig, ConfigError> {
        self.unused("presses-per-minute", &raw.presses_per_minute, "serial")?;
        self.unused_gpio_keys(raw, "serial")?;
        let Some(port) = &raw.port else {
            return Err(self.invalid(
                "terminal.port",
                &raw.kind,
                "is required for kind = \"serial\"",
            ));
        };
        if port.get_ref().trim().is_empty() {
            return Err(self.invalid("terminal.port", port, "must not be empty"));
        }
        let address = match &raw.address {
            Some(value) => match u8::try_from(*value.get_ref()) {
                Ok(address @ 1..=MAX_BUS_ADDRESS) => address,
                _ => {
                    return Err(self.invalid(
                        "terminal.address",
                        value,
                        format!("must be 1 to {MAX_BUS_ADDRESS}, found {}", value.get_ref()),
                    ))
                }
            },
            None => 0,
        };
        Ok(SourceConfig::Serial {
            port: self.device_path("terminal.port", port)?,
            address,
        })
    }

    /// A serial device's path, which must be absolute: a device never lives beside the config
    /// file, and `run` would otherwise wait forever for a port that cannot appear.
    fn device_path(&self, key: &str, value: &Spanned<String>) -> Result<PathBuf, ConfigError> {
        let path = Path::new(value.get_ref());
        if !path.is_absolute() {
            return Err(self.invalid(
                key,
                value,
                format!(
                    "{:?} is a relative path; write the device's full path, like \"/dev/serial/by-id/usb-…\" or \"/dev/ttyUSB0\"",
                    value.get_ref()
                ),
            ));
        }
        Ok(path.to_path_buf())
    }

    pub(super) fn serial_ports(
        &self,
        tables: &[Spanned<RawSerialPort>],
        raw_terminals: &[Spanned<RawTerminal>],
        terminals: &[TerminalConfig],
    ) -> Result<Vec<SerialPortConfig>, ConfigError> {
        let mut settings: HashMap<PathBuf, PortSettings> = HashMap::new();
        for table in tables {
            let table = table.get_ref();
            let path = self.device_path("serial-port.path", &table.path)?;
            if settings.contains_key(&path) {
                return Err(self.invalid(
                    "serial-port.path",
                    &table.path,
                    format!(
                        "{} has another [[serial-port]] table already",
                        path.display()
                    ),
                ));
            }
            settings.insert(path, self.port_settings(table)?);
        }

        // Ports in the order their first terminal appears.
        let mut ports: BTreeMap<usize, SerialPortConfig> = BTreeMap::new();
        let mut port_index: HashMap<PathBuf, usize> = HashMap::new();
        for (raw, terminal) in raw_terminals.iter().map(Spanned::get_ref).zip(terminals) {
            let SourceConfig::Serial { port, address } = &terminal.source else {
                continue;
            };
            let index = *port_index.entry(port.clone()).or_insert(ports.len());
            let port_settings = settings
                .entry(port.clone())
                .or_insert_with(PortSettings::point_default);
            let config = ports
                .entry(index)
                .or_insert_with(|| port_settings.build(port.clone()));
            self.attach(config, raw, terminal, *address)?;
        }

        for table in tables {
            let path = self.device_path("serial-port.path", &table.get_ref().path)?;
            if !port_index.contains_key(&path) {
                return Err(self.invalid(
                    "serial-port.path",
                    &table.get_ref().path,
                    "no [[terminal]] uses this port (set `port` to this path on its terminals)",
                ));
            }
        }
        Ok(ports.into_values().collect())
    }

    fn attach(
        &self,
        port: &mut SerialPortConfig,
        raw: &RawTerminal,
        terminal: &TerminalConfig,
        address: u8,
    ) -> Result<(), ConfigError> {
        let path = port.path.display().to_string();
        let port_key = raw.port.as_ref().unwrap_or(&raw.kind);
        match port.mode {
            PortMode::Point => {
                if let Some(value) = &raw.address {
                    return Err(self.invalid(
                        "terminal.address",
                        value,
                        format!("{path} is a point-to-point port; an address needs a [[serial-port]] table with this path and mode = \"bus\""),
                    ));
                }
                if let Some((_, first)) = port.terminals.first() {
                    return Err(self.invalid(
                        "terminal.port",
                        port_key,
                        format!("{path} is point-to-point and already used by terminal {first:?}; for several terminals on one port add a [[serial-port]] table with mode = \"bus\""),
                    ));
                }
            }
            PortMode::Bus => {
                if address == 0 {
                    return Err(self.invalid(
                        "terminal.address",
                        port_key,
                        format!("terminal {:?} is on the bus {path} and needs an `address` (1 to {MAX_BUS_ADDRESS})", terminal.id.as_str()),
                    ));
                }
                if let (Some((_, other)), Some(value)) = (
                    port.terminals.iter().find(|(a, _)| *a == address),
                    &raw.address,
                ) {
                    return Err(self.invalid(
                        "terminal.address",
                        value,
                        format!(
                            "address {address} on {path} is already used by terminal {other:?}"
                        ),
                    ));
                }
                if port.terminals.len() == MAX_BUS_TERMINALS {
                    return Err(self.invalid(
                        "terminal.port",
                        port_key,
                        format!("{path} already carries {MAX_BUS_TERMINALS} terminals, the most an RS-485 bus takes"),
                    ));
                }
            }
        }
        port.terminals.push((address, terminal.id.clone()));
        Ok(())
    }

    fn port_settings(&self, table: &RawSerialPort) -> Result<PortSettings, ConfigError> {
        let mode = match &table.mode {
            None => PortMode::Point,
            Some(mode) => match mode.get_ref().as_str() {
                "point" => PortMode::Point,
                "bus" => PortMode::Bus,
                other => {
                    return Err(self.invalid(
                        "serial-port.mode",
                        mode,
                        format!("expected \"point\" or \"bus\", found {other:?}"),
                    ))
                }
            },
        };
        let baud = match &table.baud {
            None => DEFAULT_BAUD,
            Some(value) => match u32::try_from(*value.get_ref()) {
                Ok(baud) if BAUD_RATES.contains(&baud) => baud,
                _ => {
                    return Err(self.invalid(
                        "serial-port.baud",
                        value,
                        format!("{} is not one of {BAUD_RATES:?}", value.get_ref()),
                    ))
                }
            },
        };
        let duration = |key: &str,
                        value: &Option<Spanned<String>>,
                        default: Duration,
                        range: (Duration, Duration)| {
            let Some(value) = value else {
                return Ok(default);
            };
            let parsed = super::units::parse_duration(value.get_ref())
                .map_err(|problem| self.invalid(&format!("serial-port.{key}"), value, problem))?;
            if parsed < range.0 || parsed > range.1 {
                return Err(self.invalid(
                    &format!("serial-port.{key}"),
                    value,
                    format!("must be between {:?} and {:?}", range.0, range.1),
                ));
            }
            Ok(parsed)
        };
        let bus_only = |key: &str, value: &Option<Spanned<String>>| match (mode, value) {
            (PortMode::Point, Some(value)) => Err(self.invalid(
                &format!("serial-port.{key}"),
                value,
                "is only used with mode = \"bus\"",
            )),
            _ => Ok(()),
        };
        bus_only("poll-interval", &table.poll_interval)?;
        bus_only("reply-timeout", &table.reply_timeout)?;
        if let (PortMode::Bus, Some(value)) = (mode, &table.offline_after) {
            return Err(self.invalid(
                "serial-port.offline-after",
                value,
                "is only used with mode = \"point\" (bus terminals are offline after 5 unanswered polls)",
            ));
        }
        let ms = Duration::from_millis;
        Ok(PortSettings {
            baud,
            mode,
            poll_interval: duration(
                "poll-interval",
                &table.poll_interval,
                DEFAULT_POLL_INTERVAL,
                (ms(10), ms(10_000)),
            )?,
            reply_timeout: duration(
                "reply-timeout",
                &table.reply_timeout,
                DEFAULT_REPLY_TIMEOUT,
                (ms(5), ms(1_000)),
            )?,
            offline_after: duration(
                "offline-after",
                &table.offline_after,
                DEFAULT_OFFLINE_AFTER,
                (ms(1_000), ms(86_400_000)),
            )?,
        })
    }
}

impl PortSettings {
    fn point_default() -> Self {
        PortSettings {
            baud: DEFAULT_BAUD,
            mode: PortMode::Point,
            poll_interval: DEFAULT_POLL_INTERVAL,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            offline_after: DEFAULT_OFFLINE_AFTER,
        }
    }

    fn build(&self, path: PathBuf) -> SerialPortConfig {
        SerialPortConfig {
            path,
            baud: self.baud,
            mode: self.mode,
            poll_interval: self.poll_interval,
            reply_timeout: self.reply_timeout,
            offline_after: self.offline_after,
            terminals: Vec::new(),
        }
    }
}

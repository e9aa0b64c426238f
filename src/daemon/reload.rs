//! What a reload (SIGHUP) changes, decided from the running config and the file's: pure, so
//! every rule is unit-tested here; `super` only carries the plan out.
//!
//! - Keys that name the gateway or its resources cannot change while it runs: `gateway-id`,
//!   `site`, `data-dir`, `listen`, `[journal]` and `[gpio]`. A file that changes any of them is
//!   refused **as a whole**: nothing is applied, the error names each key with both values, and
//!   the gateway runs on as before. (Applying the rest would run a half-old, half-new gateway:
//!   a file with another `gateway-id` is usually another store's file.)
//! - Sources are units: a simulated terminal, a serial port (with every terminal on it), a GPIO
//!   terminal. Only units that were added, removed or changed are stopped or started; the
//!   others keep running, so their votes are not disturbed at all.
//! - The uplink is restarted (reconnects) only when `[uplink]` changed, apart from
//!   `unhealthy-after`, which only health reads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, SerialPortConfig, SourceConfig};
use crate::model::TerminalId;
use crate::sources::gpio::GpioSettings;

/// A key that cannot change at runtime, with its running and its new value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Immovable {
    /// The key.
    pub key: &'static str,
    /// What the gateway runs with.
    pub running: String,
    /// What the file says.
    pub file: String,
}

impl fmt::Display for Immovable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` cannot change while votegate runs (running: {}, file: {})",
            self.key, self.running, self.file
        )
    }
}

/// One source task: what is started and stopped as a whole.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnitKey {
    /// A simulated terminal.
    Simulated(TerminalId),
    /// A serial port and every terminal on it.
    Port(PathBuf),
    /// A GPIO terminal.
    Gpio(TerminalId),
}

impl fmt::Display for UnitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitKey::Simulated(id) => write!(f, "simulated terminal {id}"),
            UnitKey::Port(path) => write!(f, "serial port {}", path.display()),
            UnitKey::Gpio(id) => write!(f, "GPIO terminal {id}"),
        }
    }
}

/// What a unit runs with; a unit whose spec changes is restarted.
#[derive(Clone, Debug, PartialEq)]
pub enum UnitSpec {
    /// Presses per minute.
    Simulated(f64),
    /// The port's settings and its terminals.
    Port(SerialPortConfig),
    /// The terminal's pins and timing.
    Gpio(GpioSettings),
}

/// The units a config runs.
pub fn units(config: &Config) -> BTreeMap<UnitKey, UnitSpec> {
    let mut units = BTreeMap::new();
    for terminal in &config.terminals {
        match &terminal.source {
            SourceConfig::Simulated { presses_per_minute } => {
                units.insert(
                    UnitKey::Simulated(terminal.id.clone()),
                    UnitSpec::Simulated(*presses_per_minute),
                );
            }
            SourceConfig::Gpio(settings) => {
                units.insert(
                    UnitKey::Gpio(terminal.id.clone()),
                    UnitSpec::Gpio(settings.clone()),
                );
            }
            SourceConfig::Serial { .. } => {}
        }
    }
    for port in &config.serial_ports {
        units.insert(
            UnitKey::Port(port.path.clone()),
            UnitSpec::Port(port.clone()),
        );
    }
    units
}

/// How the uplink changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkChange {
    /// Same settings: the connection stays.
    Keep,
    /// `[uplink]` added.
    Start,
    /// `[uplink]` removed: votes stay in the journal.
    Stop,
    /// Settings changed: reconnect with the new ones.
    Restart,
}

/// Everything a valid reload changes.
#[derive(Clone, Debug, PartialEq)]
pub struct ReloadPlan {
    /// Units to stop (removed or changed), before any is started.
    pub stop: Vec<UnitKey>,
    /// Units to start (added or changed).
    pub start: Vec<UnitKey>,
    /// Units left running.
    pub kept: usize,
    /// The uplink.
    pub uplink: UplinkChange,
    /// Terminals added, removed or of another kind (the registry follows).
    pub terminals: bool,
    /// The tallies' rules or terminals (they are rebuilt from the journal), or the alert rules.
    pub tallies: bool,
    /// `[display]` (title, language, labels, screens, connections, origins): pages loaded
    /// after the reload get the new settings.
    pub display: bool,
    /// `unhealthy-after` keys.
    pub health: bool,
    /// `log-level`.
    pub log_level: bool,
    /// Per-terminal filter intervals that the running filter would not apply (see
    /// `super::apply_filter_intervals`).
    pub filter: bool,
}

impl ReloadPlan {
    /// Whether the file changes nothing.
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.start.is_empty()
            && self.uplink == UplinkChange::Keep
            && !(self.terminals
                || self.tallies
                || self.display
                || self.health
                || self.log_level
                || self.filter)
    }
}

impl fmt::Display for ReloadPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing changed");
        }
        let mut parts = Vec::new();
        let list = |units: &[UnitKey]| {
            units
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.stop.is_empty() {
            parts.push(format!("stopped {}", list(&self.stop)));
        }
        if !self.start.is_empty() {
            parts.push(format!("started {}", list(&self.start)));
        }
        parts.push(format!("{} source(s) untouched", self.kept));
        match self.uplink {
            UplinkChange::Keep => {}
            UplinkChange::Start => parts.push("uplink started".into()),
            UplinkChange::Stop => parts.push("uplink stopped".into()),
            UplinkChange::Restart => parts.push("uplink reconnecting with new settings".into()),
        }
        for (changed, what) in [
            (self.tallies, "tallies rebuilt under the new rules"),
            (self.display, "display settings"),
            (self.health, "health limits"),
            (self.log_level, "log level"),
            (self.filter, "filter intervals (apply after a restart)"),
        ] {
            if changed {
                parts.push(what.to_string());
            }
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// The plan to go from `running` to `file`, or every key that cannot change at runtime.
pub fn plan(running: &Config, file: &Config) -> Result<ReloadPlan, Vec<Immovable>> {
    let immovable = immovable_changes(running, file);
    if !immovable.is_empty() {
        return Err(immovable);
    }
    let old = units(running);
    let new = units(file);
    let stop: Vec<UnitKey> = old
        .iter()
        .filter(|(key, spec)| new.get(*key) != Some(*spec))
        .map(|(key, _)| key.clone())
        .collect();
    let start: Vec<UnitKey> = new
        .iter()
        .filter(|(key, spec)| old.get(*key) != Some(*spec))
        .map(|(key, _)| key.clone())
        .collect();
    let kept = new.len() - start.len();
    let uplink = match (&running.uplink, &file.uplink) {
        (None, None) => UplinkChange::Keep,
        (None, Some(_)) => UplinkChange::Start,
        (Some(_), None) => UplinkChange::Stop,
        (Some(a), Some(b)) if a == b => UplinkChange::Keep,
        (Some(_), Some(_)) => UplinkChange::Restart,
    };
    let kinds = |config: &Config| -> Vec<(TerminalId, &'static str)> {
        config
            .terminals
            .iter()
            .map(|t| (t.id.clone(), t.source.kind()))
            .collect()
    };
    let ids = |config: &Config| -> Vec<TerminalId> {
        config.terminals.iter().map(|t| t.id.clone()).collect()
    };
    let rules = |config: &Config| {
        (
            config.time_zone.name.clone(),
            config.display.day_start,
            config.opening_hours.clone(),
        )
    };
    Ok(ReloadPlan {
        stop,
        start,
        kept,
        uplink,
        terminals: kinds(running) != kinds(file),
        tallies: rules(running) != rules(file)
            || ids(running) != ids(file)
            || running.alerts != file.alerts,
        display: running.display != file.display,
        health: running.health != file.health,
        log_level: running.log_level != file.log_level,
        filter: filter_changed(running, file),
    })
}

/// Whether the filter would decide differently under the file: a terminal's interval changed,
/// or a terminal added with an interval other than the filter's built-in default (which it
/// applies to terminals it does not know).
fn filter_changed(running: &Config, file: &Config) -> bool {
    let old = filter_intervals(running);
    filter_intervals(file).iter().any(|(id, interval)| {
        *interval
            != old
                .get(id)
                .copied()
                .unwrap_or(crate::config::DEFAULT_MIN_INTERVAL)
    })
}

/// Each terminal's filter interval.
pub fn filter_intervals(config: &Config) -> BTreeMap<TerminalId, Duration> {
    config
        .terminals
        .iter()
        .map(|t| (t.id.clone(), t.min_interval))
        .collect()
}

fn immovable_changes(running: &Config, file: &Config) -> Vec<Immovable> {
    let mut changes = Vec::new();
    let mut check = |key: &'static str, running: String, file: String| {
        if running != file {
            changes.push(Immovable { key, running, file });
        }
    };
    check(
        "gateway-id",
        format!("{:?}", running.gateway_id),
        format!("{:?}", file.gateway_id),
    );
    check(
        "site",
        format!("{:?}", running.site),
        format!("{:?}", file.site),
    );
    check(
        "data-dir",
        running.data_dir.display().to_string(),
        file.data_dir.display().to_string(),
    );
    check(
        "listen",
        running.listen.to_string(),
        file.listen.to_string(),
    );
    check(
        "journal",
        format!("{:?}", running.journal),
        format!("{:?}", file.journal),
    );
    check(
        "gpio",
        format!("{:?}", running.gpio),
        format!("{:?}", file.gpio),
    );
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
gateway-id = "gw-1"
site = "store-042"
time-zone = "Europe/Berlin"
listen = "127.0.0.1:8080"

[[serial-port]]
path = "/dev/ttyRS485"
mode = "bus"

[[terminal]]
id = "entrance"
kind = "serial"
port = "/dev/ttyUSB0"

[[terminal]]
id = "gate-1"
kind = "serial"
port = "/dev/ttyRS485"
address = 1

[[terminal]]
id = "demo"
kind = "simulated"
presses-per-minute = 6
"#;

    fn config(text: &str) -> Config {
        Config::from_toml(Path::new("/etc/votegate/votegate.toml"), text).expect("valid")
    }

    fn port(path: &str) -> UnitKey {
        UnitKey::Port(PathBuf::from(path))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let plan = plan(&config(BASE), &config(BASE)).expect("allowed");
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(plan.kept, 3);
        assert_eq!(plan.to_string(), "nothing changed");
    }

    #[test]
    fn adding_a_terminal_starts_only_its_unit() {
        let more = format!(
            "{BASE}\n[[terminal]]\nid = \"exit\"\nkind = \"serial\"\nport = \"/dev/ttyUSB1\"\n"
        );
        let plan = plan(&config(BASE), &config(&more)).expect("allowed");
        assert_eq!(plan.stop, []);
        assert_eq!(plan.start, [port("/dev/ttyUSB1")]);
        assert_eq!(plan.kept, 3);
        assert!(plan.terminals && plan.tallies);
        assert!(!plan.display && plan.uplink == UplinkChange::Keep);
        assert_eq!(
            plan.to_string(),
            "started serial port /dev/ttyUSB1; 3 source(s) untouched; tallies rebuilt under the new rules"
        );
    }

    #[test]
    fn a_terminal_added_to_a_bus_restarts_that_bus_only() {
        let more = format!(
            "{BASE}\n[[terminal]]\nid = \"gate-2\"\nkind = \"serial\"\nport = \"/dev/ttyRS485\"\naddress = 2\n"
        );
        let plan = plan(&config(BASE), &config(&more)).expect("allowed");
        assert_eq!(plan.stop, [port("/dev/ttyRS485")]);
        assert_eq!(plan.start, [port("/dev/ttyRS485")]);
        assert_eq!(plan.kept, 2);
    }

    #[test]
    fn removing_or_changing_a_terminal_stops_or_restarts_its_unit() {
        let fewer = BASE.replace(
            "[[terminal]]\nid = \"demo\"\nkind = \"simulated\"\npresses-per-minute = 6\n",
            "",
        );
        let plan = plan(&config(BASE), &config(&fewer)).expect("allowed");
        assert_eq!(
            plan.stop,
            [UnitKey::Simulated(TerminalId::new("demo").expect("id"))]
        );
        assert_eq!(plan.start, []);
        let faster = BASE.replace("presses-per-minute = 6", "presses-per-minute = 60");
        let plan = super::plan(&config(BASE), &config(&faster)).expect("allowed");
        assert_eq!(plan.stop, plan.start);
        assert_eq!(plan.stop.len(), 1);
        assert!(!plan.terminals, "same terminals, same kinds");
    }

    #[test]
    fn display_opening_hours_health_log_level_and_filter_apply_without_touching_sources() {
        let changed = BASE.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nlog-level = \"debug\"\nunhealthy-after = \"10m\"\n\n\
             [display]\ntitle = \"Wie war's?\"\n\n[filter]\nmin-interval = \"5s\"\n\n\
             [opening-hours]\nmonday = \"08:00-20:00\"\ntuesday = \"08:00-20:00\"\nwednesday = \"closed\"\n\
             thursday = \"08:00-20:00\"\nfriday = \"08:00-20:00\"\nsaturday = \"09:00-14:00\"\nsunday = \"closed\"",
        );
        let plan = plan(&config(BASE), &config(&changed)).expect("allowed");
        assert!(plan.stop.is_empty() && plan.start.is_empty());
        assert!(plan.display && plan.tallies && plan.health && plan.log_level && plan.filter);
        assert!(!plan.terminals);
    }

    #[test]
    fn a_new_language_or_label_is_a_display_change_for_pages_loaded_after_it() {
        let german = BASE.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\n\n[display]\nlanguage = \"de\"",
        );
        let plan = plan(&config(BASE), &config(&german)).expect("allowed");
        assert!(plan.display && !plan.tallies && plan.stop.is_empty());
        let relabelled = german.replace(
            "language = \"de\"",
            "language = \"de\"\n\n[display.labels]\nvotes = \"Antworten\"",
        );
        let plan = super::plan(&config(&german), &config(&relabelled)).expect("allowed");
        assert!(plan.display && !plan.tallies && plan.stop.is_empty());
    }

    #[test]
    fn the_uplink_restarts_only_when_its_connection_settings_change() {
        let with = format!("{BASE}\n[uplink]\nhost = \"broker.example.com\"\n");
        assert_eq!(
            plan(&config(BASE), &config(&with)).expect("ok").uplink,
            UplinkChange::Start
        );
        assert_eq!(
            plan(&config(&with), &config(BASE)).expect("ok").uplink,
            UplinkChange::Stop
        );
        let other = with.replace("broker.example.com", "broker2.example.com");
        assert_eq!(
            plan(&config(&with), &config(&other)).expect("ok").uplink,
            UplinkChange::Restart
        );
        let patient = format!("{with}unhealthy-after = \"30m\"\n");
        let plan = plan(&config(&with), &config(&patient)).expect("ok");
        assert_eq!(plan.uplink, UplinkChange::Keep);
        assert!(plan.health);
    }

    #[test]
    fn identity_and_resources_cannot_change_and_refuse_the_whole_file() {
        let moved = BASE
            .replace("gw-1", "gw-2")
            .replace("127.0.0.1:8080", "0.0.0.0:8080")
            .replace("presses-per-minute = 6", "presses-per-minute = 60");
        let refused = plan(&config(BASE), &config(&moved)).expect_err("refused");
        assert_eq!(
            refused.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "`gateway-id` cannot change while votegate runs (running: \"gw-1\", file: \"gw-2\")",
                "`listen` cannot change while votegate runs (running: 127.0.0.1:8080, file: 0.0.0.0:8080)",
            ]
        );
        let journal = format!("{BASE}\n[journal]\nmax-disk-size = \"64 MiB\"\n");
        let refused = plan(&config(BASE), &config(&journal)).expect_err("refused");
        assert_eq!(refused[0].key, "journal");
        let data = BASE.replace("site =", "data-dir = \"/srv/votegate\"\nsite =");
        assert_eq!(
            plan(&config(BASE), &config(&data)).expect_err("refused")[0].key,
            "data-dir"
        );
    }
}

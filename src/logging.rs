//! Logs for operators. Under systemd (stderr connected to the journal, `JOURNAL_STREAM`) records go
//! to journald natively, their structured values (`terminal`, `seq`, `port`, …) becoming journal
//! fields (`TERMINAL=`, `SEQ=`, `PORT=`): `journalctl -u votegate TERMINAL=entrance`. Elsewhere
//! they go to stderr, one line each, with the fields after the message. The level comes from the
//! config's `log-level`, overridden by the `VOTEGATE_LOG` environment variable; other crates'
//! records are shown from WARN up, or at TRACE.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

/// The environment variable that overrides the configured level.
pub const LEVEL_ENV: &str = "VOTEGATE_LOG";

/// Where the logs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// journald.
    Journal,
    /// stderr.
    Stderr,
}

/// Installs the logger. `configured` applies unless `VOTEGATE_LOG` names a valid level. Returns
/// the level in force and the destination. Calling it twice keeps the first logger.
pub fn init(configured: LevelFilter) -> (LevelFilter, Destination) {
    let (logger, destination): (Box<dyn Log>, Destination) = match journal() {
        Some(journal) => (Box::new(Filtered { inner: journal }), Destination::Journal),
        None => (Box::new(Filtered { inner: Stderr }), Destination::Stderr),
    };
    if log::set_boxed_logger(logger).is_ok() {
        return (set_level(configured), destination);
    }
    (log::max_level(), destination)
}

/// Applies the configured level (a reload), unless `VOTEGATE_LOG` overrides it. Returns the
/// level in force.
pub fn set_level(configured: LevelFilter) -> LevelFilter {
    let level = std::env::var(LEVEL_ENV)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(configured);
    log::set_max_level(level);
    level
}

fn journal() -> Option<systemd_journal_logger::JournalLog> {
    if !systemd_journal_logger::connected_to_journal() {
        return None;
    }
    let journal = systemd_journal_logger::JournalLog::new().ok()?;
    Some(journal.with_syslog_identifier("votegate".to_string()))
}

/// Our records from the level in force (`log::max_level`) up, other crates' from WARN up (or
/// everything at TRACE).
struct Filtered<L> {
    inner: L,
}

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let level = log::max_level();
        let ours = metadata.target().starts_with("votegate");
        metadata.level() <= level
            && (ours || metadata.level() <= log::Level::Warn || level == LevelFilter::Trace)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let mut fields = Fields(String::new());
        let _ = record.key_values().visit(&mut fields);
        let line = format!(
            "{} {:<5} {}{}\n",
            jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
            record.level(),
            record.args(),
            fields.0
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

struct Fields(String);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

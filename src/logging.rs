//! Logs for operators: one line per event on stderr, with structured fields (`terminal=…`,
//! `seq=…`) after the message. The level comes from the config's `log-level`, overridden by the
//! `VOTEGATE_LOG` environment variable. Other crates' chatter is shown from WARN up, or at TRACE.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

/// The environment variable that overrides the configured level.
pub const LEVEL_ENV: &str = "VOTEGATE_LOG";

/// Installs the stderr logger. `configured` applies unless `VOTEGATE_LOG` names a valid level.
/// Returns the level in force. Calling it twice keeps the first logger.
pub fn init(configured: LevelFilter) -> LevelFilter {
    let level = std::env::var(LEVEL_ENV)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(configured);
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
    level
}

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("votegate");
        metadata.level() <= self.level
            && (ours || metadata.level() <= log::Level::Warn || self.level == LevelFilter::Trace)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
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

//! Validation of the `[[alert]]` rules.

use std::time::Duration;

use toml::Spanned;

use super::raw::RawAlert;
use super::{units, ConfigError, Document, TerminalConfig};
use crate::alerts::{AlertKind, AlertRule, AlertScope, DEFAULT_HOLD_DOWN_MS};
use crate::model::{Button, TerminalId};

/// The longest window: the tallies keep a day of minutes.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_WINDOW_MINUTES: u32 = 15;
const DEFAULT_MIN_VOTES: u64 = 4;

impl Document<'_> {
    /// The alert rules; without any `[[alert]]`, the default rule.
    pub(super) fn alerts(
        &self,
        raw: &[Spanned<RawAlert>],
        terminals: &[TerminalConfig],
    ) -> Result<Vec<AlertRule>, ConfigError> {
        if raw.is_empty() {
            return Ok(vec![AlertRule::default_rule()]);
        }
        raw.iter()
            .map(|table| self.alert(table.get_ref(), terminals))
            .collect()
    }

    fn alert(
        &self,
        raw: &RawAlert,
        terminals: &[TerminalConfig],
    ) -> Result<AlertRule, ConfigError> {
        let kind = AlertKind::NAMES
            .iter()
            .find(|(name, _)| name == raw.kind.get_ref())
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                self.invalid(
                    "alert.kind",
                    &raw.kind,
                    format!(
                        "expected \"negative-share\", \"index-below\", \"index-above\" or \"button-count\", found {:?}",
                        raw.kind.get_ref()
                    ),
                )
            })?;
        let threshold = *raw.threshold.get_ref();
        let range = match kind {
            AlertKind::ButtonCount => 1.0..=1_000_000.0,
            _ => 0.0..=100.0,
        };
        if !range.contains(&threshold) {
            let problem = match kind {
                AlertKind::ButtonCount => "must be a number of presses from 1 to 1000000",
                AlertKind::NegativeShare => "must be a percentage from 0 to 100",
                _ => "must be a happy index from 0 to 100",
            };
            return Err(self.invalid("alert.threshold", &raw.threshold, problem));
        }
        let window_minutes = match &raw.window {
            Some(value) => self.alert_window(value)?,
            None => DEFAULT_WINDOW_MINUTES,
        };
        let min_votes = match &raw.min_votes {
            Some(value) => u64::try_from(*value.get_ref())
                .ok()
                .filter(|n| *n <= 1_000_000)
                .ok_or_else(|| {
                    self.invalid("alert.min-votes", value, "must be from 0 to 1000000")
                })?,
            None => DEFAULT_MIN_VOTES,
        };
        let button = match (&raw.button, kind) {
            (Some(value), AlertKind::ButtonCount) => Some(
                u8::try_from(*value.get_ref())
                    .ok()
                    .and_then(|n| Button::try_from(n).ok())
                    .ok_or_else(|| {
                        self.invalid(
                            "alert.button",
                            value,
                            "must be 1 (very unhappy), 2, 3 or 4 (very happy)",
                        )
                    })?,
            ),
            (Some(value), _) => {
                return Err(self.invalid(
                    "alert.button",
                    value,
                    "is only for kind = \"button-count\"",
                ))
            }
            (None, AlertKind::ButtonCount) => {
                return Err(self.invalid(
                    "alert.kind",
                    &raw.kind,
                    "\"button-count\" needs `button` (1 to 4)",
                ))
            }
            (None, _) => None,
        };
        let scope = match &raw.terminal {
            None => AlertScope::Site,
            Some(value) if value.get_ref() == "*" => AlertScope::EachTerminal,
            Some(value) => {
                let id = TerminalId::new(value.get_ref())
                    .ok()
                    .filter(|id| terminals.iter().any(|terminal| &terminal.id == id));
                AlertScope::Terminal(id.ok_or_else(|| {
                    self.invalid(
                        "alert.terminal",
                        value,
                        format!(
                            "{:?} is not a configured terminal (use a [[terminal]] id, or \"*\" for each terminal)",
                            value.get_ref()
                        ),
                    )
                })?)
            }
        };
        let hold_down_ms = match &raw.hold_down {
            Some(value) => {
                let duration = units::parse_duration(value.get_ref())
                    .map_err(|problem| self.invalid("alert.hold-down", value, problem))?;
                if duration > MAX_WINDOW {
                    return Err(self.invalid("alert.hold-down", value, "must be at most 24h"));
                }
                i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
            }
            None => DEFAULT_HOLD_DOWN_MS,
        };
        Ok(AlertRule {
            kind,
            threshold,
            window_minutes,
            min_votes,
            scope,
            button,
            hold_down_ms,
        })
    }

    fn alert_window(&self, value: &Spanned<String>) -> Result<u32, ConfigError> {
        let window = units::parse_duration(value.get_ref())
            .map_err(|problem| self.invalid("alert.window", value, problem))?;
        let minutes = window.as_secs() / 60;
        if window.as_secs() % 60 != 0 || window.subsec_nanos() != 0 || minutes == 0 {
            return Err(self.invalid(
                "alert.window",
                value,
                "must be whole minutes, like \"15m\" or \"1h\"",
            ));
        }
        if window > MAX_WINDOW {
            return Err(self.invalid("alert.window", value, "must be at most 24h"));
        }
        Ok(u32::try_from(minutes).unwrap_or(u32::MAX))
    }
}

//! Validation of `listen`, `[display]` and `[opening-hours]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use jiff::civil::Time;
use toml::Spanned;

use super::raw::{Hours, RawDisplay, RawOpeningHours};
use super::{ConfigError, DisplayConfig, Document, DEFAULT_LISTEN};
use crate::labels::{check_override, language_codes, resolve, Language};
use crate::tallies::{parse_time, OpeningHours};

/// Why a time of day was refused.
enum TimeProblem {
    /// `HH:MM:SS`.
    Seconds,
    /// Anything else that is not `HH:MM`.
    Invalid,
}

/// A time of day as the config writes it: `HH:MM`. Seconds are refused rather than dropped:
/// the tallies count per whole minute, so `08:00:30` would silently mean `08:00`.
fn minute_time(text: &str) -> Result<Time, TimeProblem> {
    let fields = text.trim().split(':').count();
    if fields == 3 {
        return Err(TimeProblem::Seconds);
    }
    match parse_time(text) {
        Some(time) if fields == 2 => Ok(time),
        _ => Err(TimeProblem::Invalid),
    }
}

/// What to say about a refused time, in `what` (the value as written).
fn time_problem(what: &str, problem: TimeProblem, example: &str) -> String {
    match problem {
        TimeProblem::Seconds => format!(
            "{what:?} has seconds: the tallies count whole minutes, so write hours and minutes only, like {example:?}"
        ),
        TimeProblem::Invalid => format!("{what:?} is not a time like {example:?}"),
    }
}

impl Document<'_> {
    pub(super) fn listen(
        &self,
        value: Option<&Spanned<String>>,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(value) = value else {
            return DEFAULT_LISTEN
                .parse()
                .map_err(|_| self.error(None, "the default listen address does not parse".into()));
        };
        value.get_ref().parse().map_err(|_| {
            self.invalid(
                "listen",
                value,
                format!(
                    "{:?} is not an address like \"127.0.0.1:8080\" (this machine only) or \"0.0.0.0:8080\" (the store network)",
                    value.get_ref()
                ),
            )
        })
    }

    pub(super) fn display(&self, raw: &RawDisplay) -> Result<DisplayConfig, ConfigError> {
        let defaults = DisplayConfig::default();
        let language = match &raw.language {
            Some(code) => Language::from_code(code.get_ref()).ok_or_else(|| {
                self.invalid(
                    "display.language",
                    code,
                    format!(
                        "{:?} is not a built-in language; choose one of {}",
                        code.get_ref(),
                        language_codes()
                    ),
                )
            })?,
            None => Language::default(),
        };
        let mut overrides = BTreeMap::new();
        for (key, text) in raw.labels.iter().flatten() {
            let what = format!("display.labels.{key}");
            let known = check_override(key, text.get_ref())
                .map_err(|problem| self.invalid(&what, text, problem))?;
            if text.get_ref().chars().count() > 200 {
                return Err(self.invalid(&what, text, "must be at most 200 characters"));
            }
            overrides.insert(known, text.get_ref().clone());
        }
        let title = match &raw.title {
            Some(title) if title.get_ref().trim().is_empty() => {
                return Err(self.invalid("display.title", title, "must not be empty"))
            }
            Some(title) if title.get_ref().chars().count() > 80 => {
                return Err(self.invalid("display.title", title, "must be at most 80 characters"))
            }
            Some(title) => title.get_ref().clone(),
            None => language.default_title().to_string(),
        };
        let day_start = match &raw.day_starts_at {
            Some(value) => match minute_time(value.get_ref()) {
                Ok(time) => time,
                Err(problem) => {
                    return Err(self.invalid(
                        "display.day-starts-at",
                        value,
                        time_problem(value.get_ref(), problem, "04:00"),
                    ))
                }
            },
            None => defaults.day_start,
        };
        let max_screens = match &raw.max_screens {
            Some(value) => match usize::try_from(*value.get_ref()) {
                Ok(n @ 1..=1000) => n,
                _ => {
                    return Err(self.invalid(
                        "display.max-screens",
                        value,
                        format!("must be 1 to 1000, found {}", value.get_ref()),
                    ))
                }
            },
            None => defaults.max_screens,
        };
        let max_connections = match &raw.max_connections {
            Some(value) => match usize::try_from(*value.get_ref()) {
                Ok(n @ 16..=20_000) if n > max_screens => n,
                Ok(n @ 16..=20_000) => {
                    return Err(self.invalid(
                        "display.max-connections",
                        value,
                        format!("must be above display.max-screens ({max_screens}), so that /healthz and the API stay reachable with every screen connected; found {n}"),
                    ))
                }
                _ => {
                    return Err(self.invalid(
                        "display.max-connections",
                        value,
                        format!("must be 16 to 20000, found {}", value.get_ref()),
                    ))
                }
            },
            None if max_screens < defaults.max_connections => defaults.max_connections,
            None => max_screens + defaults.max_connections,
        };
        let allowed_origins = match &raw.allowed_origins {
            Some(origins) => {
                for origin in origins.get_ref() {
                    let valid = origin == "*"
                        || origin.starts_with("http://")
                        || origin.starts_with("https://");
                    if !valid || origin.ends_with('/') {
                        return Err(self.invalid(
                            "display.allowed-origins",
                            origins,
                            format!("{origin:?} is not \"*\" or an origin like \"http://screen.local:3000\""),
                        ));
                    }
                }
                origins.get_ref().clone()
            }
            None => defaults.allowed_origins,
        };
        Ok(DisplayConfig {
            title,
            day_start,
            max_screens,
            max_connections,
            allowed_origins,
            language,
            labels: resolve(language, &overrides),
        })
    }

    pub(super) fn opening_hours(&self, raw: &RawOpeningHours) -> Result<OpeningHours, ConfigError> {
        let days = [
            ("monday", &raw.monday),
            ("tuesday", &raw.tuesday),
            ("wednesday", &raw.wednesday),
            ("thursday", &raw.thursday),
            ("friday", &raw.friday),
            ("saturday", &raw.saturday),
            ("sunday", &raw.sunday),
        ];
        let mut week: [Vec<(Time, Time)>; 7] = Default::default();
        for (slot, (day, value)) in week.iter_mut().zip(days) {
            let ranges: Vec<&String> = match value.get_ref() {
                Hours::One(text) if text == "closed" => Vec::new(),
                Hours::One(text) => vec![text],
                Hours::Many(list) => list.iter().collect(),
            };
            for range in ranges {
                let parsed = match range.split_once('-') {
                    Some((open, close)) => minute_time(open)
                        .and_then(|open| Ok((open, minute_time(close)?)))
                        .map_err(|problem| match problem {
                            TimeProblem::Seconds => {
                                time_problem(range, TimeProblem::Seconds, "08:00-20:00")
                            }
                            TimeProblem::Invalid => format!(
                                "{range:?} is not a range like \"08:00-20:00\" (or write \"closed\")"
                            ),
                        }),
                    None => Err(format!(
                        "{range:?} is not a range like \"08:00-20:00\" (or write \"closed\")"
                    )),
                };
                match parsed {
                    Ok((open, close)) if open != close => slot.push((open, close)),
                    Ok(_) => {
                        return Err(self.invalid(
                            &format!("opening-hours.{day}"),
                            value,
                            format!("{range:?} opens and closes at the same time; write a range like \"08:00-20:00\" (or \"closed\")"),
                        ))
                    }
                    Err(problem) => {
                        return Err(self.invalid(&format!("opening-hours.{day}"), value, problem))
                    }
                }
            }
        }
        Ok(OpeningHours(week))
    }
}

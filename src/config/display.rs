//! Validation of `listen`, `[display]` and `[opening-hours]`.

use std::net::SocketAddr;

use jiff::civil::Time;
use toml::Spanned;

use super::raw::{Hours, RawDisplay, RawOpeningHours};
use super::{ConfigError, DisplayConfig, Document, DEFAULT_LISTEN};
use crate::tallies::{parse_time, OpeningHours};

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
        let title = match &raw.title {
            Some(title) if title.get_ref().trim().is_empty() => {
                return Err(self.invalid("display.title", title, "must not be empty"))
            }
            Some(title) if title.get_ref().chars().count() > 80 => {
                return Err(self.invalid("display.title", title, "must be at most 80 characters"))
            }
            Some(title) => title.get_ref().clone(),
            None => defaults.title,
        };
        let day_start = match &raw.day_starts_at {
            Some(value) => parse_time(value.get_ref()).ok_or_else(|| {
                self.invalid(
                    "display.day-starts-at",
                    value,
                    format!("{:?} is not a time like \"04:00\"", value.get_ref()),
                )
            })?,
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
                let parsed = range
                    .split_once('-')
                    .and_then(|(open, close)| Some((parse_time(open)?, parse_time(close)?)));
                match parsed {
                    Some((open, close)) if open != close => slot.push((open, close)),
                    _ => {
                        return Err(self.invalid(
                            &format!("opening-hours.{day}"),
                            value,
                            format!(
                            "{range:?} is not a range like \"08:00-20:00\" (or write \"closed\")"
                        ),
                        ))
                    }
                }
            }
        }
        Ok(OpeningHours(week))
    }
}

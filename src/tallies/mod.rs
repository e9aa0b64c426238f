//! Local tallies for the in-store screen. Pure: time is passed in.
//!
//! The tallies keep, per terminal, the counts of votes per button and UTC minute (the same
//! minute counts the journal stores, so a restart rebuilds them exactly). From them a
//! [`TalliesSnapshot`] derives, per terminal and for the whole site:
//! - **today**: since the start of the site's day (`day-starts-at`, default midnight, in the
//!   site's time zone; a day is 23 or 25 hours long across DST changes), with presses outside
//!   the opening hours counted apart and left out of the day's scores;
//! - **last 60 minutes** and **last 15 minutes**, at minute resolution (the current minute and
//!   the 59 or 14 before it).
//!
//! Filtered votes (anti-abuse) are never counted. Scores follow CONTRACT.md: `positive_pct` =
//! (happy + very happy) / counted × 100; `happy_index` = Σ(button − 1) / (3 · counted) × 100.

pub mod feed;
pub mod task;

use std::collections::BTreeMap;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::journal::record::{minute_of, MinuteTally};
use crate::model::{TerminalId, Vote};

const MS_PER_MINUTE: i64 = 60_000;

/// Counts per button, with the derived scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; 4]);

impl Counts {
    /// All counted presses.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// (happy + very happy) / counted × 100; `None` without votes.
    pub fn positive_pct(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| (self.0[2] + self.0[3]) as f64 * 100.0 / total as f64)
    }

    /// Σ(button − 1) / (3 · counted) × 100, i.e. the mean with buttons valued 0, 33.3, 66.7 and
    /// 100; `None` without votes.
    pub fn happy_index(&self) -> Option<f64> {
        let total = self.total();
        let weighted: u64 = self.0.iter().enumerate().map(|(i, n)| i as u64 * n).sum();
        (total > 0).then(|| weighted as f64 * 100.0 / (3 * total) as f64)
    }

    fn add_tally(&mut self, tally: &MinuteTally) {
        for (count, add) in self.0.iter_mut().zip(tally.counted) {
            *count += u64::from(add);
        }
    }

    fn add(&mut self, other: &Counts) {
        for (count, add) in self.0.iter_mut().zip(other.0) {
            *count += add;
        }
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Counts", 7)?;
        s.serialize_field("very_unhappy", &self.0[0])?;
        s.serialize_field("unhappy", &self.0[1])?;
        s.serialize_field("happy", &self.0[2])?;
        s.serialize_field("very_happy", &self.0[3])?;
        s.serialize_field("total", &self.total())?;
        s.serialize_field("positive_pct", &self.positive_pct())?;
        s.serialize_field("happy_index", &self.happy_index())?;
        s.end()
    }
}

/// What [`Counts`] looks like in JSON; the derived fields are recomputed when read back.
#[derive(Deserialize)]
struct CountsJson {
    very_unhappy: u64,
    unhappy: u64,
    happy: u64,
    very_happy: u64,
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Counts, D::Error> {
        let json = CountsJson::deserialize(deserializer)?;
        Ok(Counts([
            json.very_unhappy,
            json.unhappy,
            json.happy,
            json.very_happy,
        ]))
    }
}

/// Counted presses in one hour: very unhappy, unhappy, happy, very happy.
pub type HourCounts = [u64; 4];

/// The windows of one terminal, or of the site.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    /// Today, within opening hours.
    pub today: Counts,
    /// Today, outside opening hours (not in today's scores).
    pub today_outside_hours: Counts,
    /// The last 60 minutes.
    pub last_60m: Counts,
    /// The last 15 minutes.
    pub last_15m: Counts,
    /// Votes filtered today (not counted anywhere else).
    pub filtered_today: u64,
    /// Counted presses in each hour of today (the hours of [`HourAxes::today`]), inside and
    /// outside opening hours.
    pub hours: Vec<HourCounts>,
    /// The same for the same weekday a week before ([`HourAxes::last_week`]).
    pub hours_last_week: Vec<HourCounts>,
}

impl Windows {
    fn add(&mut self, other: &Windows) {
        self.today.add(&other.today);
        self.today_outside_hours.add(&other.today_outside_hours);
        self.last_60m.add(&other.last_60m);
        self.last_15m.add(&other.last_15m);
        self.filtered_today += other.filtered_today;
        add_hours(&mut self.hours, &other.hours);
        add_hours(&mut self.hours_last_week, &other.hours_last_week);
    }
}

fn add_hours(sum: &mut Vec<HourCounts>, hours: &[HourCounts]) {
    if sum.len() < hours.len() {
        sum.resize(hours.len(), [0; 4]);
    }
    for (total, hour) in sum.iter_mut().zip(hours) {
        for (count, add) in total.iter_mut().zip(hour) {
            *count += add;
        }
    }
}

/// The hours of one tally day: real hours from its start (23 or 25 of them across a DST
/// change; the autumn's repeated hour appears twice, with its two offsets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourAxis {
    /// The local date the tally day starts on (`2026-11-28`).
    pub date: String,
    /// Each hour's local start, RFC 3339 with offset (`2026-10-25T02:00:00+02:00`).
    pub starts: Vec<String>,
    /// Whether the site is open during any of the hour (all true without opening hours).
    pub open: Vec<bool>,
}

/// The hours `hours` and `hours_last_week` count in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourAxes {
    /// Today's tally day.
    pub today: HourAxis,
    /// The tally day on the same weekday a week before.
    pub last_week: HourAxis,
}

/// All tallies at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TalliesSnapshot {
    /// When it was computed (UTC, RFC 3339).
    pub generated_at: String,
    /// The site's time zone.
    pub time_zone: String,
    /// Start of the site's current day (RFC 3339 with offset).
    pub day_start: String,
    /// The hours of today and of the same weekday a week before.
    pub hour_axes: HourAxes,
    /// The whole site.
    pub site: Windows,
    /// Each configured terminal (and any other that voted), by id.
    pub terminals: BTreeMap<TerminalId, Windows>,
}

impl TalliesSnapshot {
    /// Whether `other` holds the same tallies, whenever each was computed: a screen need not
    /// hear of a snapshot that differs only in `generated_at`.
    pub fn same_tallies(&self, other: &TalliesSnapshot) -> bool {
        let TalliesSnapshot {
            generated_at: _,
            time_zone,
            day_start,
            hour_axes,
            site,
            terminals,
        } = self;
        *time_zone == other.time_zone
            && *day_start == other.day_start
            && *hour_axes == other.hour_axes
            && *site == other.site
            && *terminals == other.terminals
    }
}

/// Opening hours: per weekday (Monday first), the open intervals in local time. An interval whose
/// end is not after its start runs past midnight into the next day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpeningHours(pub [Vec<(Time, Time)>; 7]);

impl OpeningHours {
    /// Every open interval, as UTC ms, of the local dates `first..=last`.
    fn intervals(&self, zone: &TimeZone, first: Date, last: Date) -> Vec<(i64, i64)> {
        let mut intervals = Vec::new();
        let mut date = first;
        while date <= last {
            let index = date.weekday().to_monday_zero_offset() as usize;
            for (open, close) in &self.0[index] {
                let close_date = if close <= open {
                    date.tomorrow().ok()
                } else {
                    Some(date)
                };
                let start = local_ms(zone, date, *open);
                let end = close_date.and_then(|d| local_ms(zone, d, *close));
                if let (Some(start), Some(end)) = (start, end) {
                    intervals.push((start, end));
                }
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        intervals
    }
}

/// The instant of a local date and time. A time skipped by DST moves forward by the gap's length
/// (02:30 on the spring day is 03:30); a repeated one takes its first occurrence.
fn local_ms(zone: &TimeZone, date: Date, time: Time) -> Option<i64> {
    let zoned = date.to_datetime(time).to_zoned(zone.clone()).ok()?;
    Some(zoned.timestamp().as_millisecond())
}

/// How the site counts its day.
#[derive(Clone, Debug)]
pub struct TallyRules {
    /// The site's time zone.
    pub zone: TimeZone,
    /// Its name, for the snapshot.
    pub zone_name: String,
    /// When the tally day starts (local time).
    pub day_start: Time,
    /// Opening hours, if configured (otherwise the whole day counts).
    pub opening_hours: Option<OpeningHours>,
}

impl TallyRules {
    /// Midnight-to-midnight days without opening hours.
    pub fn new(zone: TimeZone, zone_name: &str) -> TallyRules {
        TallyRules {
            zone,
            zone_name: zone_name.to_string(),
            day_start: Time::midnight(),
            opening_hours: None,
        }
    }

    /// Start and end (UTC ms) of the tally day that starts on local `date`.
    fn bounds_of_date(&self, date: Date) -> Option<(i64, i64)> {
        let start = local_ms(&self.zone, date, self.day_start)?;
        let end = local_ms(&self.zone, date.tomorrow().ok()?, self.day_start)?;
        Some((start, end))
    }

    /// The local date of an instant.
    fn date_of(&self, ms: i64) -> Date {
        Timestamp::from_millisecond(ms)
            .map(|t| t.to_zoned(self.zone.clone()).date())
            .unwrap_or_default()
    }

    /// Start and end (UTC ms) of the tally day on the same weekday a week before the one
    /// holding `now_ms`.
    pub fn last_week_bounds(&self, now_ms: i64) -> (i64, i64) {
        let (start, end) = self.day_bounds(now_ms);
        self.date_of(start)
            .checked_sub(jiff::Span::new().days(7))
            .ok()
            .and_then(|date| self.bounds_of_date(date))
            .unwrap_or((start - 7 * 86_400_000, end - 7 * 86_400_000))
    }

    /// Start and end (UTC ms) of the tally day holding `now_ms`.
    pub fn day_bounds(&self, now_ms: i64) -> (i64, i64) {
        let now = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        let today = now.to_zoned(self.zone.clone()).date();
        let start_of = |date: Date| local_ms(&self.zone, date, self.day_start);
        let (Some(start_today), Some(start_yesterday), Some(start_tomorrow)) = (
            start_of(today),
            today.yesterday().ok().and_then(start_of),
            today.tomorrow().ok().and_then(start_of),
        ) else {
            return (now_ms - 86_400_000, now_ms + 1);
        };
        if now_ms >= start_today {
            (start_today, start_tomorrow)
        } else {
            (start_yesterday, start_today)
        }
    }
}

/// The minute counts of every terminal, and its quarter-hour counts for the hours of today and
/// of a week before.
#[derive(Clone, Debug)]
pub struct Tallies {
    rules: TallyRules,
    minutes: BTreeMap<TerminalId, BTreeMap<u32, MinuteTally>>,
    /// Counted presses per UTC quarter-hour since the epoch. Every time zone's offset is a
    /// multiple of 15 minutes, so each local hour is four whole quarters.
    quarters: BTreeMap<TerminalId, BTreeMap<u32, [u32; 4]>>,
}

impl Tallies {
    /// Empty tallies listing `terminals` (with zero counts until they vote).
    pub fn new(rules: TallyRules, terminals: &[TerminalId]) -> Tallies {
        Tallies {
            rules,
            minutes: terminals
                .iter()
                .map(|t| (t.clone(), BTreeMap::new()))
                .collect(),
            quarters: BTreeMap::new(),
        }
    }

    /// Adds minute counts (from the journal, after a restart).
    pub fn load(&mut self, counts: &[(u32, TerminalId, MinuteTally)]) {
        for (minute, terminal, tally) in counts {
            let slot = self
                .minutes
                .entry(terminal.clone())
                .or_default()
                .entry(*minute)
                .or_default();
            for (count, add) in slot.counted.iter_mut().zip(tally.counted) {
                *count += add;
            }
            slot.filtered += tally.filtered;
            self.add_to_quarter(terminal, minute / 15, &tally.counted);
        }
    }

    /// Adds quarter-hour counts (from the journal, after a restart): the minutes the journal
    /// rolled up, which are not among its minute counts.
    pub fn load_quarters(&mut self, counts: &[(u32, TerminalId, MinuteTally)]) {
        for (quarter, terminal, tally) in counts {
            self.minutes.entry(terminal.clone()).or_default();
            self.add_to_quarter(terminal, *quarter, &tally.counted);
        }
    }

    fn add_to_quarter(&mut self, terminal: &TerminalId, quarter: u32, counted: &[u32; 4]) {
        let slot = self
            .quarters
            .entry(terminal.clone())
            .or_default()
            .entry(quarter)
            .or_default();
        for (count, add) in slot.iter_mut().zip(counted) {
            *count += add;
        }
    }

    /// Adds one accepted vote.
    pub fn add(&mut self, vote: &Vote) {
        let minute = minute_of(vote.ts_ms);
        self.minutes
            .entry(vote.terminal.clone())
            .or_default()
            .entry(minute)
            .or_default()
            .add(vote);
        if !vote.filtered {
            let quarter = self
                .quarters
                .entry(vote.terminal.clone())
                .or_default()
                .entry(minute / 15)
                .or_default();
            quarter[vote.button.index()] += 1;
        }
    }

    /// The first UTC minute whose quarter-hour counts the tallies need at `now_ms`: the
    /// journal's quarters from there on rebuild them.
    pub fn quarters_needed_from(&self, now_ms: i64) -> u32 {
        let (last_week_start, _) = self.rules.last_week_bounds(now_ms);
        minute_index(last_week_start) / 15 * 15
    }

    /// Forgets minutes before the previous tally day and quarters before last week's (they can
    /// no longer be in any window).
    pub fn prune(&mut self, now_ms: i64) {
        let (day_start, _) = self.rules.day_bounds(now_ms);
        let horizon = minute_index(day_start - 26 * 3_600_000);
        for minutes in self.minutes.values_mut() {
            *minutes = minutes.split_off(&horizon);
        }
        let quarter_horizon = self.quarters_needed_from(now_ms) / 15;
        for quarters in self.quarters.values_mut() {
            *quarters = quarters.split_off(&quarter_horizon);
        }
    }

    /// Counted presses of `terminal` (of the site, for `None`) in the last `minutes` minutes
    /// at `now_ms`: the current minute and the `minutes - 1` before it.
    pub fn counts_in_last(
        &self,
        terminal: Option<&TerminalId>,
        minutes: u32,
        now_ms: i64,
    ) -> Counts {
        let now_minute = minute_index(now_ms);
        let from = now_minute.saturating_sub(minutes.saturating_sub(1));
        let mut counts = Counts::default();
        let mut add = |minutes: &BTreeMap<u32, MinuteTally>| {
            for (_, tally) in minutes.range(from..=now_minute) {
                counts.add_tally(tally);
            }
        };
        match terminal {
            Some(terminal) => {
                if let Some(minutes) = self.minutes.get(terminal) {
                    add(minutes);
                }
            }
            None => self.minutes.values().for_each(add),
        }
        counts
    }

    /// The windows at `now_ms`.
    pub fn snapshot(&self, now_ms: i64) -> TalliesSnapshot {
        let (day_start, day_end) = self.rules.day_bounds(now_ms);
        let now_minute = minute_index(now_ms);
        let first_today = minute_index(day_start + MS_PER_MINUTE - 1);
        let last_today = minute_index(day_end - 1).min(now_minute);
        let open = self.open_intervals(day_start, day_end);
        let inside = |minute: u32| -> bool {
            match &open {
                None => true,
                Some(intervals) => {
                    let at = i64::from(minute) * MS_PER_MINUTE;
                    intervals
                        .iter()
                        .any(|(start, end)| at >= *start && at < *end)
                }
            }
        };
        let today = HourBuckets::new(day_start, day_end);
        let (week_start, week_end) = self.rules.last_week_bounds(now_ms);
        let last_week = HourBuckets::new(week_start, week_end);
        let mut site = Windows {
            hours: vec![[0; 4]; today.len()],
            hours_last_week: vec![[0; 4]; last_week.len()],
            ..Windows::default()
        };
        let mut terminals = BTreeMap::new();
        let no_quarters = BTreeMap::new();
        for (terminal, minutes) in &self.minutes {
            let quarters = self.quarters.get(terminal).unwrap_or(&no_quarters);
            let mut windows = Windows {
                hours: today.count(quarters),
                hours_last_week: last_week.count(quarters),
                ..Windows::default()
            };
            let from = first_today.min(now_minute.saturating_sub(59));
            for (minute, tally) in minutes.range(from..=now_minute) {
                if (first_today..=last_today).contains(minute) {
                    if inside(*minute) {
                        windows.today.add_tally(tally);
                    } else {
                        windows.today_outside_hours.add_tally(tally);
                    }
                    windows.filtered_today += u64::from(tally.filtered);
                }
                if *minute + 60 > now_minute {
                    windows.last_60m.add_tally(tally);
                }
                if *minute + 15 > now_minute {
                    windows.last_15m.add_tally(tally);
                }
            }
            site.add(&windows);
            terminals.insert(terminal.clone(), windows);
        }
        TalliesSnapshot {
            generated_at: rfc3339_utc(now_ms),
            time_zone: self.rules.zone_name.clone(),
            day_start: Timestamp::from_millisecond(day_start)
                .map(|t| {
                    t.to_zoned(self.rules.zone.clone())
                        .strftime("%Y-%m-%dT%H:%M:%S%:z")
                        .to_string()
                })
                .unwrap_or_default(),
            hour_axes: HourAxes {
                today: self.hour_axis(&today, open.as_deref()),
                last_week: self.hour_axis(
                    &last_week,
                    self.open_intervals(week_start, week_end).as_deref(),
                ),
            },
            site,
            terminals,
        }
    }

    fn hour_axis(&self, buckets: &HourBuckets, open: Option<&[(i64, i64)]>) -> HourAxis {
        let local = |ms: i64| {
            Timestamp::from_millisecond(ms)
                .map(|t| t.to_zoned(self.rules.zone.clone()))
                .ok()
        };
        let starts = buckets.starts();
        HourAxis {
            date: local(buckets.day_start)
                .map(|z| z.date().to_string())
                .unwrap_or_default(),
            starts: starts
                .iter()
                .map(|start| {
                    local(*start)
                        .map(|z| z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
                        .unwrap_or_default()
                })
                .collect(),
            open: starts
                .iter()
                .map(|start| {
                    let end = start + MS_PER_HOUR;
                    open.is_none_or(|intervals| {
                        intervals
                            .iter()
                            .any(|(from, to)| *from < end && *to > *start)
                    })
                })
                .collect(),
        }
    }

    fn open_intervals(&self, day_start: i64, day_end: i64) -> Option<Vec<(i64, i64)>> {
        let hours = self.rules.opening_hours.as_ref()?;
        let date_of = |ms: i64| {
            Timestamp::from_millisecond(ms)
                .map(|t| t.to_zoned(self.rules.zone.clone()).date())
                .unwrap_or_default()
        };
        let first = date_of(day_start).yesterday().unwrap_or_default();
        let last = date_of(day_end);
        Some(hours.intervals(&self.rules.zone, first, last))
    }
}

const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_QUARTER: i64 = 900_000;

/// A tally day cut into real hours from its start rounded down to the quarter-hour (so that a
/// day starting at 04:10 counts 04:00–05:00 as its first hour).
struct HourBuckets {
    day_start: i64,
    first_quarter: u32,
    end_quarter: u32,
    hours: usize,
}

impl HourBuckets {
    fn new(day_start: i64, day_end: i64) -> HourBuckets {
        let first_quarter = quarter_index(day_start);
        let end_quarter = quarter_index(day_end + MS_PER_QUARTER - 1);
        let quarters = end_quarter.saturating_sub(first_quarter) as usize;
        HourBuckets {
            day_start,
            first_quarter,
            end_quarter,
            hours: quarters.div_ceil(4),
        }
    }

    fn len(&self) -> usize {
        self.hours
    }

    /// Each hour's start (UTC ms).
    fn starts(&self) -> Vec<i64> {
        let first = i64::from(self.first_quarter) * MS_PER_QUARTER;
        (0..self.hours)
            .map(|hour| first + hour as i64 * MS_PER_HOUR)
            .collect()
    }

    /// One terminal's counted presses per hour.
    fn count(&self, quarters: &BTreeMap<u32, [u32; 4]>) -> Vec<HourCounts> {
        let mut hours = vec![[0; 4]; self.hours];
        for (quarter, counted) in quarters.range(self.first_quarter..self.end_quarter) {
            let hour = ((quarter - self.first_quarter) / 4) as usize;
            if let Some(slot) = hours.get_mut(hour) {
                for (count, add) in slot.iter_mut().zip(counted) {
                    *count += u64::from(*add);
                }
            }
        }
        hours
    }
}

fn quarter_index(ms: i64) -> u32 {
    u32::try_from(ms.max(0) / MS_PER_QUARTER).unwrap_or(u32::MAX)
}

fn minute_index(ms: i64) -> u32 {
    u32::try_from(ms.max(0) / MS_PER_MINUTE).unwrap_or(u32::MAX)
}

/// `2026-11-22T14:03:00.123Z`.
pub fn rfc3339_utc(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Parses `08:00` (or `08:00:30`).
pub fn parse_time(text: &str) -> Option<Time> {
    let mut parts = text.trim().split(':');
    let hour: i8 = parts.next()?.parse().ok()?;
    let minute: i8 = parts.next()?.parse().ok()?;
    let second: i8 = match parts.next() {
        Some(s) => s.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    Time::new(hour, minute, second, 0).ok()
}

/// The weekday names config files use, Monday first.
pub const WEEKDAYS: [(&str, Weekday); 7] = [
    ("monday", Weekday::Monday),
    ("tuesday", Weekday::Tuesday),
    ("wednesday", Weekday::Wednesday),
    ("thursday", Weekday::Thursday),
    ("friday", Weekday::Friday),
    ("saturday", Weekday::Saturday),
    ("sunday", Weekday::Sunday),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BootId, Button};

    fn berlin() -> TallyRules {
        TallyRules::new(
            TimeZone::get("Europe/Berlin").expect("tzdb"),
            "Europe/Berlin",
        )
    }

    fn ms(local: &str) -> i64 {
        let dt: jiff::civil::DateTime = local.parse().expect("datetime");
        dt.to_zoned(TimeZone::get("Europe/Berlin").expect("tz"))
            .expect("zoned")
            .timestamp()
            .as_millisecond()
    }

    fn vote(terminal: &str, button: u8, ts_ms: i64, filtered: bool) -> Vote {
        Vote {
            seq: 1,
            terminal: TerminalId::new(terminal).expect("id"),
            button: Button::try_from(button).expect("button"),
            ts_ms: ts_ms as u64,
            clock_synced: true,
            filtered,
            term_seq: None,
            boot_id: BootId::default(),
            mono_ms: 0,
        }
    }

    fn tallies(rules: TallyRules, votes: &[Vote]) -> Tallies {
        let mut tallies = Tallies::new(rules, &[]);
        for v in votes {
            tallies.add(v);
        }
        tallies
    }

    #[test]
    fn scores_follow_the_contract() {
        let counts = Counts([1, 1, 1, 1]);
        assert_eq!(counts.positive_pct(), Some(50.0));
        assert_eq!(counts.happy_index(), Some(50.0));
        let counts = Counts([0, 0, 0, 3]);
        assert_eq!(counts.happy_index(), Some(100.0));
        let counts = Counts([2, 0, 1, 0]);
        assert!((counts.happy_index().unwrap_or_default() - 200.0 / 9.0).abs() < 1e-9);
        assert!((counts.positive_pct().unwrap_or_default() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(Counts::default().positive_pct(), None);
        assert_eq!(Counts::default().happy_index(), None);
    }

    #[test]
    fn today_starts_at_local_midnight() {
        let t = tallies(
            berlin(),
            &[
                vote("a", 4, ms("2026-11-21T23:59:30"), false),
                vote("a", 1, ms("2026-11-22T00:00:10"), false),
            ],
        );
        let snap = t.snapshot(ms("2026-11-22T00:05:00"));
        assert_eq!(snap.site.today, Counts([1, 0, 0, 0]));
        assert_eq!(snap.day_start, "2026-11-22T00:00:00+01:00");
        // The last 60 minutes reach back over midnight.
        assert_eq!(snap.site.last_60m, Counts([1, 0, 0, 1]));
    }

    #[test]
    fn a_configured_day_start_keeps_the_night_in_the_previous_day() {
        let mut rules = berlin();
        rules.day_start = Time::new(4, 0, 0, 0).expect("time");
        let t = tallies(
            rules,
            &[
                vote("a", 3, ms("2026-11-21T22:00:00"), false),
                vote("a", 2, ms("2026-11-22T03:30:00"), false),
            ],
        );
        let at_3am = t.snapshot(ms("2026-11-22T03:45:00"));
        assert_eq!(at_3am.day_start, "2026-11-21T04:00:00+01:00");
        assert_eq!(at_3am.site.today.total(), 2);
        let at_5am = t.snapshot(ms("2026-11-22T05:00:00"));
        assert_eq!(at_5am.site.today.total(), 0);
    }

    #[test]
    fn the_spring_dst_day_has_23_hours() {
        let rules = berlin();
        let (start, end) = rules.day_bounds(ms("2026-03-29T12:00:00"));
        assert_eq!(end - start, 23 * 3_600_000);
        // 01:59 and 03:00 are one real minute apart and both today.
        let t = tallies(
            rules,
            &[
                vote("a", 4, ms("2026-03-29T01:59:00"), false),
                vote("a", 4, ms("2026-03-29T03:00:00"), false),
            ],
        );
        let snap = t.snapshot(ms("2026-03-29T03:01:00"));
        assert_eq!(snap.site.today.total(), 2);
        assert_eq!(snap.site.last_15m.total(), 2, "one real minute apart");
    }

    #[test]
    fn the_autumn_dst_day_has_25_hours_and_counts_the_repeated_hour_twice() {
        let rules = berlin();
        let (start, end) = rules.day_bounds(ms("2026-10-25T12:00:00"));
        assert_eq!(end - start, 25 * 3_600_000);
        // 02:30 happens twice; the second is an hour after the first.
        let first = ms("2026-10-25T02:30:00");
        let second = first + 3_600_000;
        let t = tallies(
            rules,
            &[vote("a", 2, first, false), vote("a", 3, second, false)],
        );
        let snap = t.snapshot(second + 60_000);
        assert_eq!(snap.site.today, Counts([0, 1, 1, 0]));
        assert_eq!(snap.site.last_60m, Counts([0, 0, 1, 0]));
    }

    #[test]
    fn a_day_start_in_the_skipped_hour_moves_to_just_after_it() {
        let mut rules = berlin();
        rules.day_start = Time::new(2, 30, 0, 0).expect("time");
        let (start, _) = rules.day_bounds(ms("2026-03-29T12:00:00"));
        assert_eq!(start, ms("2026-03-29T03:30:00"));
    }

    #[test]
    fn presses_outside_opening_hours_are_counted_apart() {
        let mut rules = berlin();
        let nine_to_six = vec![(
            Time::new(9, 0, 0, 0).expect("t"),
            Time::new(18, 0, 0, 0).expect("t"),
        )];
        let mut week: [Vec<(Time, Time)>; 7] = Default::default();
        week[6] = nine_to_six; // 2026-11-22 is a Sunday
        rules.opening_hours = Some(OpeningHours(week));
        let t = tallies(
            rules,
            &[
                vote("a", 1, ms("2026-11-22T08:59:00"), false),
                vote("a", 4, ms("2026-11-22T09:00:00"), false),
                vote("a", 3, ms("2026-11-22T17:59:59"), false),
                vote("a", 1, ms("2026-11-22T18:00:00"), false),
            ],
        );
        let snap = t.snapshot(ms("2026-11-22T20:00:00"));
        assert_eq!(snap.site.today, Counts([0, 0, 1, 1]));
        assert_eq!(snap.site.today_outside_hours, Counts([2, 0, 0, 0]));
        assert_eq!(snap.site.today.positive_pct(), Some(100.0));
    }

    #[test]
    fn opening_hours_may_run_past_midnight() {
        let mut rules = berlin();
        let mut week: [Vec<(Time, Time)>; 7] = Default::default();
        week[5] = vec![(
            Time::new(18, 0, 0, 0).expect("t"),
            Time::new(2, 0, 0, 0).expect("t"),
        )]; // Saturday
        rules.opening_hours = Some(OpeningHours(week));
        let t = tallies(
            rules,
            &[
                vote("a", 4, ms("2026-11-22T01:00:00"), false),
                vote("a", 4, ms("2026-11-22T03:00:00"), false),
            ],
        );
        let snap = t.snapshot(ms("2026-11-22T04:00:00"));
        assert_eq!(
            snap.site.today.total(),
            1,
            "01:00 Sunday is still Saturday's opening"
        );
        assert_eq!(snap.site.today_outside_hours.total(), 1);
    }

    #[test]
    fn filtered_votes_are_never_counted_and_terminals_add_up_to_the_site() {
        let now = ms("2026-11-22T12:00:00");
        let t = tallies(
            berlin(),
            &[
                vote("a", 4, now - 5_000, false),
                vote("a", 4, now - 4_000, true),
                vote("b", 1, now - 20 * 60_000, false),
            ],
        );
        let snap = t.snapshot(now);
        assert_eq!(
            snap.terminals[&TerminalId::new("a").expect("id")].today,
            Counts([0, 0, 0, 1])
        );
        assert_eq!(snap.site.today, Counts([1, 0, 0, 1]));
        assert_eq!(snap.site.filtered_today, 1);
        assert_eq!(snap.site.last_15m, Counts([0, 0, 0, 1]));
        assert_eq!(snap.site.last_60m, Counts([1, 0, 0, 1]));
    }

    fn hour_of(axis: &HourAxis, local_start: &str) -> usize {
        axis.starts
            .iter()
            .position(|start| start == local_start)
            .unwrap_or_else(|| panic!("no hour {local_start} in {:?}", axis.starts))
    }

    #[test]
    fn hours_count_today_per_local_hour_and_mark_opening_hours() {
        let mut rules = berlin();
        let mut week: [Vec<(Time, Time)>; 7] = Default::default();
        week[5] = vec![(
            Time::new(9, 30, 0, 0).expect("t"),
            Time::new(18, 0, 0, 0).expect("t"),
        )]; // Saturday 2026-11-28
        rules.opening_hours = Some(OpeningHours(week));
        let t = tallies(
            rules,
            &[
                vote("a", 1, ms("2026-11-28T08:59:59"), false),
                vote("a", 4, ms("2026-11-28T09:00:00"), false),
                vote("a", 4, ms("2026-11-28T09:59:00"), false),
                vote("a", 4, ms("2026-11-28T09:59:30"), true),
                vote("b", 3, ms("2026-11-28T09:15:00"), false),
            ],
        );
        let snap = t.snapshot(ms("2026-11-28T12:00:00"));
        let axis = &snap.hour_axes.today;
        assert_eq!(axis.date, "2026-11-28");
        assert_eq!(axis.starts.len(), 24);
        assert_eq!(axis.starts[0], "2026-11-28T00:00:00+01:00");
        let nine = hour_of(axis, "2026-11-28T09:00:00+01:00");
        assert_eq!(nine, 9);
        assert!(!axis.open[8] && axis.open[9] && axis.open[17] && !axis.open[18]);
        let a = &snap.terminals[&TerminalId::new("a").expect("id")];
        assert_eq!(a.hours[8], [1, 0, 0, 0]);
        assert_eq!(
            a.hours[9],
            [0, 0, 0, 2],
            "the filtered press is not counted"
        );
        assert_eq!(snap.site.hours[9], [0, 0, 1, 2]);
        assert_eq!(snap.site.hours.iter().flatten().sum::<u64>(), 5 - 1);
        // Presses outside opening hours are in the hours too (08:59, 09:00 and 09:15: the site
        // opens at 09:30; the axis says whether an hour was open at all).
        assert_eq!(snap.site.today_outside_hours.total(), 3);
    }

    #[test]
    fn hours_last_week_are_the_same_weekday_a_week_before() {
        let t = tallies(
            berlin(),
            &[
                vote("a", 2, ms("2026-11-21T10:30:00"), false),
                vote("a", 3, ms("2026-11-21T23:59:00"), false),
                vote("a", 3, ms("2026-11-22T00:00:00"), false),
                vote("a", 4, ms("2026-11-28T10:05:00"), false),
            ],
        );
        let snap = t.snapshot(ms("2026-11-28T11:00:00"));
        assert_eq!(snap.hour_axes.last_week.date, "2026-11-21");
        assert_eq!(
            snap.hour_axes.last_week.starts[0],
            "2026-11-21T00:00:00+01:00"
        );
        let last_week = &snap.site.hours_last_week;
        assert_eq!(last_week.len(), 24);
        assert_eq!(last_week[10], [0, 1, 0, 0]);
        assert_eq!(
            last_week[23],
            [0, 0, 1, 0],
            "the Sunday's first minute is not in it"
        );
        assert_eq!(last_week.iter().flatten().sum::<u64>(), 2);
        assert_eq!(snap.site.hours[10], [0, 0, 0, 1]);
    }

    #[test]
    fn the_spring_day_has_23_hours_and_the_autumn_day_25() {
        let spring = tallies(berlin(), &[vote("a", 4, ms("2026-03-29T03:10:00"), false)]);
        let snap = spring.snapshot(ms("2026-03-29T12:00:00"));
        let axis = &snap.hour_axes.today;
        assert_eq!(axis.starts.len(), 23);
        assert_eq!(axis.starts[1], "2026-03-29T01:00:00+01:00");
        assert_eq!(axis.starts[2], "2026-03-29T03:00:00+02:00");
        assert_eq!(snap.site.hours[2], [0, 0, 0, 1]);
        // A week later, that Sunday (23 hours) is last week's: its axis is its own.
        let week_later = spring.snapshot(ms("2026-04-05T12:00:00"));
        assert_eq!(week_later.hour_axes.last_week.starts.len(), 23);
        assert_eq!(week_later.hour_axes.today.starts.len(), 24);
        assert_eq!(week_later.site.hours_last_week[2], [0, 0, 0, 1]);

        let first = ms("2026-10-25T02:30:00");
        let autumn = tallies(
            berlin(),
            &[
                vote("a", 1, first, false),
                vote("a", 2, first + 3_600_000, false),
            ],
        );
        let snap = autumn.snapshot(ms("2026-10-25T12:00:00"));
        let axis = &snap.hour_axes.today;
        assert_eq!(axis.starts.len(), 25);
        assert_eq!(axis.starts[2], "2026-10-25T02:00:00+02:00");
        assert_eq!(axis.starts[3], "2026-10-25T02:00:00+01:00");
        assert_eq!(snap.site.hours[2], [1, 0, 0, 0]);
        assert_eq!(snap.site.hours[3], [0, 1, 0, 0]);
    }

    #[test]
    fn hours_of_a_day_starting_in_the_skipped_hour_begin_just_after_it() {
        let mut rules = berlin();
        rules.day_start = Time::new(2, 30, 0, 0).expect("time");
        let t = tallies(
            rules,
            &[
                vote("a", 4, ms("2026-03-29T03:29:00"), false),
                vote("a", 3, ms("2026-03-29T03:30:00"), false),
                vote("a", 2, ms("2026-03-30T03:29:00"), false),
            ],
        );
        let snap = t.snapshot(ms("2026-03-29T12:00:00"));
        let axis = &snap.hour_axes.today;
        // 02:30 does not exist that night: the day runs from 03:30 (+02:00) to 02:30 the next
        // morning, 23 hours.
        assert_eq!(axis.starts[0], "2026-03-29T03:30:00+02:00");
        assert_eq!(axis.starts.len(), 23);
        assert_eq!(snap.site.hours[0], [0, 0, 1, 0]);
        assert_eq!(snap.site.hours.iter().flatten().sum::<u64>(), 1);
    }

    #[test]
    fn counts_in_the_last_minutes_match_the_windows() {
        let now = ms("2026-11-28T12:00:30");
        let t = tallies(
            berlin(),
            &[
                vote("a", 1, now - 14 * 60_000, false),
                vote("a", 2, now - 15 * 60_000, false),
                vote("b", 4, now - 1_000, false),
                vote("b", 4, now - 2_000, true),
            ],
        );
        let snap = t.snapshot(now);
        assert_eq!(t.counts_in_last(None, 15, now), snap.site.last_15m);
        assert_eq!(t.counts_in_last(None, 60, now), snap.site.last_60m);
        let a = TerminalId::new("a").expect("id");
        assert_eq!(t.counts_in_last(Some(&a), 15, now), Counts([1, 0, 0, 0]));
        assert_eq!(t.counts_in_last(Some(&a), 16, now), Counts([1, 1, 0, 0]));
        let nobody = TerminalId::new("nobody").expect("id");
        assert_eq!(t.counts_in_last(Some(&nobody), 15, now), Counts::default());
    }

    #[test]
    fn loading_quarters_equals_adding_the_votes() {
        let now = ms("2026-11-28T12:00:00");
        let votes: Vec<Vote> = (0..400)
            .map(|i| vote("a", 1 + (i % 4) as u8, now - i * 1_999_000, i % 9 == 0))
            .collect();
        let added = tallies(berlin(), &votes);
        // As the journal keeps them: recent minutes, and quarters for the rest.
        let cut = minute_of((now - 20 * 3_600_000) as u64);
        let mut minutes: BTreeMap<(u32, TerminalId), MinuteTally> = BTreeMap::new();
        let mut quarters: BTreeMap<(u32, TerminalId), MinuteTally> = BTreeMap::new();
        for v in &votes {
            let minute = minute_of(v.ts_ms);
            let (map, key) = if minute >= cut {
                (&mut minutes, minute)
            } else {
                (&mut quarters, minute / 15)
            };
            map.entry((key, v.terminal.clone())).or_default().add(v);
        }
        let mut loaded = Tallies::new(berlin(), &[]);
        let list = |map: BTreeMap<(u32, TerminalId), MinuteTally>| -> Vec<_> {
            map.into_iter().map(|((m, t), c)| (m, t, c)).collect()
        };
        loaded.load(&list(minutes));
        loaded.load_quarters(&list(quarters));
        let (a, b) = (added.snapshot(now), loaded.snapshot(now));
        assert!(a.site.hours_last_week.iter().flatten().sum::<u64>() > 0);
        assert_eq!(a, b);
    }

    #[test]
    fn loading_minute_counts_equals_adding_the_votes() {
        let now = ms("2026-11-22T12:00:00");
        let votes: Vec<Vote> = (0..50)
            .map(|i| vote("a", 1 + (i % 4) as u8, now - i * 97_000, i % 7 == 0))
            .collect();
        let added = tallies(berlin(), &votes);
        let mut counts: BTreeMap<(u32, TerminalId), MinuteTally> = BTreeMap::new();
        for v in &votes {
            counts
                .entry((minute_of(v.ts_ms), v.terminal.clone()))
                .or_default()
                .add(v);
        }
        let mut loaded = Tallies::new(berlin(), &[]);
        let list: Vec<_> = counts.into_iter().map(|((m, t), c)| (m, t, c)).collect();
        loaded.load(&list);
        assert_eq!(added.snapshot(now), loaded.snapshot(now));
    }
}

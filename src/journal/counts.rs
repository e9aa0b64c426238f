//! The journal's vote counts per terminal and button: by UTC minute for the recent past, by
//! UTC quarter-hour for weeks. Pure: no I/O.
//!
//! The local tallies rebuild from these after a restart (they survive the uplink deleting the
//! votes). "Today" needs minute resolution (opening hours are set to the minute, and a tally day
//! lasts up to 25 hours), so minutes are kept [`MINUTE_RETENTION`] behind the newest minute seen;
//! older minutes are rolled up into quarter-hours, kept [`DAY_RETENTION`] days, from which any
//! local hour can be summed: every time zone in use is offset from UTC by a multiple of 15
//! minutes (India +5:30, Nepal +5:45), so a local hour is always four whole UTC quarters.
//!
//! # Records
//! An hour record holds one terminal's counts per minute in one UTC hour; a day record one
//! terminal's quarter-hour counts in one UTC day. Both are written at checkpoints and carry `through`: the
//! seq below which every vote is in them. Replaying the write-ahead log after a crash adds a vote
//! only to records whose `through` is at or below its seq, so a checkpoint cut short halfway
//! never counts a vote twice. A day record also carries the newest minute rolled up into it; a
//! minute record at or below that mark was rolled up already and is dropped.

use std::collections::{BTreeMap, BTreeSet};

use super::codec::{put_varint, Reader};
use super::record::{self, MinuteTally, RecordError};
use crate::model::{Seq, TerminalId, Vote};

/// Minutes kept at minute resolution behind the newest minute seen: a 25-hour tally day plus
/// margin for clocks set late.
pub const MINUTE_RETENTION: u32 = 28 * 60;
/// Days of quarter-hour counts kept behind the newest day seen (the board compares with the
/// same weekday a week before; five weeks and a day cover any monthly view too).
pub const DAY_RETENTION: u32 = 36;
const MINUTES_PER_DAY: u32 = 24 * 60;
/// Quarter-hours in a UTC day.
pub const QUARTERS: usize = 96;

const HOUR_FORMAT_V1: u8 = 1;
const DAY_FORMAT_V1: u8 = 1;

/// A minute's counts with the replay mark of the hour record holding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    tally: MinuteTally,
    through: Seq,
}

/// One terminal's quarter-hours of one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Day {
    /// Counts per quarter-hour (index = minute of the day / 15).
    pub quarters: BTreeMap<u8, MinuteTally>,
    /// The newest minute rolled up into this record.
    rolled_through: Option<u32>,
    through: Seq,
}

/// A count record to write or delete at the next checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountChange {
    /// Store `value` under `key`.
    Put {
        /// The record's key.
        key: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
    },
    /// Delete `key`.
    Delete {
        /// The record's key.
        key: Vec<u8>,
    },
}

/// All counts, with what changed since the last checkpoint.
#[derive(Debug, Default)]
pub struct Counts {
    minutes: BTreeMap<(u32, TerminalId), Slot>,
    days: BTreeMap<(u32, TerminalId), Day>,
    newest_minute: u32,
    changed_minutes: BTreeSet<(u32, TerminalId)>,
    removed_minutes: BTreeSet<(u32, TerminalId)>,
    changed_days: BTreeSet<(u32, TerminalId)>,
    removed_days: BTreeSet<(u32, TerminalId)>,
}

impl Counts {
    /// No counts.
    pub fn new() -> Counts {
        Counts::default()
    }

    /// Counts an accepted vote.
    pub fn add(&mut self, vote: &Vote) {
        self.add_unless_counted(vote, false);
    }

    /// Counts a vote replayed from the write-ahead log, unless a record already has it.
    pub fn replay(&mut self, vote: &Vote) {
        self.add_unless_counted(vote, true);
    }

    fn add_unless_counted(&mut self, vote: &Vote, replaying: bool) {
        let minute = record::minute_of(vote.ts_ms);
        self.newest_minute = self.newest_minute.max(minute);
        let day_key = (minute / MINUTES_PER_DAY, vote.terminal.clone());
        let rolled_up = self
            .days
            .get(&day_key)
            .and_then(|day| day.rolled_through)
            .is_some_and(|rolled| minute <= rolled);
        if minute >= self.horizon() && !rolled_up {
            let key = (minute, vote.terminal.clone());
            let slot = self.minutes.entry(key.clone()).or_default();
            if replaying && slot.through > vote.seq {
                return;
            }
            slot.tally.add(vote);
            self.removed_minutes.remove(&key);
            self.changed_minutes.insert(key);
        } else {
            let key = day_key;
            let day = self.days.entry(key.clone()).or_default();
            if replaying && day.through > vote.seq {
                return;
            }
            let quarter = quarter_of(minute);
            day.quarters.entry(quarter).or_default().add(vote);
            self.removed_days.remove(&key);
            self.changed_days.insert(key);
        }
        self.roll_up();
    }

    /// The first minute kept at minute resolution.
    fn horizon(&self) -> u32 {
        self.newest_minute.saturating_sub(MINUTE_RETENTION)
    }

    /// Rolls minutes past the horizon into their quarter-hours and forgets days past
    /// [`DAY_RETENTION`].
    fn roll_up(&mut self) {
        let horizon = self.horizon();
        while let Some(entry) = self.minutes.first_entry() {
            if entry.key().0 >= horizon {
                break;
            }
            let ((minute, terminal), slot) = entry.remove_entry();
            let key = (minute / MINUTES_PER_DAY, terminal.clone());
            let day = self.days.entry(key.clone()).or_default();
            day.quarters
                .entry(quarter_of(minute))
                .or_default()
                .merge(&slot.tally);
            day.rolled_through = Some(day.rolled_through.map_or(minute, |m| m.max(minute)));
            self.changed_days.insert(key);
            self.changed_minutes.remove(&(minute, terminal.clone()));
            self.removed_minutes.insert((minute, terminal));
        }
        let oldest_day = (self.newest_minute / MINUTES_PER_DAY).saturating_sub(DAY_RETENTION);
        while let Some(entry) = self.days.first_entry() {
            if entry.key().0 >= oldest_day {
                break;
            }
            let (key, _) = entry.remove_entry();
            self.changed_days.remove(&key);
            self.removed_days.insert(key);
        }
    }

    /// The records changed since the last call; `through` is the seq below which every vote is
    /// counted (the next seq to hand out).
    pub fn take_changes(&mut self, through: Seq) -> Vec<CountChange> {
        let mut changes = Vec::new();
        // Days first: a minute rolled up is deleted only after its day record is written, and
        // the day's mark makes a minute record left behind harmless.
        for key in std::mem::take(&mut self.changed_days) {
            if let Some(day) = self.days.get_mut(&key) {
                day.through = through;
                changes.push(CountChange::Put {
                    key: day_key(key.0, &key.1),
                    value: encode_day(day),
                });
            }
        }
        for key in std::mem::take(&mut self.removed_days) {
            changes.push(CountChange::Delete {
                key: day_key(key.0, &key.1),
            });
        }
        let mut hours: BTreeSet<(u32, TerminalId)> = BTreeSet::new();
        for (minute, terminal) in std::mem::take(&mut self.changed_minutes)
            .into_iter()
            .chain(std::mem::take(&mut self.removed_minutes))
        {
            hours.insert((minute / 60, terminal));
        }
        for (hour, terminal) in hours {
            changes.push(self.hour_record(hour, &terminal, through));
        }
        changes
    }

    /// Every record, for a fresh store; `through` as in [`Counts::take_changes`]. Changes stay
    /// pending until [`Counts::mark_saved`].
    pub fn all_records(&self, through: Seq) -> Vec<CountChange> {
        let days = self.days.iter().map(|(key, day)| CountChange::Put {
            key: day_key(key.0, &key.1),
            value: encode_day(&Day {
                through,
                ..day.clone()
            }),
        });
        let hours: BTreeSet<(u32, TerminalId)> = self
            .minutes
            .keys()
            .map(|(minute, terminal)| (minute / 60, terminal.clone()))
            .collect();
        let minutes = hours.into_iter().map(|(hour, terminal)| {
            let minutes = self.hour_minutes(hour, &terminal);
            CountChange::Put {
                key: hour_key(hour, &terminal),
                value: encode_hour(hour, through, &minutes),
            }
        });
        days.collect::<Vec<_>>()
            .into_iter()
            .chain(minutes)
            .collect()
    }

    /// The minutes of `terminal` in UTC hour `hour`.
    fn hour_minutes(&self, hour: u32, terminal: &TerminalId) -> Vec<(u32, MinuteTally)> {
        self.minutes
            .range((hour * 60, terminal.clone())..((hour + 1) * 60, terminal.clone()))
            .filter(|((_, t), _)| t == terminal)
            .map(|((minute, _), slot)| (*minute, slot.tally))
            .collect()
    }

    /// The record of an hour's minutes, stamping them with `through`; a delete if none is left.
    fn hour_record(&mut self, hour: u32, terminal: &TerminalId, through: Seq) -> CountChange {
        let minutes = self.hour_minutes(hour, terminal);
        if minutes.is_empty() {
            return CountChange::Delete {
                key: hour_key(hour, terminal),
            };
        }
        for (minute, _) in &minutes {
            if let Some(slot) = self.minutes.get_mut(&(*minute, terminal.clone())) {
                slot.through = through;
            }
        }
        CountChange::Put {
            key: hour_key(hour, terminal),
            value: encode_hour(hour, through, &minutes),
        }
    }

    /// Forgets pending changes: a fresh store got [`Counts::all_records`].
    pub fn mark_saved(&mut self) {
        self.changed_minutes.clear();
        self.removed_minutes.clear();
        self.changed_days.clear();
        self.removed_days.clear();
    }

    /// Loads a stored hour record (key and value as stored).
    pub fn load_hour(&mut self, key: &[u8], value: &[u8]) -> Result<(), RecordError> {
        let Some((hour, terminal)) = parse_hour_key(key) else {
            return Ok(());
        };
        let (through, minutes) = decode_hour(hour, value)?;
        for (minute, tally) in minutes {
            self.newest_minute = self.newest_minute.max(minute);
            self.minutes
                .insert((minute, terminal.clone()), Slot { tally, through });
        }
        Ok(())
    }

    /// Loads a stored day record.
    pub fn load_day(&mut self, key: &[u8], value: &[u8]) -> Result<(), RecordError> {
        let Some(key) = parse_day_key(key) else {
            return Ok(());
        };
        let day = decode_day(value)?;
        self.days.insert(key, day);
        Ok(())
    }

    /// Adds counts kept by an older release (legacy minute records), as if counted now.
    pub fn load_legacy_minute(&mut self, minute: u32, terminal: TerminalId, tally: MinuteTally) {
        self.newest_minute = self.newest_minute.max(minute);
        let key = (minute, terminal);
        self.minutes
            .entry(key.clone())
            .or_default()
            .tally
            .merge(&tally);
        self.changed_minutes.insert(key);
    }

    /// After loading: drops minute records already rolled up (a checkpoint cut short), rolls up
    /// what has passed the horizon. The cleanup is written with the next checkpoint.
    pub fn finish_load(&mut self) {
        let stale: Vec<(u32, TerminalId)> = self
            .minutes
            .keys()
            .filter(|(minute, terminal)| {
                self.days
                    .get(&(minute / MINUTES_PER_DAY, terminal.clone()))
                    .and_then(|day| day.rolled_through)
                    .is_some_and(|rolled| *minute <= rolled)
            })
            .cloned()
            .collect();
        for key in stale {
            self.minutes.remove(&key);
            self.removed_minutes.insert(key);
        }
        self.roll_up();
    }

    /// The minute counts, oldest first.
    pub fn minutes(&self) -> impl Iterator<Item = (u32, &TerminalId, &MinuteTally)> {
        self.minutes
            .iter()
            .map(|((minute, terminal), slot)| (*minute, terminal, &slot.tally))
    }

    /// The quarter-hour counts per UTC day, oldest first.
    pub fn days(&self) -> impl Iterator<Item = (u32, &TerminalId, &Day)> {
        self.days
            .iter()
            .map(|((day, terminal), counts)| (*day, terminal, counts))
    }

    /// The quarter-hours starting at or after `from_minute` (UTC minutes since the epoch), as
    /// `(quarter since the epoch, terminal, counts)`, oldest first.
    pub fn quarters_from(&self, from_minute: u32) -> Vec<(u32, TerminalId, MinuteTally)> {
        let first_day = from_minute / MINUTES_PER_DAY;
        let first_quarter = from_minute.div_ceil(15);
        let mut quarters: Vec<(u32, TerminalId, MinuteTally)> = self
            .days
            .iter()
            .filter(|((day, _), _)| *day >= first_day)
            .flat_map(|((day, terminal), counts)| {
                counts.quarters.iter().map(move |(quarter, tally)| {
                    (
                        day * QUARTERS as u32 + u32::from(*quarter),
                        terminal.clone(),
                        *tally,
                    )
                })
            })
            .filter(|(quarter, _, _)| *quarter >= first_quarter)
            .collect();
        quarters.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        quarters
    }

    /// Number of stored records (minutes and days).
    pub fn records(&self) -> usize {
        self.minutes.len() + self.days.len()
    }
}

fn quarter_of(minute: u32) -> u8 {
    ((minute % MINUTES_PER_DAY) / 15) as u8
}

/// Prefix of day-record keys: `q` + UTC day (u32 BE, days since the epoch) + id length + id.
pub const DAY_PREFIX: u8 = b'q';

fn day_key(day: u32, terminal: &TerminalId) -> Vec<u8> {
    let id = terminal.as_str().as_bytes();
    let mut key = Vec::with_capacity(6 + id.len());
    key.push(DAY_PREFIX);
    key.extend_from_slice(&day.to_be_bytes());
    key.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(id);
    key
}

fn parse_day_key(key: &[u8]) -> Option<(u32, TerminalId)> {
    let [DAY_PREFIX, d0, d1, d2, d3, len, id @ ..] = key else {
        return None;
    };
    if id.len() != usize::from(*len) {
        return None;
    }
    let terminal = TerminalId::new(std::str::from_utf8(id).ok()?).ok()?;
    Some((u32::from_be_bytes([*d0, *d1, *d2, *d3]), terminal))
}

fn put_tally(out: &mut Vec<u8>, tally: &MinuteTally) {
    for count in tally.counted {
        put_varint(out, u64::from(count));
    }
    put_varint(out, u64::from(tally.filtered));
}

fn read_tally(reader: &mut Reader<'_>) -> Result<MinuteTally, RecordError> {
    let mut read = || {
        let value = reader.varint()?;
        u32::try_from(value).map_err(|_| RecordError::Corrupt(format!("count {value} too large")))
    };
    Ok(MinuteTally {
        counted: [read()?, read()?, read()?, read()?],
        filtered: read()?,
    })
}

/// Prefix of hour-record keys: `h` + UTC hour (u32 BE, hours since the epoch) + id length + id.
pub const HOUR_PREFIX: u8 = b'h';

fn hour_key(hour: u32, terminal: &TerminalId) -> Vec<u8> {
    let mut key = day_key(hour, terminal);
    key[0] = HOUR_PREFIX;
    key
}

fn parse_hour_key(key: &[u8]) -> Option<(u32, TerminalId)> {
    let (&first, rest) = key.split_first()?;
    if first != HOUR_PREFIX {
        return None;
    }
    let mut as_day = vec![DAY_PREFIX];
    as_day.extend_from_slice(rest);
    parse_day_key(&as_day)
}

/// An hour's minutes: format byte, `through`, the number of minutes, then per minute its index
/// in the hour (u8) and its tally.
fn encode_hour(hour: u32, through: Seq, minutes: &[(u32, MinuteTally)]) -> Vec<u8> {
    let mut out = vec![HOUR_FORMAT_V1];
    put_varint(&mut out, through);
    put_varint(&mut out, minutes.len() as u64);
    for (minute, tally) in minutes {
        out.push((minute - hour * 60) as u8);
        put_tally(&mut out, tally);
    }
    out
}

fn decode_hour(hour: u32, value: &[u8]) -> Result<(Seq, Vec<(u32, MinuteTally)>), RecordError> {
    let mut reader = Reader::new(value);
    match reader.byte()? {
        HOUR_FORMAT_V1 => {}
        version => return Err(RecordError::UnknownVersion(version)),
    }
    let through = reader.varint()?;
    let count = reader.count(60)?;
    let mut minutes = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = reader.byte()?;
        if offset >= 60 {
            return Err(RecordError::Corrupt(format!("minute {offset} of an hour")));
        }
        minutes.push((hour * 60 + u32::from(offset), read_tally(&mut reader)?));
    }
    if !reader.is_empty() {
        return Err(RecordError::Corrupt("bytes after an hour record".into()));
    }
    Ok((through, minutes))
}

fn encode_day(day: &Day) -> Vec<u8> {
    let mut out = vec![DAY_FORMAT_V1];
    put_varint(&mut out, day.through);
    // 0 = nothing rolled up; otherwise the minute + 1.
    put_varint(&mut out, day.rolled_through.map_or(0, |m| u64::from(m) + 1));
    put_varint(&mut out, day.quarters.len() as u64);
    for (quarter, tally) in &day.quarters {
        out.push(*quarter);
        put_tally(&mut out, tally);
    }
    out
}

fn decode_day(value: &[u8]) -> Result<Day, RecordError> {
    let mut reader = Reader::new(value);
    match reader.byte()? {
        DAY_FORMAT_V1 => {}
        version => return Err(RecordError::UnknownVersion(version)),
    }
    let through = reader.varint()?;
    let rolled_through = match reader.varint()? {
        0 => None,
        m => Some(
            u32::try_from(m - 1).map_err(|_| RecordError::Corrupt("minute too large".into()))?,
        ),
    };
    let count = reader.count(QUARTERS)?;
    let mut quarters = BTreeMap::new();
    for _ in 0..count {
        let quarter = reader.byte()?;
        if usize::from(quarter) >= QUARTERS {
            return Err(RecordError::Corrupt(format!("quarter {quarter}")));
        }
        quarters.insert(quarter, read_tally(&mut reader)?);
    }
    if !reader.is_empty() {
        return Err(RecordError::Corrupt("bytes after a day record".into()));
    }
    Ok(Day {
        quarters,
        rolled_through,
        through,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BootId, Button};

    const T0: u64 = 1_795_000_000_000;

    fn vote(seq: Seq, terminal: &str, minute_offset: i64, button: u8) -> Vote {
        Vote {
            seq,
            terminal: TerminalId::new(terminal).expect("valid"),
            button: Button::ALL[usize::from(button - 1)],
            ts_ms: (T0 as i64 + minute_offset * 60_000) as u64,
            clock_synced: true,
            filtered: false,
            term_seq: None,
            boot_id: BootId([1; 16]),
            mono_ms: 0,
        }
    }

    /// Sum of all counts, minutes and quarters, per terminal.
    fn totals(counts: &Counts) -> BTreeMap<String, u32> {
        let mut totals = BTreeMap::new();
        for (_, terminal, tally) in counts.minutes() {
            *totals.entry(terminal.to_string()).or_default() += tally.counted.iter().sum::<u32>();
        }
        for (_, terminal, day) in counts.days() {
            for tally in day.quarters.values() {
                *totals.entry(terminal.to_string()).or_default() +=
                    tally.counted.iter().sum::<u32>();
            }
        }
        totals
    }

    /// The store: records by key.
    #[derive(Default)]
    struct Store(BTreeMap<Vec<u8>, Vec<u8>>);

    impl Store {
        fn apply(&mut self, changes: Vec<CountChange>) {
            for change in changes {
                match change {
                    CountChange::Put { key, value } => {
                        self.0.insert(key, value);
                    }
                    CountChange::Delete { key } => {
                        self.0.remove(&key);
                    }
                }
            }
        }

        fn load(&self) -> Counts {
            let mut counts = Counts::new();
            for (key, value) in &self.0 {
                match key[0] {
                    HOUR_PREFIX => counts.load_hour(key, value).expect("hour"),
                    DAY_PREFIX => counts.load_day(key, value).expect("day"),
                    _ => unreachable!(),
                }
            }
            counts.finish_load();
            counts
        }
    }

    #[test]
    fn quarters_from_a_minute_are_the_rolled_up_counts_from_there_on() {
        let mut counts = Counts::new();
        let day = i64::from(MINUTES_PER_DAY);
        counts.add(&vote(1, "a", 0, 4));
        counts.add(&vote(2, "b", 3 * day, 1));
        counts.add(&vote(3, "a", 3 * day + 20, 2));
        counts.add(&vote(4, "a", 8 * day, 3));
        let minute0 = record::minute_of(T0);
        let all = counts.quarters_from(0);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0].0, minute0 / 15);
        assert_eq!(all[0].2.counted, [0, 0, 0, 1]);
        let later = counts.quarters_from(minute0 + 1);
        let seen: Vec<(u32, &str)> = later.iter().map(|(q, t, _)| (*q, t.as_str())).collect();
        let third_day = (minute0 + 3 * MINUTES_PER_DAY) / 15;
        let twenty_past = (minute0 + 3 * MINUTES_PER_DAY + 20) / 15;
        let mut expected = vec![(third_day, "b"), (twenty_past, "a")];
        expected.sort();
        assert_eq!(
            seen, expected,
            "oldest first; the newest vote is still a minute"
        );
        assert_eq!(counts.minutes().count(), 1);
    }

    #[test]
    fn minutes_roll_up_into_quarters_and_days_expire() {
        let mut counts = Counts::new();
        counts.add(&vote(1, "a", 0, 4));
        counts.add(&vote(2, "a", 7, 1));
        counts.add(&vote(3, "b", 16, 3));
        assert_eq!(counts.minutes().count(), 3);
        // A vote past the retention rolls the first two into their quarter-hour.
        counts.add(&vote(4, "a", i64::from(MINUTE_RETENTION) + 10, 2));
        let minute0 = record::minute_of(T0);
        let day = counts
            .days()
            .find(|(d, t, _)| *d == minute0 / MINUTES_PER_DAY && t.as_str() == "a")
            .expect("day record")
            .2;
        let quarter = day.quarters[&quarter_of(minute0)];
        if quarter_of(minute0) == quarter_of(minute0 + 7) {
            assert_eq!(quarter.counted, [1, 0, 0, 1]);
        }
        assert_eq!(totals(&counts)["a"], 3);
        // b's vote 16 minutes in is still inside the retention.
        assert_eq!(counts.minutes().count(), 2);
        // A vote stamped before the horizon goes straight to its quarter.
        counts.add(&vote(5, "a", 5, 3));
        assert_eq!(totals(&counts)["a"], 4);
        assert_eq!(counts.minutes().count(), 2);
        // Forty days later, the old days are gone.
        counts.add(&vote(6, "a", 40 * 1440, 3));
        assert_eq!(totals(&counts)["a"], 1);
    }

    #[test]
    fn checkpoints_restore_the_same_counts_and_replay_never_counts_twice() {
        let mut counts = Counts::new();
        let mut store = Store::default();
        let mut seq = 0;
        let mut minute = 0i64;
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..400 {
            let mut since_checkpoint = Vec::new();
            for _ in 0..rng.usize(1..30) {
                seq += 1;
                minute += rng.i64(0..30);
                let v = vote(seq, ["a", "b"][rng.usize(0..2)], minute, rng.u8(1..=4));
                counts.add(&v);
                since_checkpoint.push(v);
            }
            // A crash before the checkpoint: the store plus a replay of the log is the same.
            let mut replayed = store.load();
            for v in &since_checkpoint {
                replayed.replay(v);
            }
            assert_eq!(totals(&replayed), totals(&counts));
            let changes = counts.take_changes(seq + 1);
            // A checkpoint cut short: half its records written, then the log replayed.
            let mut half = Store(store.0.clone());
            let cut = rng.usize(0..=changes.len());
            half.apply(changes[..cut].to_vec());
            let mut replayed = half.load();
            for v in &since_checkpoint {
                replayed.replay(v);
            }
            assert_eq!(totals(&replayed), totals(&counts), "cut at {cut}");
            store.apply(changes);
            assert_eq!(totals(&store.load()), totals(&counts));
        }
        assert!(counts.days().count() > 0, "nothing was rolled up");
    }

    #[test]
    fn corrupt_records_are_errors() {
        assert!(decode_hour(5, &[]).is_err());
        assert_eq!(decode_hour(5, &[9]), Err(RecordError::UnknownVersion(9)));
        assert!(decode_hour(5, &[HOUR_FORMAT_V1, 0, 1, 60, 0, 0, 0, 0, 0]).is_err());
        let minutes = vec![(
            301,
            MinuteTally {
                counted: [1, 2, 3, 4],
                filtered: 5,
            },
        )];
        assert_eq!(
            decode_hour(5, &encode_hour(5, 77, &minutes)),
            Ok((77, minutes))
        );
        assert!(decode_day(&[DAY_FORMAT_V1, 0, 0, 1, 200, 0, 0, 0, 0, 0]).is_err());
        let day = Day {
            quarters: BTreeMap::from([(3, MinuteTally::default())]),
            rolled_through: Some(5),
            through: 9,
        };
        assert_eq!(decode_day(&encode_day(&day)), Ok(day));
    }
}

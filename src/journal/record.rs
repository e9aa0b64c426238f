//! How the journal lays out its keys and encodes its values. Pure: no I/O.
//!
//! Every value starts with a format version byte, so that a future release can read (or at
//! least recognise) what an older one wrote: postcard has no schema, and a changed struct would
//! otherwise silently change the stored bytes.

use serde::{Deserialize, Serialize};

use crate::model::{BootId, Button, Seq, TermSeq, TerminalId, Vote};

/// Prefix of vote keys: `v` + seq (u64 big-endian), so key order is seq order (FIFO).
pub const VOTE_PREFIX: u8 = b'v';
/// Prefix of dedup keys: `d` + id length (u8) + terminal id + term_seq (u64 big-endian).
pub const DEDUP_PREFIX: u8 = b'd';
/// The single metadata key.
pub const META_KEY: &[u8] = b"m";
/// Prefix of minute-count keys: `c` + UTC minute (u32 big-endian) + id length (u8) + terminal id.
pub const MINUTE_PREFIX: u8 = b'c';
const MINUTE_FORMAT_V1: u8 = 1;

const VOTE_FORMAT_V1: u8 = 1;
const META_FORMAT_V1: u8 = 1;

/// What each buffered vote is charged against `max-disk-size`, beyond its key and value bytes:
/// sled's per-entry index overhead and log framing, plus slack for its segment garbage
/// collection. Calibrated by `benches/journal.rs` (see BENCHMARKS.md) so that the files on disk
/// stay below the configured size.
pub const PER_VOTE_OVERHEAD: u64 = 170;

/// A stored record that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The value's format version is not one this build knows.
    #[error("record format version {0} is unknown to this build (written by a newer votegate?)")]
    UnknownVersion(u8),
    /// The bytes do not decode.
    #[error("record is corrupt: {0}")]
    Corrupt(String),
}

/// The key of vote `seq`.
pub fn vote_key(seq: Seq) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = VOTE_PREFIX;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The seq in a vote key.
pub fn seq_of_vote_key(key: &[u8]) -> Option<Seq> {
    match key {
        [VOTE_PREFIX, rest @ ..] => Some(Seq::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The dedup key of `(terminal, term_seq)`.
pub fn dedup_key(terminal: &TerminalId, term_seq: TermSeq) -> Vec<u8> {
    let id = terminal.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + id.len() + 8);
    key.push(DEDUP_PREFIX);
    // Ids are at most 64 bytes (model::MAX_ID_LEN), so the length fits in a byte.
    key.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(id);
    key.extend_from_slice(&term_seq.to_be_bytes());
    key
}

/// The `(terminal, term_seq)` in a dedup key.
pub fn parse_dedup_key(key: &[u8]) -> Option<(TerminalId, TermSeq)> {
    let [DEDUP_PREFIX, len, rest @ ..] = key else {
        return None;
    };
    let len = usize::from(*len);
    if rest.len() != len + 8 {
        return None;
    }
    let terminal = TerminalId::new(std::str::from_utf8(&rest[..len]).ok()?).ok()?;
    let term_seq = TermSeq::from_be_bytes(rest[len..].try_into().ok()?);
    Some((terminal, term_seq))
}

/// The value stored under a dedup key: the seq the vote got.
pub fn encode_seq(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Reads a value written by [`encode_seq`].
pub fn decode_seq(value: &[u8]) -> Option<Seq> {
    Some(Seq::from_be_bytes(value.try_into().ok()?))
}

/// The key of the counts of `terminal` in UTC minute `minute` (minutes since the Unix epoch).
pub fn minute_key(minute: u32, terminal: &TerminalId) -> Vec<u8> {
    let id = terminal.as_str().as_bytes();
    let mut key = Vec::with_capacity(6 + id.len());
    key.push(MINUTE_PREFIX);
    key.extend_from_slice(&minute.to_be_bytes());
    key.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(id);
    key
}

/// The `(minute, terminal)` in a minute-count key.
pub fn parse_minute_key(key: &[u8]) -> Option<(u32, TerminalId)> {
    let [MINUTE_PREFIX, m0, m1, m2, m3, len, id @ ..] = key else {
        return None;
    };
    if id.len() != usize::from(*len) {
        return None;
    }
    let terminal = TerminalId::new(std::str::from_utf8(id).ok()?).ok()?;
    Some((u32::from_be_bytes([*m0, *m1, *m2, *m3]), terminal))
}

/// Votes of one terminal in one minute: counted ones per button, and filtered ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteTally {
    /// Counted (not filtered) votes per button, index 0 = button 1.
    pub counted: [u32; 4],
    /// Votes the anti-abuse filter marked.
    pub filtered: u32,
}

impl MinuteTally {
    /// Encodes the counts.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![MINUTE_FORMAT_V1];
        bytes.extend(postcard::to_stdvec(self).unwrap_or_default());
        bytes
    }

    /// Decodes the counts.
    pub fn decode(value: &[u8]) -> Result<MinuteTally, RecordError> {
        match value.split_first() {
            Some((&MINUTE_FORMAT_V1, body)) => {
                postcard::from_bytes(body).map_err(|err| RecordError::Corrupt(err.to_string()))
            }
            Some((&version, _)) => Err(RecordError::UnknownVersion(version)),
            None => Err(RecordError::Corrupt("empty minute record".to_string())),
        }
    }

    /// Adds one vote.
    pub fn add(&mut self, vote: &Vote) {
        if vote.filtered {
            self.filtered += 1;
        } else {
            self.counted[vote.button.index()] += 1;
        }
    }
}

/// The UTC minute of a wall-clock time in ms.
pub fn minute_of(ts_ms: u64) -> u32 {
    u32::try_from(ts_ms / 60_000).unwrap_or(u32::MAX)
}

/// Vote record, format 1. Field order is the stored layout: append new fields in a new version.
#[derive(Serialize, Deserialize)]
struct VoteRecordV1 {
    terminal: TerminalId,
    button: Button,
    ts_ms: u64,
    clock_synced: bool,
    filtered: bool,
    term_seq: Option<TermSeq>,
    boot_id: [u8; 16],
    mono_ms: u64,
}

/// Encodes a vote's value (its seq lives in the key).
pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    let record = VoteRecordV1 {
        terminal: vote.terminal.clone(),
        button: vote.button,
        ts_ms: vote.ts_ms,
        clock_synced: vote.clock_synced,
        filtered: vote.filtered,
        term_seq: vote.term_seq,
        boot_id: vote.boot_id.0,
        mono_ms: vote.mono_ms,
    };
    let mut bytes = vec![VOTE_FORMAT_V1];
    // Serialising plain data into a Vec cannot fail.
    bytes.extend(postcard::to_stdvec(&record).unwrap_or_default());
    bytes
}

/// Decodes a vote value stored under `seq`.
pub fn decode_vote(seq: Seq, value: &[u8]) -> Result<Vote, RecordError> {
    match value.split_first() {
        Some((&VOTE_FORMAT_V1, body)) => {
            let record: VoteRecordV1 =
                postcard::from_bytes(body).map_err(|err| RecordError::Corrupt(err.to_string()))?;
            Ok(Vote {
                seq,
                terminal: record.terminal,
                button: record.button,
                ts_ms: record.ts_ms,
                clock_synced: record.clock_synced,
                filtered: record.filtered,
                term_seq: record.term_seq,
                boot_id: BootId(record.boot_id),
                mono_ms: record.mono_ms,
            })
        }
        Some((&version, _)) => Err(RecordError::UnknownVersion(version)),
        None => Err(RecordError::Corrupt("empty value".to_string())),
    }
}

/// What a stored vote counts against `max-disk-size`.
pub fn vote_cost(value_len: usize) -> u64 {
    (vote_key(0).len() + value_len) as u64 + PER_VOTE_OVERHEAD
}

/// The journal's counters, stored under [`META_KEY`] and rewritten in the same atomic batch as
/// every change they describe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The seq the next accepted vote gets.
    pub next_seq: Seq,
    /// Votes dropped, ever: by `drop-oldest`, or refused by `reject-new` with no terminal to
    /// retransmit them.
    pub dropped: u64,
    /// Votes buffered (not yet acknowledged by the uplink).
    pub depth: u64,
    /// Sum of [`vote_cost`] over buffered votes.
    pub charged_bytes: u64,
}

impl Meta {
    /// The counters of an empty, new journal (seqs start at 1).
    pub fn new() -> Meta {
        Meta {
            next_seq: 1,
            ..Meta::default()
        }
    }

    /// Encodes the counters.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![META_FORMAT_V1];
        bytes.extend(postcard::to_stdvec(self).unwrap_or_default());
        bytes
    }

    /// Decodes the counters.
    pub fn decode(value: &[u8]) -> Result<Meta, RecordError> {
        match value.split_first() {
            Some((&META_FORMAT_V1, body)) => {
                postcard::from_bytes(body).map_err(|err| RecordError::Corrupt(err.to_string()))
            }
            Some((&version, _)) => Err(RecordError::UnknownVersion(version)),
            None => Err(RecordError::Corrupt("empty meta record".to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote() -> Vote {
        Vote {
            seq: 42,
            terminal: TerminalId::new("exit-2").expect("valid id"),
            button: Button::Happy,
            ts_ms: 1_795_000_000_123,
            clock_synced: false,
            filtered: true,
            term_seq: Some(7),
            boot_id: BootId([9; 16]),
            mono_ms: 123_456,
        }
    }

    #[test]
    fn votes_round_trip() {
        let vote = vote();
        assert_eq!(decode_vote(42, &encode_vote(&vote)), Ok(vote));
    }

    #[test]
    fn the_stored_layout_is_pinned() {
        // Changing this is a format change: bump VOTE_FORMAT and keep reading version 1.
        let bytes = encode_vote(&vote());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0106657869742d3203fbbcd9f29e340001010709090909090909090909090909090909c0c407"
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let mut bytes = encode_vote(&vote());
        bytes[0] = 9;
        assert_eq!(decode_vote(1, &bytes), Err(RecordError::UnknownVersion(9)));
        assert!(matches!(
            decode_vote(1, &[1, 200]),
            Err(RecordError::Corrupt(_))
        ));
        assert!(matches!(decode_vote(1, &[]), Err(RecordError::Corrupt(_))));
    }

    #[test]
    fn vote_keys_sort_by_seq() {
        assert!(vote_key(255) < vote_key(256));
        assert_eq!(seq_of_vote_key(&vote_key(1 << 40)), Some(1 << 40));
        assert_eq!(seq_of_vote_key(b"m"), None);
    }

    #[test]
    fn dedup_keys_round_trip_and_do_not_collide_across_terminals() {
        let a = TerminalId::new("ab").expect("valid");
        let b = TerminalId::new("a").expect("valid");
        assert_eq!(parse_dedup_key(&dedup_key(&a, 5)), Some((a.clone(), 5)));
        assert_ne!(dedup_key(&a, 5), dedup_key(&b, 5));
        assert_eq!(parse_dedup_key(b"dxx"), None);
    }

    #[test]
    fn minute_keys_sort_by_minute_and_round_trip() {
        let a = TerminalId::new("entrance").expect("valid");
        assert!(minute_key(100, &a) < minute_key(101, &a));
        assert_eq!(
            parse_minute_key(&minute_key(29_916_666, &a)),
            Some((29_916_666, a))
        );
        let tally = MinuteTally {
            counted: [1, 0, 5, 300],
            filtered: 2,
        };
        assert_eq!(MinuteTally::decode(&tally.encode()), Ok(tally));
        assert_eq!(minute_of(1_795_000_000_000), 29_916_666);
    }

    #[test]
    fn meta_round_trips() {
        let meta = Meta {
            next_seq: 1 << 33,
            dropped: 3,
            depth: 10,
            charged_bytes: 4096,
        };
        assert_eq!(Meta::decode(&meta.encode()), Ok(meta));
    }
}

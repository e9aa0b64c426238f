//! How the journal lays out its keys and encodes its values. Pure: no I/O.
//!
//! Every value starts with a format version byte, so that a future release can read (or at
//! least recognise) what an older one wrote. The layout of format 2 (a generation folder, see
//! the module doc of [`super`]) and, for converting them, the records of format 1 (the whole data
//! folder one sled database, one key per vote) are both here.

use serde::{Deserialize, Serialize};

use super::codec::{put_varint, Reader};
use crate::model::{BootId, Button, Seq, TermSeq, TerminalId, Vote};

/// The open tail block (the votes after the last sealed block), written at checkpoints.
pub const TAIL_KEY: &[u8] = b"t";
/// The single metadata key.
pub const META_KEY: &[u8] = b"m";
/// The dropped seq ranges not yet reported ([`super::drops::DropRanges`]); absent when none.
pub const DROPS_KEY: &[u8] = b"r";
/// Prefix of duplicate-window chunk keys: `w` + id length (u8) + terminal id + chunk (u32 BE).
pub const CHUNK_PREFIX: u8 = b'w';

const META_FORMAT_V2: u8 = 2;

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

fn push_id(key: &mut Vec<u8>, terminal: &TerminalId) {
    let id = terminal.as_str().as_bytes();
    // Ids are at most 64 bytes (model::MAX_ID_LEN), so the length fits in a byte.
    key.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(id);
}

fn parse_id(bytes: &[u8]) -> Option<(TerminalId, &[u8])> {
    let (len, rest) = bytes.split_first()?;
    let len = usize::from(*len);
    if rest.len() < len {
        return None;
    }
    let terminal = TerminalId::new(std::str::from_utf8(&rest[..len]).ok()?).ok()?;
    Some((terminal, &rest[len..]))
}

/// The key of chunk `chunk` of `terminal`'s duplicate window.
pub fn chunk_key(terminal: &TerminalId, chunk: u32) -> Vec<u8> {
    let mut key = vec![CHUNK_PREFIX];
    push_id(&mut key, terminal);
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

/// The `(terminal, chunk)` in a chunk key.
pub fn parse_chunk_key(key: &[u8]) -> Option<(TerminalId, u32)> {
    let [CHUNK_PREFIX, rest @ ..] = key else {
        return None;
    };
    let (terminal, chunk) = parse_id(rest)?;
    Some((terminal, u32::from_be_bytes(chunk.try_into().ok()?)))
}

/// Votes of one terminal in one minute (or quarter-hour): counted ones per button, and
/// filtered ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteTally {
    /// Counted (not filtered) votes per button, index 0 = button 1.
    pub counted: [u32; 4],
    /// Votes the anti-abuse filter marked.
    pub filtered: u32,
}

impl MinuteTally {
    /// Adds one vote.
    pub fn add(&mut self, vote: &Vote) {
        if vote.filtered {
            self.filtered += 1;
        } else {
            self.counted[vote.button.index()] += 1;
        }
    }

    /// Adds another tally.
    pub fn merge(&mut self, other: &MinuteTally) {
        for (count, add) in self.counted.iter_mut().zip(other.counted) {
            *count += add;
        }
        self.filtered += other.filtered;
    }
}

/// The UTC minute of a wall-clock time in ms.
pub fn minute_of(ts_ms: u64) -> u32 {
    u32::try_from(ts_ms / 60_000).unwrap_or(u32::MAX)
}

/// The journal's state besides its records, stored under [`META_KEY`] in the same atomic batch
/// as every change it describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Checkpoints written in this generation: write-ahead log records of another epoch are
    /// stale.
    pub epoch: u64,
    /// The seq after the last vote in the store (tail included).
    pub next_seq: Seq,
    /// The first seq of the tail block (votes from here on are in [`TAIL_KEY`]).
    pub tail_first: Seq,
    /// The first seq still buffered: every vote below is acknowledged or dropped.
    pub head: Seq,
    /// Votes dropped, ever: by `drop-oldest`, or refused with no terminal to retransmit them.
    pub dropped: u64,
}

impl Meta {
    /// The state of an empty, new journal (seqs start at 1).
    pub fn new() -> Meta {
        Meta {
            epoch: 0,
            next_seq: 1,
            tail_first: 1,
            head: 1,
            dropped: 0,
        }
    }

    /// Encodes the state.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![META_FORMAT_V2];
        for value in [
            self.epoch,
            self.next_seq,
            self.tail_first,
            self.head,
            self.dropped,
        ] {
            put_varint(&mut out, value);
        }
        out
    }

    /// Decodes the state.
    pub fn decode(value: &[u8]) -> Result<Meta, RecordError> {
        let mut reader = Reader::new(value);
        match reader.byte()? {
            META_FORMAT_V2 => {}
            version => return Err(RecordError::UnknownVersion(version)),
        }
        let meta = Meta {
            epoch: reader.varint()?,
            next_seq: reader.varint()?,
            tail_first: reader.varint()?,
            head: reader.varint()?,
            dropped: reader.varint()?,
        };
        if meta.tail_first > meta.next_seq {
            return Err(RecordError::Corrupt(format!("inconsistent meta {meta:?}")));
        }
        Ok(meta)
    }
}

/// The records of format 1 (releases before the journal kept votes in blocks), read only to
/// convert a data folder.
pub mod v1 {
    use super::*;

    /// Prefix of vote keys: `v` + seq (u64 big-endian).
    pub const VOTE_PREFIX: u8 = b'v';
    /// Prefix of dedup keys: `d` + id length (u8) + terminal id + term_seq (u64 big-endian).
    pub const DEDUP_PREFIX: u8 = b'd';
    /// Prefix of format 1's minute-count keys: `c` + UTC minute (u32 big-endian) + id length (u8) +
    /// terminal id.
    pub const MINUTE_PREFIX: u8 = b'c';

    const VOTE_FORMAT_V1: u8 = 1;
    const META_FORMAT_V1: u8 = 1;
    const MINUTE_FORMAT_V1: u8 = 1;

    /// The key of the counts of `terminal` in UTC minute `minute` (minutes since the Unix epoch).
    pub fn minute_key(minute: u32, terminal: &TerminalId) -> Vec<u8> {
        let mut key = Vec::with_capacity(6 + terminal.as_str().len());
        key.push(MINUTE_PREFIX);
        key.extend_from_slice(&minute.to_be_bytes());
        push_id(&mut key, terminal);
        key
    }

    /// The `(minute, terminal)` in a minute-count key.
    pub fn parse_minute_key(key: &[u8]) -> Option<(u32, TerminalId)> {
        let [MINUTE_PREFIX, m0, m1, m2, m3, rest @ ..] = key else {
            return None;
        };
        let (terminal, after) = parse_id(rest)?;
        after
            .is_empty()
            .then(|| (u32::from_be_bytes([*m0, *m1, *m2, *m3]), terminal))
    }

    /// The seq in a vote key.
    pub fn seq_of_vote_key(key: &[u8]) -> Option<Seq> {
        match key {
            [VOTE_PREFIX, rest @ ..] => Some(Seq::from_be_bytes(rest.try_into().ok()?)),
            _ => None,
        }
    }

    /// The `(terminal, term_seq)` in a dedup key.
    pub fn parse_dedup_key(key: &[u8]) -> Option<(TerminalId, TermSeq)> {
        let [DEDUP_PREFIX, rest @ ..] = key else {
            return None;
        };
        let (terminal, term_seq) = parse_id(rest)?;
        Some((terminal, TermSeq::from_be_bytes(term_seq.try_into().ok()?)))
    }

    /// The seq stored under a dedup key.
    pub fn decode_seq(value: &[u8]) -> Option<Seq> {
        Some(Seq::from_be_bytes(value.try_into().ok()?))
    }

    /// Vote record, format 1. Field order is the stored layout.
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

    /// Decodes a vote value stored under `seq`.
    pub fn decode_vote(seq: Seq, value: &[u8]) -> Result<Vote, RecordError> {
        match value.split_first() {
            Some((&VOTE_FORMAT_V1, body)) => {
                let record: VoteRecordV1 = postcard::from_bytes(body)
                    .map_err(|err| RecordError::Corrupt(err.to_string()))?;
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

    /// The counters of format 1.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MetaV1 {
        /// The seq the next accepted vote gets.
        pub next_seq: Seq,
        /// Votes dropped, ever.
        pub dropped: u64,
        /// Votes buffered.
        pub depth: u64,
        /// Charged bytes (format 1's accounting).
        pub charged_bytes: u64,
    }

    /// Decodes the counters.
    pub fn decode_meta(value: &[u8]) -> Result<MetaV1, RecordError> {
        match value.split_first() {
            Some((&META_FORMAT_V1, body)) => {
                postcard::from_bytes(body).map_err(|err| RecordError::Corrupt(err.to_string()))
            }
            Some((&version, _)) => Err(RecordError::UnknownVersion(version)),
            None => Err(RecordError::Corrupt("empty meta record".to_string())),
        }
    }

    /// Decodes a minute count.
    pub fn decode_minute(value: &[u8]) -> Result<MinuteTally, RecordError> {
        match value.split_first() {
            Some((&MINUTE_FORMAT_V1, body)) => {
                postcard::from_bytes(body).map_err(|err| RecordError::Corrupt(err.to_string()))
            }
            Some((&version, _)) => Err(RecordError::UnknownVersion(version)),
            None => Err(RecordError::Corrupt("empty minute record".to_string())),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn minute_keys_sort_by_minute_and_round_trip() {
            let a = TerminalId::new("entrance").expect("valid");
            assert!(minute_key(100, &a) < minute_key(101, &a));
            assert_eq!(
                parse_minute_key(&minute_key(29_916_666, &a)),
                Some((29_916_666, a))
            );
            assert_eq!(super::super::minute_of(1_795_000_000_000), 29_916_666);
        }
        #[test]
        fn a_vote_written_by_format_1_decodes() {
            // The bytes format 1 stored for one vote (pinned in the release that wrote them).
            let hex =
                "0106657869742d3203fbbcd9f29e340001010709090909090909090909090909090909c0c407";
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let vote = decode_vote(42, &bytes).expect("decodes");
            assert_eq!(vote.terminal.as_str(), "exit-2");
            assert_eq!(vote.term_seq, Some(7));
            assert_eq!(vote.ts_ms, 1_795_000_000_123);
            assert!(vote.filtered && !vote.clock_synced);
            assert!(matches!(
                decode_vote(1, &[9, 0]),
                Err(RecordError::UnknownVersion(9))
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_do_not_collide_across_terminals() {
        let a = TerminalId::new("ab").expect("valid");
        let b = TerminalId::new("a").expect("valid");
        assert_eq!(parse_chunk_key(&chunk_key(&a, 5)), Some((a.clone(), 5)));
        assert_ne!(chunk_key(&a, 5), chunk_key(&b, 5));
        assert!(chunk_key(&a, 1) < chunk_key(&a, 2));
        assert_eq!(parse_chunk_key(b"wxx"), None);
    }

    #[test]
    fn meta_round_trips_and_rejects_nonsense() {
        let meta = Meta {
            epoch: 3,
            next_seq: 1 << 33,
            tail_first: 1 << 32,
            head: 10,
            dropped: 3,
        };
        assert_eq!(Meta::decode(&meta.encode()), Ok(meta));
        let backwards = Meta {
            tail_first: 1 << 34,
            ..meta
        };
        assert!(Meta::decode(&backwards.encode()).is_err());
        assert_eq!(Meta::decode(&[1, 0]), Err(RecordError::UnknownVersion(1)));
    }
}

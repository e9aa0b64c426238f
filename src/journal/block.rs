//! Votes in blocks: the compact encoding of a run of votes with consecutive seqs. Pure.
//!
//! The journal stores votes as blocks (one sled value per block, keyed by its first seq) and
//! writes the votes of each commit to its write-ahead log in the same encoding. A vote costs
//! about 9–12 bytes: each field is stored as the difference from the vote before it, and a
//! terminal id or boot id is spelled out only the first time a stream names it.
//!
//! # Stream format, version 1
//! Per vote, in seq order:
//! - `terminal`: varint index into the ids seen so far in this stream; the next unused index
//!   introduces a new id, followed by its length (u8) and UTF-8 bytes;
//! - `flags` (u8): bits 0–1 button − 1, bit 2 clock synced, bit 3 filtered, bit 4 has
//!   term_seq, bit 5 boot id differs from the previous vote's; bits 6–7 are zero;
//! - if bit 5: varint index into the boot ids seen so far, a new one followed by its 16 bytes;
//! - `ts_ms`, then `mono_ms`: zigzag varint difference from the previous vote's (from 0 for the
//!   first vote);
//! - if bit 4: `term_seq` as a zigzag varint difference from the previous term_seq of the same
//!   terminal in this stream (from 0 for its first).
//!
//! A block value is a format byte ([`BLOCK_FORMAT_V1`]), the vote count (varint) and the stream.

use super::codec::{apply_delta, delta, put_signed, put_varint, Reader};
use super::record::RecordError;
use crate::model::{BootId, Button, Seq, TermSeq, TerminalId, Vote};

/// The format byte of a block value.
pub const BLOCK_FORMAT_V1: u8 = 1;

const CLOCK_SYNCED: u8 = 1 << 2;
const FILTERED: u8 = 1 << 3;
const HAS_TERM_SEQ: u8 = 1 << 4;
const NEW_BOOT: u8 = 1 << 5;
const RESERVED: u8 = 0b1100_0000;

/// Most votes a stream may hold when decoded: guards against a corrupt count.
pub const MAX_STREAM_VOTES: usize = 1 << 20;

/// Votes being encoded, one after another.
#[derive(Clone, Debug, Default)]
pub struct VoteStream {
    bytes: Vec<u8>,
    count: usize,
    terminals: Vec<(TerminalId, Option<TermSeq>)>,
    boots: Vec<BootId>,
    boot: Option<usize>,
    ts_ms: u64,
    mono_ms: u64,
}

impl VoteStream {
    /// An empty stream.
    pub fn new() -> VoteStream {
        VoteStream::default()
    }

    /// Appends a vote (the caller keeps seqs consecutive).
    pub fn push(&mut self, vote: &Vote) {
        let out = &mut self.bytes;
        let terminal = match self.terminals.iter().position(|(t, _)| *t == vote.terminal) {
            Some(index) => {
                put_varint(out, index as u64);
                index
            }
            None => {
                let index = self.terminals.len();
                put_varint(out, index as u64);
                let id = vote.terminal.as_str().as_bytes();
                // Ids are at most 64 bytes (model::MAX_ID_LEN).
                out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(id);
                self.terminals.push((vote.terminal.clone(), None));
                index
            }
        };
        let boot = self.boots.iter().position(|b| *b == vote.boot_id);
        let new_boot = boot.is_none() || boot != self.boot;
        let mut flags = vote.button.index() as u8;
        if vote.clock_synced {
            flags |= CLOCK_SYNCED;
        }
        if vote.filtered {
            flags |= FILTERED;
        }
        if vote.term_seq.is_some() {
            flags |= HAS_TERM_SEQ;
        }
        if new_boot {
            flags |= NEW_BOOT;
        }
        out.push(flags);
        if new_boot {
            let index = match boot {
                Some(index) => index,
                None => {
                    self.boots.push(vote.boot_id);
                    self.boots.len() - 1
                }
            };
            put_varint(out, index as u64);
            if boot.is_none() {
                out.extend_from_slice(&vote.boot_id.0);
            }
            self.boot = Some(index);
        }
        put_signed(out, delta(self.ts_ms, vote.ts_ms));
        put_signed(out, delta(self.mono_ms, vote.mono_ms));
        self.ts_ms = vote.ts_ms;
        self.mono_ms = vote.mono_ms;
        if let Some(term_seq) = vote.term_seq {
            let previous = &mut self.terminals[terminal].1;
            put_signed(out, delta(previous.unwrap_or(0), term_seq));
            *previous = Some(term_seq);
        }
        self.count += 1;
    }

    /// Votes in the stream.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The encoded votes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of the encoded votes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no vote was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Decodes `count` votes from `reader`, numbered from `first_seq`.
pub fn decode_stream(
    first_seq: Seq,
    count: usize,
    reader: &mut Reader<'_>,
) -> Result<Vec<Vote>, RecordError> {
    let mut votes = Vec::with_capacity(count.min(4096));
    let mut terminals: Vec<(TerminalId, Option<TermSeq>)> = Vec::new();
    let mut boots: Vec<BootId> = Vec::new();
    let mut boot: Option<BootId> = None;
    let (mut ts_ms, mut mono_ms) = (0u64, 0u64);
    for n in 0..count {
        let index = reader.count(terminals.len())?;
        if index == terminals.len() {
            let len = usize::from(reader.byte()?);
            let id = std::str::from_utf8(reader.take(len)?)
                .map_err(|_| corrupt("terminal id is not UTF-8"))?;
            let id = TerminalId::new(id).map_err(|err| corrupt(&format!("terminal id {err}")))?;
            terminals.push((id, None));
        }
        let flags = reader.byte()?;
        if flags & RESERVED != 0 {
            return Err(corrupt("reserved flag bits are set"));
        }
        if flags & NEW_BOOT != 0 {
            let index = reader.count(boots.len())?;
            if index == boots.len() {
                let bytes: [u8; 16] = reader
                    .take(16)?
                    .try_into()
                    .map_err(|_| corrupt("boot id"))?;
                boots.push(BootId(bytes));
            }
            boot = Some(boots[index]);
        }
        let boot_id = boot.ok_or_else(|| corrupt("first vote without a boot id"))?;
        ts_ms = apply_delta(ts_ms, reader.signed()?);
        mono_ms = apply_delta(mono_ms, reader.signed()?);
        let term_seq = if flags & HAS_TERM_SEQ != 0 {
            let previous = &mut terminals[index].1;
            let term_seq = apply_delta(previous.unwrap_or(0), reader.signed()?);
            *previous = Some(term_seq);
            Some(term_seq)
        } else {
            None
        };
        let button = Button::ALL[usize::from(flags & 0b11)];
        votes.push(Vote {
            seq: first_seq + n as u64,
            terminal: terminals[index].0.clone(),
            button,
            ts_ms,
            clock_synced: flags & CLOCK_SYNCED != 0,
            filtered: flags & FILTERED != 0,
            term_seq,
            boot_id,
            mono_ms,
        });
    }
    Ok(votes)
}

/// A block value holding `stream`.
pub fn encode_block(stream: &VoteStream) -> Vec<u8> {
    let mut value = Vec::with_capacity(stream.len() + 4);
    value.push(BLOCK_FORMAT_V1);
    put_varint(&mut value, stream.count() as u64);
    value.extend_from_slice(stream.bytes());
    value
}

/// Bytes of the block value for `stream`, without building it.
pub fn block_len(stream: &VoteStream) -> usize {
    let mut count = Vec::with_capacity(4);
    put_varint(&mut count, stream.count() as u64);
    1 + count.len() + stream.len()
}

/// Decodes a block value stored under `first_seq`.
pub fn decode_block(first_seq: Seq, value: &[u8]) -> Result<Vec<Vote>, RecordError> {
    let mut reader = Reader::new(value);
    match reader.byte()? {
        BLOCK_FORMAT_V1 => {}
        version => return Err(RecordError::UnknownVersion(version)),
    }
    let count = reader.count(MAX_STREAM_VOTES)?;
    let votes = decode_stream(first_seq, count, &mut reader)?;
    if !reader.is_empty() {
        return Err(corrupt("bytes after the last vote of a block"));
    }
    Ok(votes)
}

/// The number of votes in a block value, without decoding them.
pub fn block_count(value: &[u8]) -> Result<usize, RecordError> {
    let mut reader = Reader::new(value);
    match reader.byte()? {
        BLOCK_FORMAT_V1 => reader.count(MAX_STREAM_VOTES),
        version => Err(RecordError::UnknownVersion(version)),
    }
}

fn corrupt(what: &str) -> RecordError {
    RecordError::Corrupt(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vote(seq: Seq, terminal: &str, term_seq: Option<u64>, boot: u8, ts_ms: u64) -> Vote {
        Vote {
            seq,
            terminal: TerminalId::new(terminal).expect("valid id"),
            button: Button::ALL[(seq % 4) as usize],
            ts_ms,
            clock_synced: seq % 3 != 0,
            filtered: seq % 5 == 0,
            term_seq,
            boot_id: BootId([boot; 16]),
            mono_ms: ts_ms / 2,
        }
    }

    fn block_of(votes: &[Vote]) -> Vec<u8> {
        let mut stream = VoteStream::new();
        for vote in votes {
            stream.push(vote);
        }
        let value = encode_block(&stream);
        assert_eq!(value.len(), block_len(&stream));
        value
    }

    #[test]
    fn a_site_vote_costs_about_ten_bytes() {
        let votes: Vec<Vote> = (0..512)
            .map(|n| {
                let terminal = ["entrance", "exit", "checkout-1"][(n % 3) as usize];
                vote(
                    100 + n,
                    terminal,
                    Some(4000 + n / 3),
                    1,
                    1_795_000_000_000 + n * 9_000,
                )
            })
            .collect();
        let value = block_of(&votes);
        assert_eq!(decode_block(100, &value), Ok(votes));
        assert!(value.len() < 512 * 12, "{} bytes", value.len());
        assert_eq!(block_count(&value), Ok(512));
    }

    #[test]
    fn boots_and_terminals_switching_back_and_forth_round_trip() {
        let votes = vec![
            vote(7, "a", None, 1, 50),
            vote(8, "b", Some(u64::MAX), 2, 10),
            vote(9, "a", Some(0), 1, u64::MAX),
            vote(10, "b", Some(3), 2, 0),
            vote(11, "c", None, 3, 5),
        ];
        assert_eq!(decode_block(7, &block_of(&votes)), Ok(votes));
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let value = block_of(&[vote(1, "a", Some(1), 1, 5), vote(2, "a", Some(2), 1, 6)]);
        for cut in 0..value.len() {
            assert!(decode_block(1, &value[..cut]).is_err(), "cut at {cut}");
        }
        let mut version = value.clone();
        version[0] = 9;
        assert_eq!(
            decode_block(1, &version),
            Err(RecordError::UnknownVersion(9))
        );
        let mut trailing = value;
        trailing.push(0);
        assert!(decode_block(1, &trailing).is_err());
    }

    proptest! {
        #[test]
        fn any_votes_round_trip(
            raw in proptest::collection::vec(
                (0..4usize, proptest::option::of(any::<u64>()), 0..3u8, any::<u64>(), any::<u64>(), 0..4usize, any::<bool>(), any::<bool>()),
                0..60,
            ),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let votes: Vec<Vote> = raw
                .into_iter()
                .enumerate()
                .map(|(n, (t, term_seq, boot, ts_ms, mono_ms, button, synced, filtered))| Vote {
                    seq: 1000 + n as u64,
                    terminal: TerminalId::new(&format!("t{t}")).expect("valid"),
                    button: Button::ALL[button],
                    ts_ms,
                    clock_synced: synced,
                    filtered,
                    term_seq,
                    boot_id: BootId([boot; 16]),
                    mono_ms,
                })
                .collect();
            prop_assert_eq!(decode_block(1000, &block_of(&votes)), Ok(votes));
            // Garbage never panics.
            let _ = decode_block(1, &garbage);
        }
    }
}

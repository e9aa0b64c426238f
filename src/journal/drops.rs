//! The seqs the journal dropped to make room (`drop-oldest`) and has not yet told the cloud
//! about. Pure: no I/O.
//!
//! A dropped vote had a seq, so without a word from the gateway cloud ingest would see a gap
//! and could not tell "dropped at the gateway" from "lost on the way". The uplink puts these
//! ranges in its batches (`dropped`), and the journal forgets a range once a batch that
//! carried it was acknowledged by the broker. They are kept durably with the journal's other
//! state: in the write-ahead log's records and at checkpoints.

use std::collections::BTreeMap;

use super::codec::{put_varint, Reader};
use super::record::RecordError;
use crate::model::Seq;

/// Ranges kept at most. Drops are contiguous from the oldest vote up, so ranges stay few (one
/// per spell of drops between deliveries); past this many, the two oldest are joined (the seqs
/// between them were delivered, and ingest counts a seq it received as received).
pub const MAX_RANGES: usize = 1024;
const FORMAT_V1: u8 = 1;

/// Dropped seq ranges, inclusive, not yet reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropRanges {
    /// First seq → last seq.
    ranges: BTreeMap<Seq, Seq>,
}

impl DropRanges {
    /// None.
    pub fn new() -> DropRanges {
        DropRanges::default()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, `(first, last)` inclusive, oldest first.
    pub fn ranges(&self) -> Vec<(Seq, Seq)> {
        self.ranges
            .iter()
            .map(|(first, last)| (*first, *last))
            .collect()
    }

    /// Seqs in all ranges.
    pub fn seqs(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(first, last)| last - first + 1)
            .sum()
    }

    /// Adds `first..=last`, joining the ranges it touches.
    pub fn add(&mut self, first: Seq, last: Seq) {
        if last < first {
            return;
        }
        let (mut first, mut last) = (first, last);
        let touching: Vec<Seq> = self
            .ranges
            .range(..=last.saturating_add(1))
            .filter(|(_, end)| **end + 1 >= first)
            .map(|(start, _)| *start)
            .collect();
        for start in touching {
            if let Some(end) = self.ranges.remove(&start) {
                first = first.min(start);
                last = last.max(end);
            }
        }
        self.ranges.insert(first, last);
        while self.ranges.len() > MAX_RANGES {
            let Some((first, _)) = self.ranges.pop_first() else {
                break;
            };
            if let Some((_, last)) = self.ranges.pop_first() {
                self.ranges.insert(first, last);
            }
        }
    }

    /// Forgets every seq up to `through` (reported). Returns whether anything changed.
    pub fn forget_through(&mut self, through: Seq) -> bool {
        let reported: Vec<(Seq, Seq)> = self
            .ranges
            .range(..=through)
            .map(|(first, last)| (*first, *last))
            .collect();
        for (first, last) in &reported {
            self.ranges.remove(first);
            if *last > through {
                self.ranges.insert(through + 1, *last);
            }
        }
        !reported.is_empty()
    }

    /// Appends the ranges: a count, then each as first and length − 1 (varints).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        put_varint(out, self.ranges.len() as u64);
        for (first, last) in &self.ranges {
            put_varint(out, *first);
            put_varint(out, last - first);
        }
    }

    /// Reads what [`DropRanges::encode_into`] wrote.
    pub fn decode_from(reader: &mut Reader<'_>) -> Result<DropRanges, RecordError> {
        let count = reader.count(MAX_RANGES)?;
        let mut ranges = DropRanges::new();
        for _ in 0..count {
            let first = reader.varint()?;
            let span = reader.varint()?;
            let last = first
                .checked_add(span)
                .ok_or_else(|| RecordError::Corrupt("a dropped range past the last seq".into()))?;
            ranges.add(first, last);
        }
        Ok(ranges)
    }

    /// The stored value: a format byte and the ranges.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_V1];
        self.encode_into(&mut out);
        out
    }

    /// Reads a stored value.
    pub fn decode(bytes: &[u8]) -> Result<DropRanges, RecordError> {
        let mut reader = Reader::new(bytes);
        match reader.byte()? {
            FORMAT_V1 => {}
            version => return Err(RecordError::UnknownVersion(version)),
        }
        let ranges = DropRanges::decode_from(&mut reader)?;
        if !reader.is_empty() {
            return Err(RecordError::Corrupt(
                "bytes after the dropped ranges".into(),
            ));
        }
        Ok(ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(ranges: &[(Seq, Seq)]) -> DropRanges {
        let mut drops = DropRanges::new();
        for (first, last) in ranges {
            drops.add(*first, *last);
        }
        drops
    }

    #[test]
    fn adjacent_and_overlapping_ranges_join() {
        let drops = of(&[(10, 19), (20, 29), (40, 49), (45, 60), (5, 9)]);
        assert_eq!(drops.ranges(), [(5, 29), (40, 60)]);
        assert_eq!(drops.seqs(), 25 + 21);
        let drops = of(&[(40, 49), (10, 19), (15, 45)]);
        assert_eq!(drops.ranges(), [(10, 49)]);
    }

    #[test]
    fn forgetting_through_a_seq_cuts_a_range_it_falls_in() {
        let mut drops = of(&[(5, 9), (20, 29)]);
        assert!(drops.forget_through(24));
        assert_eq!(drops.ranges(), [(25, 29)]);
        assert!(!drops.forget_through(3));
        assert!(drops.forget_through(29));
        assert!(drops.is_empty());
    }

    #[test]
    fn ranges_round_trip_and_garbage_is_refused() {
        let drops = of(&[(1, 1), (100, 1_000_000), (2_000_000, 2_000_005)]);
        assert_eq!(DropRanges::decode(&drops.encode()), Ok(drops));
        assert_eq!(
            DropRanges::decode(&[9, 0]),
            Err(RecordError::UnknownVersion(9))
        );
        assert!(DropRanges::decode(&[FORMAT_V1, 1, 5]).is_err());
        let mut long = vec![FORMAT_V1];
        put_varint(&mut long, 1);
        put_varint(&mut long, u64::MAX);
        put_varint(&mut long, 1);
        assert!(DropRanges::decode(&long).is_err());
    }

    #[test]
    fn too_many_ranges_join_the_oldest() {
        let mut drops = DropRanges::new();
        for n in 0..(MAX_RANGES as u64 + 2) {
            drops.add(n * 10, n * 10 + 1);
        }
        assert_eq!(drops.ranges().len(), MAX_RANGES);
        assert_eq!(drops.ranges()[0], (0, 21));
    }
}

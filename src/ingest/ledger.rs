//! The completeness ledger's arithmetic, pure (no I/O, no clock): which batches may be written,
//! and, from the runs of received seqs and the ranges the gateway reported dropped, what is
//! received, dropped at the gateway, missing and still pending.
//!
//! A gateway's seqs start at 1 and are consecutive (CONTRACT § Vote; journal invariant 2), so every
//! seq from 1 to the highest one seen is, at the ingest, exactly one of:
//! - **received**: a row in `votes`;
//! - **dropped at the gateway**: inside a range a batch reported in `dropped` (and not received);
//! - **pending**: a gap whose next accounted seq arrived less than the grace period ago (the
//!   gateway delivers in seq order, so a gap is normally a batch still being redelivered);
//! - **missing**: a gap older than that: lost somewhere, or deleted from `votes`.

use crate::uplink::payload::BatchPayload;

/// The largest seq PostgreSQL's `bigint` holds.
const MAX_SEQ: u64 = i64::MAX as u64;
/// The latest vote time accepted: 9999-12-31T23:59:59.999Z (a `timestamptz` holds it).
const MAX_TS_MS: u64 = 253_402_300_799_999;

/// Why a batch cannot be written (it would never be writable: the consumer logs and skips it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// An empty gateway id or site.
    #[error("batch {batch_id}: empty `{field}`")]
    EmptyField {
        /// The batch.
        batch_id: u64,
        /// `gateway_id`, `site` or `terminal`.
        field: &'static str,
    },
    /// PostgreSQL's `text` cannot hold a NUL character.
    #[error("batch {batch_id}: a NUL character in `{field}`")]
    NulInField {
        /// The batch.
        batch_id: u64,
        /// `gateway_id` or `site`.
        field: &'static str,
    },
    /// Seqs must be 1 to 2⁶³ − 1 and strictly increasing.
    #[error("batch {batch_id} of gateway {gateway_id}: seq {seq} {problem}")]
    BadSeq {
        /// The gateway.
        gateway_id: String,
        /// The batch.
        batch_id: u64,
        /// The offending seq.
        seq: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A value outside its column's range.
    #[error("batch {batch_id} of gateway {gateway_id}: vote {seq}: {problem}")]
    BadVote {
        /// The gateway.
        gateway_id: String,
        /// The batch.
        batch_id: u64,
        /// The vote.
        seq: u64,
        /// What is wrong.
        problem: String,
    },
}

/// Checks that every value of a decoded batch fits the schema, so that writing it can only fail
/// for a reason outside the batch (the database), never forever.
pub fn validate(batch: &BatchPayload) -> Result<(), BatchError> {
    let batch_id = batch.batch_id;
    for (field, value) in [("gateway_id", &batch.gateway_id), ("site", &batch.site)] {
        if value.is_empty() {
            return Err(BatchError::EmptyField { batch_id, field });
        }
        if value.contains('\0') {
            return Err(BatchError::NulInField { batch_id, field });
        }
    }
    let bad_seq = |seq, problem| BatchError::BadSeq {
        gateway_id: batch.gateway_id.clone(),
        batch_id,
        seq,
        problem,
    };
    let mut previous = 0;
    for vote in &batch.votes {
        if vote.seq == 0 || vote.seq > MAX_SEQ {
            return Err(bad_seq(vote.seq, "is outside 1 to 2^63-1"));
        }
        if vote.seq <= previous {
            return Err(bad_seq(vote.seq, "does not follow the previous vote's seq"));
        }
        previous = vote.seq;
        let bad_vote = |problem: String| BatchError::BadVote {
            gateway_id: batch.gateway_id.clone(),
            batch_id,
            seq: vote.seq,
            problem,
        };
        if vote.terminal.is_empty() {
            return Err(bad_vote("empty terminal".into()));
        }
        // PostgreSQL's text cannot hold NUL: such a batch would fail forever, unacknowledged.
        if vote.terminal.contains('\0') {
            return Err(bad_vote("a NUL character in the terminal".into()));
        }
        if !(1..=4).contains(&vote.button) {
            return Err(bad_vote(format!("button {} is not 1 to 4", vote.button)));
        }
        if vote.ts_ms > MAX_TS_MS {
            return Err(bad_vote(format!(
                "ts_ms {} is after the year 9999",
                vote.ts_ms
            )));
        }
        if vote.term_seq.is_some_and(|t| t > MAX_SEQ) {
            return Err(bad_vote("term_seq is above 2^63-1".into()));
        }
    }
    for range in &batch.dropped {
        if range.first_seq == 0 || range.last_seq > MAX_SEQ || range.first_seq > range.last_seq {
            return Err(bad_seq(
                range.first_seq,
                "starts a dropped range that is empty or outside 1 to 2^63-1",
            ));
        }
    }
    Ok(())
}

/// A batch's lowest and highest accounted seq (its votes and its dropped ranges), if any.
pub fn accounted_bounds(batch: &BatchPayload) -> Option<(u64, u64)> {
    let votes = batch.votes.iter().map(|v| (v.seq, v.seq));
    let dropped = batch.dropped.iter().map(|r| (r.first_seq, r.last_seq));
    votes
        .chain(dropped)
        .reduce(|(lo, hi), (first, last)| (lo.min(first), hi.max(last)))
}

/// Whether writing this batch can move a gateway's contiguous mark `contiguous` (every seq up to
/// it accounted for): only if it accounts for `contiguous + 1`'s neighbourhood. A batch entirely
/// below it (a redelivery) or above a gap leaves it, so those cost no scan.
pub fn may_advance(contiguous: u64, batch: &BatchPayload) -> bool {
    accounted_bounds(batch).is_some_and(|(lo, hi)| lo <= contiguous + 1 && hi > contiguous)
}

/// Extends the contiguous mark over `spans` (accounted `(first, last)` ranges, sorted by first).
pub fn advance(contiguous: u64, spans: &[(u64, u64)]) -> u64 {
    let mut reach = contiguous;
    for &(first, last) in spans {
        if first > reach + 1 {
            break;
        }
        reach = reach.max(last);
    }
    reach
}

/// Accounted seqs: a run of received ones or a reported dropped range, with when it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First seq.
    pub first: u64,
    /// Last seq (inclusive).
    pub last: u64,
    /// When it arrived at the ingest (Unix ms): for a run, its earliest row's `received_at`.
    pub arrived_ms: i64,
}

/// Seqs nobody accounted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// First seq.
    pub first: u64,
    /// Last seq (inclusive).
    pub last: u64,
}

impl Gap {
    /// How many seqs.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never: a gap holds at least one seq.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One gateway's completeness, as [`audit`] finds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Votes in `votes`.
    pub received: u64,
    /// Seqs the gateway reported dropped and that were not received.
    pub dropped: u64,
    /// Gaps older than the grace period.
    pub missing: Vec<Gap>,
    /// Gaps younger than it.
    pub pending: Vec<Gap>,
    /// Every seq from 1 to this one is received or dropped.
    pub contiguous_through: u64,
    /// The highest seq accounted for (or known to have been received).
    pub highest: u64,
}

impl Audit {
    /// Seqs missing.
    pub fn missing_count(&self) -> u64 {
        self.missing.iter().map(Gap::len).sum()
    }

    /// Seqs pending.
    pub fn pending_count(&self) -> u64 {
        self.pending.iter().map(Gap::len).sum()
    }
}

/// Accounts for every seq of one gateway from 1 to its highest.
///
/// `runs`: the received seqs as maximal runs, sorted; `dropped`: the reported ranges, sorted by
/// first seq (they may overlap each other and received runs); `highest_known`: the highest seq the
/// ingest ever wrote and when (the ledger's), so that deleting the top votes also shows as missing.
/// A gap's age is the age of the span just above it.
pub fn audit(
    runs: &[Span],
    dropped: &[Span],
    highest_known: Option<(u64, i64)>,
    now_ms: i64,
    grace_ms: i64,
) -> Audit {
    let mut audit = Audit {
        received: runs.iter().map(|r| r.last - r.first + 1).sum(),
        ..Audit::default()
    };
    let mut spans: Vec<Span> = runs.iter().chain(dropped).copied().collect();
    spans.sort_by_key(|s| (s.first, s.last));
    let mut reach = 0u64;
    let mut contiguous = None;
    let mut gap_below = |first: u64, last: u64, arrived_ms: i64, audit: &mut Audit| {
        contiguous.get_or_insert(first - 1);
        let gap = Gap { first, last };
        if now_ms.saturating_sub(arrived_ms) >= grace_ms {
            audit.missing.push(gap);
        } else {
            audit.pending.push(gap);
        }
    };
    for span in &spans {
        if span.first > reach + 1 {
            gap_below(reach + 1, span.first - 1, span.arrived_ms, &mut audit);
        }
        reach = reach.max(span.last);
    }
    // The ledger's highest seq was written once: if it is gone, everything above `reach` is.
    if let Some((seq, at)) = highest_known {
        if seq > reach {
            gap_below(reach + 1, seq, at, &mut audit);
            reach = seq;
        }
    }
    audit.highest = reach;
    audit.contiguous_through = contiguous.unwrap_or(reach);
    audit.dropped = dropped_not_received(runs, dropped);
    audit
}

/// The ledger's live view of one gateway, for `/metrics`: every seq up to `contiguous` was
/// accounted for when its batch committed (the ledger's mark), so only `runs` above it (and
/// inside dropped ranges, to tell dropped from received) were read; `received` is the ledger's
/// count of inserted votes. Unlike [`audit`] it cannot see a row deleted below the mark: the
/// report reads the table itself.
pub fn audit_live(
    contiguous: u64,
    received: u64,
    runs: &[Span],
    dropped: &[Span],
    highest_known: Option<(u64, i64)>,
    now_ms: i64,
    grace_ms: i64,
) -> Audit {
    let vouched = (contiguous > 0).then_some(Span {
        first: 1,
        last: contiguous,
        arrived_ms: now_ms,
    });
    // Runs read for the dropped ranges may lie below the mark: clipped, so spans do not overlap.
    let above = runs.iter().filter(|r| r.last > contiguous).map(|r| Span {
        first: r.first.max(contiguous + 1),
        ..*r
    });
    let spans: Vec<Span> = vouched.into_iter().chain(above).collect();
    let mut audit = audit(&spans, dropped, highest_known, now_ms, grace_ms);
    audit.received = received;
    audit.dropped = dropped_not_received(runs, dropped);
    audit
}

/// The number of seqs inside the (possibly overlapping) dropped ranges that are not in `runs`.
fn dropped_not_received(runs: &[Span], dropped: &[Span]) -> u64 {
    let mut merged: Vec<(u64, u64)> = Vec::new();
    let mut ranges: Vec<(u64, u64)> = dropped.iter().map(|d| (d.first, d.last)).collect();
    ranges.sort();
    for (first, last) in ranges {
        match merged.last_mut() {
            Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
            _ => merged.push((first, last)),
        }
    }
    let mut count = 0;
    for (first, last) in merged {
        let received_inside: u64 = runs
            .iter()
            .filter(|r| r.last >= first && r.first <= last)
            .map(|r| r.last.min(last) - r.first.max(first) + 1)
            .sum();
        count += last - first + 1 - received_inside;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::payload::{DroppedRange, WireVote, FORMAT_VERSION};

    fn vote(seq: u64) -> WireVote {
        WireVote {
            seq,
            terminal: "t".into(),
            button: 3,
            ts_ms: 1_795_000_000_000,
            clock_synced: true,
            restamped: false,
            filtered: false,
            term_seq: None,
        }
    }

    fn batch(seqs: &[u64], dropped: &[(u64, u64)]) -> BatchPayload {
        BatchPayload {
            format: FORMAT_VERSION,
            gateway_id: "gw".into(),
            site: "s".into(),
            batch_id: seqs.first().copied().unwrap_or(0),
            first_seq: seqs.first().copied().unwrap_or(0),
            last_seq: seqs.last().copied().unwrap_or(0),
            votes: seqs.iter().map(|s| vote(*s)).collect(),
            dropped: dropped
                .iter()
                .map(|&(first_seq, last_seq)| DroppedRange {
                    first_seq,
                    last_seq,
                })
                .collect(),
        }
    }

    fn span(first: u64, last: u64, arrived_ms: i64) -> Span {
        Span {
            first,
            last,
            arrived_ms,
        }
    }

    #[test]
    fn batches_that_cannot_fit_the_schema_are_refused() {
        assert!(validate(&batch(&[1, 2, 3], &[(5, 9)])).is_ok());
        assert!(validate(&batch(&[0], &[])).is_err());
        assert!(validate(&batch(&[2, 2], &[])).is_err());
        assert!(validate(&batch(&[3, 2], &[])).is_err());
        assert!(validate(&batch(&[1 << 63], &[])).is_err());
        assert!(validate(&batch(&[1], &[(4, 3)])).is_err());
        let mut b = batch(&[1], &[]);
        b.votes[0].button = 5;
        assert!(validate(&b).is_err());
        let mut b = batch(&[1], &[]);
        b.votes[0].ts_ms = u64::MAX;
        assert!(validate(&b).is_err());
        let mut b = batch(&[1], &[]);
        b.gateway_id.clear();
        assert!(validate(&b).is_err());
        // PostgreSQL refuses NUL in text: such a batch would fail (unacknowledged) forever.
        let mut b = batch(&[1], &[]);
        b.site.push('\0');
        assert_eq!(
            validate(&b).map_err(|e| e.to_string()),
            Err("batch 1: a NUL character in `site`".to_string())
        );
        let mut b = batch(&[1], &[]);
        b.votes[0].terminal = "t\u{0}1".into();
        assert!(validate(&b).is_err());
    }

    #[test]
    fn only_a_batch_touching_the_mark_may_advance_it() {
        assert!(may_advance(0, &batch(&[1, 2], &[])));
        assert!(may_advance(10, &batch(&[5, 11], &[])));
        assert!(may_advance(10, &batch(&[20], &[(11, 19)])));
        assert!(
            !may_advance(10, &batch(&[3, 4], &[])),
            "a redelivery below it"
        );
        assert!(!may_advance(10, &batch(&[13], &[])), "above a gap");
        assert!(!may_advance(10, &batch(&[], &[])));
    }

    #[test]
    fn the_mark_stops_at_the_first_gap() {
        assert_eq!(advance(0, &[(1, 1), (2, 2), (3, 10)]), 10);
        assert_eq!(advance(0, &[(1, 5), (3, 4), (6, 6), (8, 9)]), 6);
        assert_eq!(advance(5, &[(7, 9)]), 5);
        assert_eq!(advance(5, &[]), 5);
    }

    #[test]
    fn received_and_dropped_seqs_leave_nothing_missing() {
        let runs = [span(1, 10, 0), span(21, 30, 0)];
        let dropped = [span(11, 20, 0), span(15, 22, 0)];
        let audit = audit(&runs, &dropped, Some((30, 0)), 1_000_000, 300_000);
        assert_eq!(audit.received, 20);
        assert_eq!(audit.dropped, 10, "11..=20; 21 and 22 were received");
        assert!(audit.missing.is_empty() && audit.pending.is_empty());
        assert_eq!((audit.contiguous_through, audit.highest), (30, 30));
    }

    #[test]
    fn an_old_gap_is_missing_and_a_young_one_pending() {
        let now = 1_000_000;
        let runs = [span(1, 4, 0), span(6, 8, 0), span(12, 12, now - 1000)];
        let audit = audit(&runs, &[], Some((12, now - 1000)), now, 300_000);
        assert_eq!(audit.missing, [Gap { first: 5, last: 5 }]);
        assert_eq!(audit.pending, [Gap { first: 9, last: 11 }]);
        assert_eq!((audit.contiguous_through, audit.highest), (4, 12));
        assert_eq!((audit.missing_count(), audit.pending_count()), (1, 3));
    }

    #[test]
    fn seqs_missing_below_the_first_received_count() {
        let audit = audit(&[span(3, 5, 0)], &[], None, 10, 0);
        assert_eq!(audit.missing, [Gap { first: 1, last: 2 }]);
        assert_eq!(audit.contiguous_through, 0);
    }

    #[test]
    fn deleting_the_highest_votes_still_shows_them_missing() {
        let audit = audit(&[span(1, 7, 0)], &[], Some((10, 0)), 10, 0);
        assert_eq!(audit.missing, [Gap { first: 8, last: 10 }]);
        assert_eq!((audit.contiguous_through, audit.highest), (7, 10));
        let whole = super::audit(&[span(1, 10, 0)], &[], Some((10, 0)), 10, 0);
        assert!(whole.missing.is_empty());
        assert_eq!(whole.highest, 10);
    }

    #[test]
    fn the_live_view_trusts_the_mark_and_audits_above_it() {
        let span = |first, last, arrived_ms| Span {
            first,
            last,
            arrived_ms,
        };
        // Mark at 100; 101-110 received, 111-115 missing (old), 116-120 received; 40-49 were
        // dropped, 45 of them arrived anyway.
        let runs = [span(45, 45, 0), span(98, 110, 0), span(116, 120, 0)];
        let dropped = [span(40, 49, 0), span(97, 97, 0)];
        let live = audit_live(100, 111, &runs, &dropped, Some((120, 0)), 10_000, 1_000);
        assert_eq!(live.received, 111);
        assert_eq!(live.dropped, 10, "40-49 but 45, and 97");
        assert_eq!(
            live.missing,
            [Gap {
                first: 111,
                last: 115
            }]
        );
        assert!(live.pending.is_empty());
        assert_eq!((live.contiguous_through, live.highest), (110, 120));
        // The same gap, younger than the grace period, is pending.
        let young = [span(101, 110, 0), span(116, 120, 9_500)];
        let live = audit_live(100, 115, &young, &[], Some((120, 9_500)), 10_000, 1_000);
        assert_eq!((live.missing_count(), live.pending_count()), (0, 5));
        // Nothing above the mark: all accounted.
        let live = audit_live(120, 120, &[], &[], Some((120, 0)), 10_000, 1_000);
        assert_eq!(
            (live.missing_count(), live.pending_count(), live.highest),
            (0, 0, 120)
        );
    }
}

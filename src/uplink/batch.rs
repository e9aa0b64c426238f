//! Cutting votes into batches that respect the vote and byte limits. Pure.

use super::payload::{encode, BatchPayload, DroppedRange, PayloadFormat, WireVote, FORMAT_VERSION};

/// Bytes of a batch besides its votes, at most: an empty batch with the largest ids, plus room
/// for the largest vote-count varint.
fn header_size(
    gateway_id: &str,
    site: &str,
    dropped: &[DroppedRange],
    format: PayloadFormat,
) -> usize {
    let empty = BatchPayload {
        format: FORMAT_VERSION,
        gateway_id: gateway_id.to_string(),
        site: site.to_string(),
        batch_id: u64::MAX,
        first_seq: u64::MAX,
        last_seq: u64::MAX,
        votes: Vec::new(),
        dropped: dropped.to_vec(),
    };
    encode(&empty, format).len() + 4
}

/// Takes as many of `votes` (in order) as fit in `max_votes` and `max_bytes`, and builds the
/// batch, reporting `dropped`. Returns the batch and how many votes it took (at least one: a
/// single vote always goes, so that one oversized vote cannot block the journal).
pub fn cut(
    votes: &[WireVote],
    dropped: &[DroppedRange],
    gateway_id: &str,
    site: &str,
    format: PayloadFormat,
    max_votes: usize,
    max_bytes: usize,
) -> Option<(BatchPayload, usize)> {
    let first = votes.first()?;
    let mut size = header_size(gateway_id, site, dropped, format);
    let mut taken = 0;
    for vote in votes.iter().take(max_votes.max(1)) {
        let vote_size = format.vote_size(vote);
        if taken > 0 && size + vote_size > max_bytes {
            break;
        }
        size += vote_size;
        taken += 1;
    }
    let chosen = &votes[..taken];
    let last = chosen.last().map_or(first.seq, |v| v.seq);
    Some((
        BatchPayload {
            format: FORMAT_VERSION,
            gateway_id: gateway_id.to_string(),
            site: site.to_string(),
            batch_id: first.seq,
            first_seq: first.seq,
            last_seq: last,
            votes: chosen.to_vec(),
            dropped: dropped.to_vec(),
        },
        taken,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::payload::encode;
    use super::*;
    use proptest::prelude::*;

    fn vote(seq: u64, terminal: &str) -> WireVote {
        WireVote {
            seq,
            terminal: terminal.into(),
            button: 3,
            ts_ms: 1_795_000_000_000 + seq,
            clock_synced: true,
            restamped: false,
            filtered: false,
            term_seq: Some(seq),
        }
    }

    #[test]
    fn respects_the_vote_limit() {
        let votes: Vec<WireVote> = (1..=10).map(|s| vote(s, "a")).collect();
        let (batch, taken) = cut(
            &votes,
            &[],
            "gw",
            "site",
            PayloadFormat::Postcard,
            4,
            1 << 20,
        )
        .expect("batch");
        assert_eq!(
            (taken, batch.first_seq, batch.last_seq, batch.batch_id),
            (4, 1, 4, 1)
        );
    }

    #[test]
    fn a_single_vote_always_goes() {
        let votes = vec![vote(1, &"x".repeat(64))];
        let (_, taken) =
            cut(&votes, &[], "gw", "site", PayloadFormat::Json, 10, 10).expect("batch");
        assert_eq!(taken, 1);
        assert!(cut(&[], &[], "gw", "site", PayloadFormat::Json, 10, 10).is_none());
    }

    proptest! {
        #[test]
        fn encoded_batches_never_exceed_the_byte_limit(
            count in 1usize..400,
            id_len in 1usize..64,
            max_bytes in 300usize..20_000,
            json in any::<bool>(),
            ranges in 0usize..8,
        ) {
            let format = if json { PayloadFormat::Json } else { PayloadFormat::Postcard };
            let dropped: Vec<DroppedRange> = (0..ranges as u64)
                .map(|r| DroppedRange { first_seq: u64::MAX / 4 + 100 * r, last_seq: u64::MAX / 4 + 100 * r + 50 })
                .collect();
            let votes: Vec<WireVote> = (0..count as u64).map(|s| vote(u64::MAX / 2 + s, &"t".repeat(id_len))).collect();
            let mut rest = &votes[..];
            while !rest.is_empty() {
                let (batch, taken) = cut(rest, &dropped, "gateway-with-a-long-name", "site-042", format, 1000, max_bytes).expect("batch");
                prop_assert!(taken >= 1);
                let size = encode(&batch, format).len();
                prop_assert!(size <= max_bytes || taken == 1, "{size} bytes > {max_bytes}");
                rest = &rest[taken..];
            }
        }
    }
}

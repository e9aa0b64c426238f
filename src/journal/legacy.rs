//! Converting a data folder written by a release before blocks (format 1: the folder one sled
//! database, a key per vote, per duplicate-window entry and per minute count) into a generation.
//!
//! The old database is only read; the new generation is written beside it and the pointer file
//! switched to it, so a crash at any moment leaves either the old journal (converted again at the
//! next start) or the new one (the old files are then removed by [`layout::tidy`]).

use std::path::Path;

use super::block::{self, VoteStream};
use super::counts::Counts;
use super::dedup::{DedupWindow, DEDUP_WINDOW};
use super::drops::DropRanges;
use super::record::{self, v1, Meta, RecordError};
use super::segments::Segments;
use super::store::{Store, StoreError};
use super::{
    corrupt, segment_bytes, storage, storage_of, write_generation, JournalError, Limits, Snapshot,
};
use crate::model::Seq;

/// Writes generation `number` from the format-1 journal in `dir`.
pub(super) fn convert(dir: &Path, number: u64, limits: &Limits) -> Result<(), JournalError> {
    let old = Store::open(dir, limits.cache_bytes).map_err(|e| storage(dir, e))?;
    let meta = match old.get(record::META_KEY).map_err(|e| storage(dir, e))? {
        Some(value) => v1::decode_meta(&value).map_err(|cause| corrupt(dir, "meta", cause))?,
        None => v1::MetaV1 {
            next_seq: 1,
            ..v1::MetaV1::default()
        },
    };
    let first_vote = old
        .range_from(&[v1::VOTE_PREFIX], &[v1::VOTE_PREFIX], 1)
        .map_err(|e| storage(dir, e))?
        .first()
        .and_then(|(key, _)| v1::seq_of_vote_key(key));
    let last_vote = old
        .last_with_prefix(&[v1::VOTE_PREFIX])
        .map_err(|e| storage(dir, e))?
        .and_then(|(key, _)| v1::seq_of_vote_key(&key));
    let next_seq = meta.next_seq.max(last_vote.map_or(1, |s| s + 1));
    let head = first_vote.unwrap_or(next_seq);

    let mut dedup_entries = Vec::new();
    old.for_each_prefix(&[v1::DEDUP_PREFIX], |key, value| {
        if let (Some((terminal, term_seq)), Some(seq)) =
            (v1::parse_dedup_key(key), v1::decode_seq(value))
        {
            dedup_entries.push((seq, terminal, term_seq));
        }
        Ok::<(), StoreError>(())
    })
    .map_err(|e| storage(dir, e))?;
    dedup_entries.sort_by_key(|(seq, _, _)| *seq);
    let mut dedup = DedupWindow::new(DEDUP_WINDOW);
    for (seq, terminal, term_seq) in &dedup_entries {
        dedup.remember(terminal, *term_seq, *seq);
    }

    let mut counts = Counts::new();
    old.for_each_prefix(&[v1::MINUTE_PREFIX], |key, value| {
        if let Some((minute, terminal)) = v1::parse_minute_key(key) {
            let tally = v1::decode_minute(value)
                .map_err(|cause| corrupt(dir, &format!("minute {minute} {terminal}"), cause))?;
            counts.load_legacy_minute(minute, terminal, tally);
        }
        Ok::<(), JournalError>(())
    })
    .map_err(storage_of(dir))?;
    counts.finish_load();

    let new_meta = Meta {
        epoch: 0,
        next_seq,
        tail_first: next_seq,
        head,
        dropped: meta.dropped,
    };
    let tail = VoteStream::new();
    // Format 1 did not keep which seqs it dropped: nothing to report.
    let drops = DropRanges::new();
    let snapshot = Snapshot {
        meta: new_meta,
        drops: &drops,
        tail: &tail,
        dedup: dedup.all_records(),
        counts: counts.all_records(next_seq),
    };
    // The old votes become sealed blocks in fresh segment files (any left by an earlier attempt
    // that crashed were removed with the rest of its leftovers).
    let (mut segments, _) = Segments::open(dir, segment_bytes(limits), head, head)
        .map_err(|e| storage(dir, e.into()))?;
    let mut converted = 0u64;
    let mut stream = VoteStream::new();
    let mut first: Seq = head;
    let mut expected = head;
    let mut sealed: Vec<(Seq, u64, Vec<u8>)> = Vec::new();
    let mut flush = |sealed: &mut Vec<(Seq, u64, Vec<u8>)>| -> Result<(), JournalError> {
        let blocks: Vec<(Seq, u64, &[u8])> = sealed
            .iter()
            .map(|(first, count, value)| (*first, *count, value.as_slice()))
            .collect();
        segments
            .append(&blocks)
            .map_err(|e| storage(dir, e.into()))?;
        sealed.clear();
        Ok(())
    };
    old.for_each_prefix(&[v1::VOTE_PREFIX], |key, value| {
        let Some(seq) = v1::seq_of_vote_key(key) else {
            return Ok(());
        };
        if seq != expected {
            return Err(corrupt(
                dir,
                &format!("seq {expected}"),
                RecordError::Corrupt(format!(
                    "the format-1 journal has no vote {expected} but has {seq}: cannot convert it"
                )),
            ));
        }
        let vote = v1::decode_vote(seq, value)
            .map_err(|cause| corrupt(dir, &format!("seq {seq}"), cause))?;
        stream.push(&vote);
        expected += 1;
        converted += 1;
        let full = stream.count() >= limits.tuning.block_votes.max(1)
            || block::block_len(&stream) >= limits.tuning.block_bytes;
        if full {
            let count = stream.count() as u64;
            sealed.push((
                first,
                count,
                block::encode_block(&std::mem::take(&mut stream)),
            ));
            first = expected;
            if sealed.len() >= 64 {
                flush(&mut sealed)?;
            }
        }
        Ok(())
    })
    .map_err(storage_of(dir))?;
    if !stream.is_empty() {
        sealed.push((first, stream.count() as u64, block::encode_block(&stream)));
    }
    flush(&mut sealed)?;
    write_generation(dir, number, limits, snapshot)?;
    log::info!(
        data_dir:% = dir.display();
        "journal converted from format 1: {converted} buffered votes, {} duplicate-window entries, {} count records, next seq {next_seq}",
        dedup_entries.len(),
        counts.records()
    );
    Ok(())
}

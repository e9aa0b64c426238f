//! The journal: the gateway's single source of truth for votes.
//!
//! Sources hand presses to the journal; it numbers them, stores them in sled and makes them
//! durable before anyone hears about them. The uplink reads the oldest unacknowledged votes and,
//! once the broker has acknowledged them, deletes them with [`Journal::ack_through`].
//!
//! # Invariants
//! 1. **Durable before visible.** [`Journal::append`] returns only after the votes are flushed
//!    and fsynced; nothing reads a vote that is not durable (the journal is single-writer and,
//!    after any storage error, drops its handle and re-reads the disk before serving again).
//! 2. **Seqs are never reused.** `next_seq` is stored in the same atomic batch as the votes that
//!    consumed it. A seq handed out in a batch that never became durable may be handed out again,
//!    but nobody ever saw it.
//! 3. **Dedup survives restarts.** A `(terminal, term_seq)` already accepted maps to its seq; the
//!    window ([`dedup::DEDUP_WINDOW`] per terminal) is stored with the votes.
//! 4. **Nothing is lost silently.** When the journal is full, `drop-oldest` deletes the oldest
//!    votes and `reject-new` refuses new ones; both count every vote lost in `dropped`, stored with
//!    the change it counts.
//! 5. **Counters match contents.** `depth` and `charged_bytes` are stored in the same batch as
//!    every insert and delete.
//!
//! # Key layout (one sled tree)
//! | key | value |
//! | --- | --- |
//! | `v` + seq (u64 BE) | vote record, format byte + postcard ([`record`]) |
//! | `d` + id length (u8) + terminal id + term_seq (u64 BE) | seq (u64 BE) |
//! | `m` | [`record::Meta`]: next_seq, dropped, depth, charged bytes |
//! | `c` + UTC minute (u32 BE) + id length (u8) + terminal id | [`record::MinuteTally`]: that minute's votes per button |
//!
//! # Minute counts
//! Every batch that accepts votes also updates, atomically, the count of votes per terminal,
//! button and UTC minute ([`Journal::minute_tallies`]), kept for [`MINUTE_RETENTION`] minutes
//! behind the newest minute seen. The local tallies rebuild from them after a restart: they
//! survive crashes and the uplink deleting forwarded votes, and they cost one small write per
//! batch and terminal.
//!
//! # Size bound
//! Each buffered vote is charged its key, its value and [`record::PER_VOTE_OVERHEAD`] against
//! `max-disk-size`; deletes free their charge. The exact accounting keeps the behaviour when
//! full predictable; the benchmark checks that sled's files stay below the bound.

pub mod dedup;
pub mod record;
mod store;
mod task;

use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Press, Seq, TerminalId, Vote};
use dedup::{DedupWindow, DEDUP_WINDOW};
use record::{Meta, MinuteTally, RecordError};
use store::{Store, StoreError, WriteBatch};

pub use task::{spawn, JournalHandle, JournalService};

/// The journal's minute counts `(minute, terminal, counts)` and the `next_seq` they are
/// consistent with.
pub type MinuteTallies = (Vec<(u32, TerminalId, MinuteTally)>, Seq);

/// The smallest `max-disk-size` accepted: a group of appends must always fit.
pub const MIN_DISK_BYTES: u64 = 1024 * 1024;

/// How large the journal's folder can grow: `max-disk-size` bounds what the buffered votes are
/// charged, but sled 0.34 keeps garbage besides them. It cleans a segment only from its
/// periodic flusher, which the journal turns off (see `store.rs`), so segments that still hold
/// a live page (a terminal's duplicate window, the minute counts) are never rewritten. Measured
/// by `benches/journal.rs` (BENCHMARKS.md § Disk use), terminals pressed four times a minute
/// around the clock, votes at the bound: 1.03–1.28× the bound with 1 terminal, up to 3.5× (a
/// 16 MiB bound) with 10 and 4.4× with 30, the excess shrinking towards 1.5× as the bound grows.
/// This estimate is above every measured case.
pub fn folder_estimate(max_disk_bytes: u64, terminals: usize) -> u64 {
    const MIB: u64 = 1024 * 1024;
    max_disk_bytes / 5 * 8 + 4 * MIB * terminals as u64 + 8 * MIB
}

/// At most this many deletes go into one atomic batch when acknowledging (see
/// [`store::MAX_BATCH_OPS`]).
const ACK_CHUNK: usize = store::MAX_BATCH_OPS - 1;
/// At most this many presses go into one atomic batch: each takes up to three writes (vote,
/// dedup entry, evicted dedup entry) plus the deletes of drop-oldest, and one meta write ends it.
pub const PRESSES_PER_BATCH: usize = 32;
/// How far back minute counts are kept (3 days: a tally day is at most 25 hours).
pub const MINUTE_RETENTION: u32 = 3 * 24 * 60;
/// Most expired minute counts deleted per batch.
const MINUTE_PRUNE_PER_BATCH: usize = 16;

/// What to do with a new vote when the journal has reached `max-disk-size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Delete the oldest unsent votes to make room (counted as dropped). The default: recent
    /// feedback matters more than feedback from an outage weeks ago.
    DropOldest,
    /// Refuse the new vote. Serial terminals keep and retransmit it; presses that cannot be
    /// retransmitted (GPIO, simulated) are counted as dropped.
    RejectNew,
}

/// Size limits of the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bound on the buffered votes' charged size (see the module doc).
    pub max_disk_bytes: u64,
    /// Behaviour at the bound.
    pub when_full: WhenFull,
    /// sled's page cache; its default (1 GiB) is far too much for a Pi.
    pub cache_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_disk_bytes: 256 * 1024 * 1024,
            when_full: WhenFull::DropOldest,
            cache_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A journal failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the database failed; the journal reopens it before the next operation.
    #[error("journal storage in {}: {cause}", dir.display())]
    Storage {
        /// The data folder.
        dir: PathBuf,
        /// What failed.
        cause: StoreError,
    },
    /// A stored record cannot be decoded.
    #[error("journal record {key} in {}: {cause}", dir.display())]
    Record {
        /// The data folder.
        dir: PathBuf,
        /// Which record (`seq 17`, `meta`, …).
        key: String,
        /// What is wrong.
        cause: RecordError,
    },
    /// The journal task has stopped (shutdown or crash).
    #[error("the journal is not running")]
    Stopped,
}

/// What became of one appended press.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored durably under a new seq.
    Accepted(Vote),
    /// The same `(terminal, term_seq)` was accepted before, under this seq; nothing was stored.
    Duplicate(Seq),
    /// The journal is full and `when-full = "reject-new"`: not stored.
    Refused,
}

impl Outcome {
    /// The vote's seq, if it is (or already was) in the journal: the press may be acknowledged.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Outcome::Accepted(vote) => Some(vote.seq),
            Outcome::Duplicate(seq) => Some(*seq),
            Outcome::Refused => None,
        }
    }
}

/// A snapshot of the journal's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Votes buffered, waiting for the uplink.
    pub depth: u64,
    /// The oldest buffered vote's seq.
    pub oldest_seq: Option<Seq>,
    /// The oldest buffered vote's wall time (ms), for "oldest unsent age".
    pub oldest_ts_ms: Option<u64>,
    /// The seq the next vote gets.
    pub next_seq: Seq,
    /// Votes lost to the size bound, ever.
    pub dropped: u64,
    /// Charged size of the buffered votes.
    pub charged_bytes: u64,
    /// The bound on `charged_bytes`.
    pub max_disk_bytes: u64,
    /// False while the database is unavailable (a storage error, waiting to reopen).
    pub available: bool,
    /// Durable commits (flush + fsync) since the journal was opened; with group commit, several
    /// appends share one.
    pub commits: u64,
    /// Since start: presses accepted, of them filtered, retransmissions answered from the dedup
    /// window, and presses refused because the journal was full.
    pub outcomes: OutcomeCounts,
}

/// What happened to appended presses, since the journal was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Stored under a new seq.
    pub accepted: u64,
    /// Of those, marked filtered by the anti-abuse rule.
    pub filtered: u64,
    /// Already stored (retransmissions).
    pub duplicates: u64,
    /// Refused: journal full with `reject-new`.
    pub refused: u64,
}

/// The journal's state: an open store and the in-memory mirror of its counters and dedup window.
/// Single-threaded; [`spawn`] runs it on its own thread with group commit.
pub struct Journal {
    dir: PathBuf,
    limits: Limits,
    open: Option<OpenJournal>,
    /// Drops counted while the store was unavailable, added to `meta.dropped` on the next write.
    unsaved_drops: u64,
    commits: u64,
    outcomes: OutcomeCounts,
}

struct OpenJournal {
    store: Store,
    meta: Meta,
    dedup: DedupWindow,
    minutes: BTreeMap<(u32, TerminalId), MinuteTally>,
    oldest: Option<Vote>,
    /// Deletes applied but not yet made durable.
    unsynced_acks: bool,
}

impl Journal {
    /// Opens the journal in `dir`, creating it if needed.
    pub fn open(dir: &Path, limits: Limits) -> Result<Journal, JournalError> {
        let open = OpenJournal::load(dir, &limits)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            limits,
            open: Some(open),
            unsaved_drops: 0,
            commits: 0,
            outcomes: OutcomeCounts::default(),
        })
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores presses durably; one flush serves them all (group commit). They are written in
    /// atomic batches of [`PRESSES_PER_BATCH`]. Outcomes are in the order of `presses`. On error
    /// nothing was acknowledged: the caller may retry.
    pub fn append(&mut self, presses: Vec<Press>) -> Result<Vec<Outcome>, JournalError> {
        let limits = self.limits;
        let unsaved_drops = self.unsaved_drops;
        let dropped_before = self.stats().dropped;
        let retransmittable: Vec<bool> = presses.iter().map(|p| p.term_seq.is_some()).collect();
        let result = self.with_store(|open, dir| {
            open.meta.dropped += unsaved_drops;
            let mut outcomes = Vec::with_capacity(presses.len());
            let mut presses = presses.into_iter().peekable();
            while presses.peek().is_some() {
                let chunk: Vec<Press> = presses.by_ref().take(PRESSES_PER_BATCH).collect();
                outcomes.extend(open.append(chunk, &limits, dir)?);
            }
            open.make_durable(dir)?;
            Ok(outcomes)
        });
        match result {
            Ok(outcomes) => {
                self.unsaved_drops = 0;
                self.commits += 1;
                for outcome in &outcomes {
                    match outcome {
                        Outcome::Accepted(vote) => {
                            self.outcomes.accepted += 1;
                            self.outcomes.filtered += u64::from(vote.filtered);
                        }
                        Outcome::Duplicate(_) => self.outcomes.duplicates += 1,
                        Outcome::Refused => self.outcomes.refused += 1,
                    }
                }
                self.report_drops(dropped_before);
                Ok(outcomes)
            }
            Err(err) => {
                // Presses nobody will send again are lost now: count them.
                self.unsaved_drops += retransmittable.iter().filter(|r| !**r).count() as u64;
                Err(err)
            }
        }
    }

    /// Warns when votes were dropped: on the first drop after a quiet spell and then every
    /// 1000 drops, so that a journal that stays full does not flood the log.
    fn report_drops(&self, before: u64) {
        let now = self.stats().dropped;
        if now > before && (before % 1000 == 0 || now / 1000 > before / 1000) {
            log::warn!(
                dropped_total = now;
                "journal full (max-disk-size {}): {} votes dropped so far",
                crate::config::units::format_size(self.limits.max_disk_bytes),
                now
            );
        }
    }

    /// Deletes every buffered vote with a seq up to `through` (the broker acknowledged them).
    /// Returns how many were deleted. Not flushed by itself: the next append or
    /// [`Journal::sync`] makes it durable; if it is lost in a crash the votes are sent again,
    /// which cloud ingest deduplicates.
    pub fn ack_through(&mut self, through: Seq) -> Result<u64, JournalError> {
        self.with_store(|open, dir| open.ack_through(through, dir))
    }

    /// Makes acknowledged deletes durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.with_store(|open, dir| open.sync(dir))
    }

    /// Up to `max` buffered votes with a seq above `after`, oldest first.
    pub fn read_after(&mut self, after: Seq, max: usize) -> Result<Vec<Vote>, JournalError> {
        self.with_store(|open, dir| open.read_after(after, max, dir))
    }

    /// The current counters.
    pub fn stats(&self) -> JournalStats {
        match &self.open {
            Some(open) => JournalStats {
                depth: open.meta.depth,
                oldest_seq: open.oldest.as_ref().map(|v| v.seq),
                oldest_ts_ms: open.oldest.as_ref().map(|v| v.ts_ms),
                next_seq: open.meta.next_seq,
                dropped: open.meta.dropped + self.unsaved_drops,
                charged_bytes: open.meta.charged_bytes,
                max_disk_bytes: self.limits.max_disk_bytes,
                available: true,
                commits: self.commits,
                outcomes: self.outcomes,
            },
            None => JournalStats {
                dropped: self.unsaved_drops,
                max_disk_bytes: self.limits.max_disk_bytes,
                commits: self.commits,
                outcomes: self.outcomes,
                ..JournalStats::default()
            },
        }
    }

    /// The stored minute counts, and the `next_seq` they are consistent with: they include every
    /// vote with a lower seq and none with a higher one.
    pub fn minute_tallies(&mut self) -> Result<MinuteTallies, JournalError> {
        self.with_store(|open, _| {
            let tallies = open
                .minutes
                .iter()
                .map(|((minute, terminal), tally)| (*minute, terminal.clone(), *tally))
                .collect();
            Ok((tallies, open.meta.next_seq))
        })
    }

    /// Bytes sled's files take on disk, if the store is open.
    pub fn size_on_disk(&self) -> Option<u64> {
        self.open.as_ref()?.store.size_on_disk().ok()
    }

    /// Whether the store is open (false after a storage error until a reopen succeeds).
    pub fn is_available(&self) -> bool {
        self.open.is_some()
    }

    /// Whether acknowledged deletes wait for a flush.
    pub fn has_unsynced_acks(&self) -> bool {
        self.open.as_ref().is_some_and(|open| open.unsynced_acks)
    }

    /// Runs `op` on the open store, reopening it first if an earlier error closed it. Any storage
    /// error closes the store, so that nothing in memory that was not durable is ever served.
    fn with_store<T>(
        &mut self,
        op: impl FnOnce(&mut OpenJournal, &Path) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        if self.open.is_none() {
            self.open = Some(OpenJournal::load(&self.dir, &self.limits)?);
            log::warn!(data_dir:% = self.dir.display(); "journal reopened after a storage error");
        }
        let Some(open) = self.open.as_mut() else {
            return Err(JournalError::Stopped);
        };
        let result = op(open, &self.dir);
        if let Err(err @ JournalError::Storage { .. }) = &result {
            log::error!(data_dir:% = self.dir.display(); "journal closed after a storage error: {err}");
            self.open = None;
        }
        result
    }
}

impl Drop for Journal {
    /// A clean close makes acknowledged deletes durable, as a shutdown does.
    fn drop(&mut self) {
        if self.has_unsynced_acks() {
            if let Err(err) = self.sync() {
                log::warn!("journal close: acknowledged deletes not made durable: {err}");
            }
        }
    }
}

impl OpenJournal {
    fn load(dir: &Path, limits: &Limits) -> Result<OpenJournal, JournalError> {
        let store = Store::open(dir, limits.cache_bytes).map_err(|cause| storage(dir, cause))?;
        let mut meta = match store.get(record::META_KEY).map_err(|e| storage(dir, e))? {
            Some(bytes) => Meta::decode(&bytes).map_err(|cause| JournalError::Record {
                dir: dir.to_path_buf(),
                key: "meta".to_string(),
                cause,
            })?,
            None => Meta::new(),
        };
        // Belt and braces for invariant 2: never number below a stored vote.
        if let Some((key, _)) = store
            .last_with_prefix(&[record::VOTE_PREFIX])
            .map_err(|e| storage(dir, e))?
        {
            if let Some(last) = record::seq_of_vote_key(&key) {
                meta.next_seq = meta.next_seq.max(last + 1);
            }
        }
        let dedup = load_dedup(&store, dir)?;
        let minutes = load_minutes(&store, dir)?;
        let mut open = OpenJournal {
            store,
            meta,
            dedup,
            minutes,
            oldest: None,
            unsynced_acks: false,
        };
        open.refresh_oldest(dir)?;
        Ok(open)
    }

    fn append(
        &mut self,
        presses: Vec<Press>,
        limits: &Limits,
        dir: &Path,
    ) -> Result<Vec<Outcome>, JournalError> {
        let mut batch = WriteBatch::default();
        let mut outcomes = Vec::with_capacity(presses.len());
        // Oldest stored votes not yet deleted by this batch, for drop-oldest.
        let mut drop_cursor = self.oldest.as_ref().map_or(self.meta.next_seq, |v| v.seq);
        let first_new_seq = self.meta.next_seq;
        let mut touched_minutes = BTreeSet::new();
        for press in presses {
            if let Some(term_seq) = press.term_seq {
                if let Some(seq) = self.dedup.lookup(&press.terminal, term_seq) {
                    outcomes.push(Outcome::Duplicate(seq));
                    continue;
                }
            }
            let vote = Vote::accept(self.meta.next_seq, press);
            let value = record::encode_vote(&vote);
            let cost = record::vote_cost(value.len());
            if self.meta.charged_bytes + cost > limits.max_disk_bytes {
                let room = match limits.when_full {
                    WhenFull::DropOldest => self.drop_oldest(
                        cost,
                        limits,
                        &mut drop_cursor,
                        first_new_seq,
                        &mut batch,
                        dir,
                    )?,
                    WhenFull::RejectNew => false,
                };
                if !room {
                    if vote.term_seq.is_none() {
                        self.meta.dropped += 1;
                    }
                    outcomes.push(Outcome::Refused);
                    continue;
                }
            }
            batch.put(&record::vote_key(vote.seq), &value);
            if let Some(term_seq) = vote.term_seq {
                batch.put(
                    &record::dedup_key(&vote.terminal, term_seq),
                    &record::encode_seq(vote.seq),
                );
                if let Some(evicted) = self.dedup.remember(&vote.terminal, term_seq, vote.seq) {
                    batch.delete(&record::dedup_key(&vote.terminal, evicted));
                }
            }
            self.meta.next_seq += 1;
            self.meta.depth += 1;
            self.meta.charged_bytes += cost;
            let minute = (record::minute_of(vote.ts_ms), vote.terminal.clone());
            self.minutes.entry(minute.clone()).or_default().add(&vote);
            touched_minutes.insert(minute);
            outcomes.push(Outcome::Accepted(vote));
        }
        for key in &touched_minutes {
            if let Some(tally) = self.minutes.get(key) {
                batch.put(&record::minute_key(key.0, &key.1), &tally.encode());
            }
        }
        self.prune_minutes(&mut batch);
        batch.put(record::META_KEY, &self.meta.encode());
        self.store.apply(batch).map_err(|e| storage(dir, e))?;
        if self.oldest.is_none() || drop_cursor != self.oldest.as_ref().map_or(0, |v| v.seq) {
            self.refresh_oldest(dir)?;
        }
        Ok(outcomes)
    }

    /// Deletes a few minute counts older than [`MINUTE_RETENTION`] behind the newest minute.
    fn prune_minutes(&mut self, batch: &mut WriteBatch) {
        let Some(newest) = self.minutes.keys().map(|(minute, _)| *minute).max() else {
            return;
        };
        let horizon = newest.saturating_sub(MINUTE_RETENTION);
        let expired: Vec<(u32, TerminalId)> = self
            .minutes
            .keys()
            .take_while(|(minute, _)| *minute < horizon)
            .take(MINUTE_PRUNE_PER_BATCH)
            .cloned()
            .collect();
        for key in expired {
            batch.delete(&record::minute_key(key.0, &key.1));
            self.minutes.remove(&key);
        }
    }

    /// Flushes and fsyncs everything applied so far, appends and acks alike.
    fn make_durable(&mut self, dir: &Path) -> Result<(), JournalError> {
        self.store.make_durable().map_err(|e| storage(dir, e))?;
        self.unsynced_acks = false;
        Ok(())
    }

    /// Deletes stored votes, oldest first, until `cost` more bytes fit. Only votes stored before
    /// this batch are candidates. Returns false when even an empty journal would not make room.
    fn drop_oldest(
        &mut self,
        cost: u64,
        limits: &Limits,
        cursor: &mut Seq,
        first_new_seq: Seq,
        batch: &mut WriteBatch,
        dir: &Path,
    ) -> Result<bool, JournalError> {
        while self.meta.charged_bytes + cost > limits.max_disk_bytes {
            if *cursor >= first_new_seq {
                return Ok(false);
            }
            let oldest = self
                .store
                .range_from(&[record::VOTE_PREFIX], &record::vote_key(*cursor), 8)
                .map_err(|e| storage(dir, e))?;
            let mut dropped_any = false;
            for (key, value) in oldest {
                let Some(seq) = record::seq_of_vote_key(&key) else {
                    continue;
                };
                if seq >= first_new_seq || self.meta.charged_bytes + cost <= limits.max_disk_bytes {
                    break;
                }
                batch.delete(&key);
                self.meta.charged_bytes = self
                    .meta
                    .charged_bytes
                    .saturating_sub(record::vote_cost(value.len()));
                self.meta.depth = self.meta.depth.saturating_sub(1);
                self.meta.dropped += 1;
                *cursor = seq + 1;
                dropped_any = true;
            }
            if !dropped_any {
                *cursor = first_new_seq;
            }
        }
        Ok(true)
    }

    fn ack_through(&mut self, through: Seq, dir: &Path) -> Result<u64, JournalError> {
        let mut deleted = 0;
        while let Some(oldest) = self.oldest.as_ref().filter(|v| v.seq <= through) {
            let chunk = self
                .store
                .range_from(
                    &[record::VOTE_PREFIX],
                    &record::vote_key(oldest.seq),
                    ACK_CHUNK,
                )
                .map_err(|e| storage(dir, e))?;
            let mut batch = WriteBatch::default();
            for (key, value) in &chunk {
                match record::seq_of_vote_key(key) {
                    Some(seq) if seq <= through => {
                        batch.delete(key);
                        self.meta.depth = self.meta.depth.saturating_sub(1);
                        self.meta.charged_bytes = self
                            .meta
                            .charged_bytes
                            .saturating_sub(record::vote_cost(value.len()));
                        deleted += 1;
                    }
                    _ => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let complete = batch.len() < chunk.len() || chunk.len() < ACK_CHUNK;
            batch.put(record::META_KEY, &self.meta.encode());
            self.store.apply(batch).map_err(|e| storage(dir, e))?;
            self.unsynced_acks = true;
            self.refresh_oldest(dir)?;
            if complete {
                break;
            }
        }
        Ok(deleted)
    }

    fn sync(&mut self, dir: &Path) -> Result<(), JournalError> {
        if self.unsynced_acks {
            self.make_durable(dir)?;
        }
        Ok(())
    }

    fn read_after(&self, after: Seq, max: usize, dir: &Path) -> Result<Vec<Vote>, JournalError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.store
            .range_from(&[record::VOTE_PREFIX], &record::vote_key(start), max)
            .map_err(|e| storage(dir, e))?
            .into_iter()
            .filter_map(|(key, value)| Some((record::seq_of_vote_key(&key)?, value)))
            .map(|(seq, value)| decode(dir, seq, &value))
            .collect()
    }

    fn refresh_oldest(&mut self, dir: &Path) -> Result<(), JournalError> {
        let first = self
            .store
            .range_from(&[record::VOTE_PREFIX], &[record::VOTE_PREFIX], 1)
            .map_err(|e| storage(dir, e))?;
        self.oldest = match first.first() {
            Some((key, value)) => match record::seq_of_vote_key(key) {
                Some(seq) => Some(decode(dir, seq, value)?),
                None => None,
            },
            None => None,
        };
        Ok(())
    }
}

fn load_dedup(store: &Store, dir: &Path) -> Result<DedupWindow, JournalError> {
    let mut entries: Vec<_> = store
        .scan_prefix(&[record::DEDUP_PREFIX])
        .map_err(|e| storage(dir, e))?
        .into_iter()
        .filter_map(|(key, value)| {
            let (terminal, term_seq) = record::parse_dedup_key(&key)?;
            Some((record::decode_seq(&value)?, terminal, term_seq))
        })
        .collect();
    entries.sort_unstable_by_key(|(seq, _, _)| *seq);
    let mut window = DedupWindow::new(DEDUP_WINDOW);
    for (seq, terminal, term_seq) in entries {
        window.remember(&terminal, term_seq, seq);
    }
    Ok(window)
}

fn load_minutes(
    store: &Store,
    dir: &Path,
) -> Result<BTreeMap<(u32, TerminalId), MinuteTally>, JournalError> {
    let mut minutes = BTreeMap::new();
    for (key, value) in store
        .scan_prefix(&[record::MINUTE_PREFIX])
        .map_err(|e| storage(dir, e))?
    {
        let Some(minute) = record::parse_minute_key(&key) else {
            continue;
        };
        let tally = MinuteTally::decode(&value).map_err(|cause| JournalError::Record {
            dir: dir.to_path_buf(),
            key: format!("minute {} {}", minute.0, minute.1),
            cause,
        })?;
        minutes.insert(minute, tally);
    }
    Ok(minutes)
}

fn decode(dir: &Path, seq: Seq, value: &[u8]) -> Result<Vote, JournalError> {
    record::decode_vote(seq, value).map_err(|cause| JournalError::Record {
        dir: dir.to_path_buf(),
        key: format!("seq {seq}"),
        cause,
    })
}

fn storage(dir: &Path, cause: StoreError) -> JournalError {
    JournalError::Storage {
        dir: dir.to_path_buf(),
        cause,
    }
}

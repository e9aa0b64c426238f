//! The journal: the gateway's single source of truth for votes.
//!
//! Sources hand presses to the journal; it numbers them, stores them and makes them durable
//! before anyone hears about them. The uplink reads the oldest unacknowledged votes and, once the
//! broker has acknowledged them, releases them with [`Journal::ack_through`].
//!
//! # Invariants
//! 1. **Durable before visible.** [`Journal::append`] returns only after the votes are in the
//!    write-ahead log (`fdatasync`) or in a checkpoint (sled flush + fsync); nothing reads a vote
//!    that is not durable (the journal is single-writer and, after any storage error, drops its
//!    state and re-reads the disk before serving again).
//! 2. **Seqs are never reused, and the buffered votes are one run.** Seqs are consecutive; every
//!    vote below `head` is acknowledged or dropped, every vote from `head` to `next_seq` is
//!    buffered (`depth = next_seq − head`). A seq handed out in a commit that never became
//!    durable may be handed out again, but nobody ever saw it.
//! 3. **Dedup survives restarts.** A `(terminal, term_seq)` already accepted maps to its seq; the
//!    window ([`dedup::DEDUP_WINDOW`] per terminal) is stored with the votes.
//! 4. **Nothing is lost silently.** When the votes reach their budget, `drop-oldest` drops the
//!    oldest sealed blocks and `reject-new` refuses new votes; both count every vote lost in
//!    `dropped`, made durable with the change it counts.
//! 5. **The folder stays within its bound** (see § Size): compaction copies the live records into
//!    a new generation and switches to it atomically.
//!
//! # Storage
//! ```text
//! data-dir/
//!   CURRENT            names the live generation (layout.rs)
//!   gen-000007/        sled: the journal's state; wal: the write-ahead log (wal.rs)
//!   blocks/*.seg       sealed blocks of votes, append-only (segments.rs)
//! ```
//! A commit appends one record with its new votes to the log (one page, one `fdatasync`). The
//! votes collect in the open *tail*; at [`Tuning::block_votes`] votes or [`Tuning::block_bytes`]
//! bytes the tail is sealed into a block, kept in memory. When the log is full, a *checkpoint*
//! appends the sealed blocks to the segment files (fsynced), then writes to sled the changed
//! duplicate-window chunks and counts, the tail and the meta record with the next epoch, flushed
//! and fsynced; the log then starts again. At open, the checkpoint is loaded and the log's
//! records of its epoch replayed on top. Blocks acknowledged before a checkpoint are never
//! written; a segment file is deleted once every vote in it is below the durable head.
//!
//! sled holds only this small state: it keeps in memory what it has touched whatever its cache
//! setting, so the votes, which can number millions, never pass through it.
//!
//! # Key layout (one sled tree per generation)
//! | key | value |
//! | --- | --- |
//! | `m` | [`record::Meta`]: epoch, next seq, tail's first seq, head, dropped |
//! | `t` | the tail: a block value ([`block`]) of the votes after the last sealed block |
//! | `r` | the seq ranges dropped and not yet reported to the cloud ([`drops`]); absent when none |
//! | `w` + id length + terminal id + chunk (u32 BE) | a chunk of a terminal's duplicate window ([`dedup`]) |
//! | `h` + UTC hour (u32 BE) + id length + terminal id | an hour's counts per minute ([`counts`]) |
//! | `q` + UTC day (u32 BE) + id length + terminal id | one day's quarter-hour counts ([`counts`]) |
//!
//! # Size
//! `max-disk-size` bounds the data folder: at most `1.1 × max-disk-size + 8 MiB`
//! ([`folder_limit`]), plus the counts of many terminals. The buffered votes may take
//! [`votes_budget`] (90 %) of it, charged as their blocks' bytes plus [`BLOCK_OVERHEAD`]; the
//! rest is room for sled, the log and a partly acknowledged first segment. sled reuses space only
//! from its own background cleaner, which would write between the journal's fsyncs, so the
//! journal turns it off and compacts instead ([`Journal::compact`]): it copies the live state into
//! a new generation and switches the pointer, when the folder plus that copy would pass the
//! bound, or when the generation is over 8 MiB and mostly garbage.

pub mod block;
mod codec;
pub mod counts;
pub mod dedup;
pub mod drops;
pub mod filter;
pub mod layout;
mod legacy;
pub mod record;
pub mod segments;
mod store;
mod task;
pub mod wal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{Press, Seq, TerminalId, Vote};
use block::VoteStream;
use counts::{CountChange, Counts};
use dedup::{ChunkChange, DedupWindow, DEDUP_WINDOW};
use drops::DropRanges;
use filter::{Counted, PressFilter};
use record::{Meta, MinuteTally, RecordError};
use segments::{Location, Segments};
use store::{Store, StoreError, WriteBatch};
use wal::Wal;

pub use task::{spawn, JournalHandle, JournalService};

/// The journal's counts for the tallies, consistent with `next_seq`: minutes at minute
/// resolution, and the quarter-hours older minutes were rolled up into.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountsForTallies {
    /// `(UTC minute since the epoch, terminal, counts)`, oldest first.
    pub minutes: Vec<(u32, TerminalId, MinuteTally)>,
    /// `(UTC quarter-hour since the epoch, terminal, counts)` from the minute asked for on,
    /// oldest first. A minute is in `minutes` or in its quarter, never in both.
    pub quarters: Vec<(u32, TerminalId, MinuteTally)>,
    /// The seq below which every vote is in these counts.
    pub next_seq: Seq,
}

/// The smallest `max-disk-size` accepted.
pub const MIN_DISK_BYTES: u64 = 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// What a block is charged beyond its value: its key and sled's per-entry overhead.
pub const BLOCK_OVERHEAD: u64 = 64;

/// The share of `max-disk-size` the buffered votes may take (90 %): the rest is room for the
/// journal's own records in sled, its write-ahead log and the partly acknowledged first segment.
pub fn votes_budget(max_disk_bytes: u64) -> u64 {
    max_disk_bytes / 10 * 9
}

/// The size segment files grow to.
fn segment_bytes(limits: &Limits) -> u64 {
    limits
        .tuning
        .segment_bytes
        .min((limits.max_disk_bytes / 32).max(64 * 1024))
}

/// The bound on the data folder: `1.1 × max-disk-size + 8 MiB`.
pub fn folder_limit(max_disk_bytes: u64) -> u64 {
    max_disk_bytes / 10 * 11 + 8 * MIB
}

/// How large the journal's folder can grow, for `votegate check`'s disk-space check: the
/// folder bound, plus each terminal's counts (28 hours of minutes and 36 days of quarter-hours,
/// twice during a compaction).
pub fn folder_estimate(max_disk_bytes: u64, terminals: usize) -> u64 {
    folder_limit(max_disk_bytes) + 256 * 1024 * terminals as u64
}

/// A named moment inside the journal's writes, reported to [`Tuning::on_step`]: the crash
/// tests stop the process at each of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A commit's log record is durable.
    LogRecordWritten,
    /// A checkpoint's sealed blocks are durable in their segment file, sled not written yet.
    BlocksWritten,
    /// After a sled batch of a checkpoint's window and count changes, before the batch with
    /// its tail, dropped ranges and meta.
    CheckpointHalfway,
    /// A checkpoint is durable.
    CheckpointWritten,
    /// Compaction: the new generation is durable, the pointer still names the old one.
    GenerationWritten,
    /// Compaction: the new pointer is written to its temporary file, not yet renamed.
    PointerWritten,
    /// Compaction: the pointer names the new generation; the old one is still there.
    PointerSwitched,
    /// Compaction: the old generation is removed.
    OldGenerationRemoved,
}

/// Internal sizes of the journal; the defaults are what the daemon uses. Tests shrink them to
/// reach every path quickly.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// A block is sealed at this many votes…
    pub block_votes: usize,
    /// …or at this many bytes.
    pub block_bytes: usize,
    /// The write-ahead log's size.
    pub wal_bytes: usize,
    /// A segment file of sealed blocks grows to this size, or to 1/32 of `max-disk-size` if
    /// that is smaller (at least 64 KiB), then the next one starts.
    pub segment_bytes: u64,
    /// Most writes in one sled batch (sled 0.34 misbehaves with large batches that delete).
    pub batch_ops: usize,
    /// Compact after every this many checkpoints, besides when the size calls for it.
    pub compact_every: Option<u64>,
    /// Called at each [`Step`].
    pub on_step: Option<fn(Step)>,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            block_votes: 512,
            block_bytes: 4096,
            wal_bytes: 256 * 1024,
            segment_bytes: 4 * MIB,
            batch_ops: store::MAX_BATCH_OPS - 1,
            compact_every: None,
            on_step: None,
        }
    }
}

/// What to do with a new vote when the votes have reached their budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the oldest unsent votes, a block at a time, to make room (counted as dropped). The
    /// default: recent feedback matters more than feedback from an outage weeks ago.
    DropOldest,
    /// Refuse the new vote. Serial terminals keep and retransmit it; presses that cannot be
    /// retransmitted (GPIO, simulated) are counted as dropped.
    RejectNew,
}

/// Size limits of the journal.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bound on the data folder (see the module doc § Size).
    pub max_disk_bytes: u64,
    /// Behaviour when the votes reach their budget.
    pub when_full: WhenFull,
    /// sled's page cache; its default (1 GiB) is far too much for a Pi.
    pub cache_bytes: u64,
    /// Internal sizes.
    pub tuning: Tuning,
}

impl PartialEq for Limits {
    fn eq(&self, other: &Limits) -> bool {
        self.max_disk_bytes == other.max_disk_bytes
            && self.when_full == other.when_full
            && self.cache_bytes == other.cache_bytes
    }
}

impl Eq for Limits {}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_disk_bytes: 256 * MIB,
            when_full: WhenFull::DropOldest,
            cache_bytes: 4 * MIB,
            tuning: Tuning::default(),
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
        /// Which record (`block 17`, `meta`, …).
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
    /// The bound on `charged_bytes` ([`votes_budget`] of `max-disk-size`).
    pub max_disk_bytes: u64,
    /// False while the database is unavailable (a storage error, waiting to reopen).
    pub available: bool,
    /// Durable commits (log record or checkpoint) since the journal was opened; with group
    /// commit, several appends share one.
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

/// The journal's state: an open generation and the in-memory mirror of its records.
/// Single-threaded; [`spawn`] runs it on its own thread with group commit.
pub struct Journal {
    dir: PathBuf,
    limits: Limits,
    /// The anti-abuse filter: decided here, after dedup, remembered once durable.
    filter: PressFilter,
    open: Option<OpenJournal>,
    /// Drops counted while the store was unavailable, added to `dropped` on the next write.
    unsaved_drops: u64,
    commits: u64,
    outcomes: OutcomeCounts,
}

/// A sealed block: in a segment file, or waiting for the next checkpoint to write it there.
#[derive(Clone, Debug)]
struct BlockInfo {
    count: u64,
    bytes: u64,
    /// The value, until a checkpoint writes it.
    pending: Option<Vec<u8>>,
    /// Where it is, once written.
    location: Option<Location>,
}

impl BlockInfo {
    fn charge(&self) -> u64 {
        self.bytes + BLOCK_OVERHEAD
    }
}

/// The open tail: the votes after the last sealed block.
#[derive(Clone, Debug, Default)]
struct Tail {
    stream: VoteStream,
    votes: Vec<Vote>,
}

impl Tail {
    fn charge(&self) -> u64 {
        if self.votes.is_empty() {
            0
        } else {
            block::block_len(&self.stream) as u64 + BLOCK_OVERHEAD
        }
    }
}

struct OpenJournal {
    generation: u64,
    store: Store,
    segments: Segments,
    wal: Wal,
    /// The state now (checkpoint plus log).
    meta: Meta,
    /// The meta record as the last checkpoint stored it (its `next_seq` and `tail_first` are
    /// what the log continues from).
    checkpoint: Meta,
    /// `head`, `dropped` and the version of `drops` as last made durable.
    durable: (Seq, u64, u64),
    /// The seq after the last durable vote (in the log or a checkpoint).
    logged: Seq,
    /// The votes accepted since then, for the next log record.
    unlogged: Vec<Vote>,
    blocks: BTreeMap<Seq, BlockInfo>,
    tail: Tail,
    /// Dropped seqs not yet reported to the cloud, and how often they changed.
    drops: DropRanges,
    drops_version: u64,
    dedup: DedupWindow,
    counts: Counts,
    /// Charged bytes of the buffered votes.
    charged: u64,
    oldest: Option<Vote>,
    /// Checkpoints since the last compaction.
    checkpoints: u64,
    /// The generation's size right after the last compaction (or open).
    compacted_at: u64,
}

impl Journal {
    /// Opens the journal in `dir`, creating it, or converting a journal written by a release
    /// before blocks, as needed.
    pub fn open(dir: &Path, limits: Limits) -> Result<Journal, JournalError> {
        let open = OpenJournal::load(dir, &limits)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            limits,
            filter: PressFilter::default(),
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

    /// Sets the anti-abuse filter's intervals: `default` for terminals not in `intervals`.
    /// Without a call nothing is filtered.
    pub fn set_filter(
        &mut self,
        default: std::time::Duration,
        intervals: std::collections::HashMap<TerminalId, std::time::Duration>,
    ) {
        self.filter.set_intervals(default, intervals);
    }

    /// Stores presses durably; one write serves them all (group commit). Outcomes are in the
    /// order of `presses`. On error nothing was acknowledged: the caller may retry.
    pub fn append(&mut self, presses: Vec<Press>) -> Result<Vec<Outcome>, JournalError> {
        let limits = self.limits;
        let unsaved_drops = self.unsaved_drops;
        let dropped_before = self.stats().dropped;
        let retransmittable: Vec<bool> = presses.iter().map(|p| p.term_seq.is_some()).collect();
        // Out of `self` for the call (`with_store` borrows all of it), back right after.
        let filter = std::mem::take(&mut self.filter);
        let mut counted = Counted::new();
        let result = self.with_store(|open, dir| {
            open.meta.dropped += unsaved_drops;
            let outcomes = open.append(presses, &limits, &filter, &mut counted);
            open.commit(dir, &limits)?;
            Ok(outcomes)
        });
        self.filter = filter;
        match result {
            Ok(outcomes) => {
                self.filter.remember(counted);
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

    /// Releases every buffered vote with a seq up to `through` (the broker acknowledged them).
    /// Returns how many. Not flushed by itself: the next commit or [`Journal::sync`] makes it
    /// durable; if it is lost in a crash the votes are sent again, which cloud ingest
    /// deduplicates.
    pub fn ack_through(&mut self, through: Seq) -> Result<u64, JournalError> {
        let limits = self.limits;
        self.with_store(|open, dir| open.ack_through(through, dir, &limits))
    }

    /// The seqs dropped to make room (`drop-oldest`) that no acknowledged batch has reported
    /// yet, as inclusive ranges, oldest first.
    pub fn unreported_drops(&mut self) -> Result<Vec<(Seq, Seq)>, JournalError> {
        self.with_store(|open, _| Ok(open.drops.ranges()))
    }

    /// A batch reporting the dropped ranges up to `through` was acknowledged: they are
    /// forgotten (durably with the next write, as acknowledgements are).
    pub fn forget_drops_through(&mut self, through: Seq) -> Result<(), JournalError> {
        self.with_store(|open, _| {
            if open.drops.forget_through(through) {
                open.drops_version += 1;
            }
            Ok(())
        })
    }

    /// Makes acknowledgements durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        let limits = self.limits;
        self.with_store(|open, dir| open.sync(dir, &limits))
    }

    /// Copies the live records into a new generation and switches to it (see the module doc).
    /// The journal does this by itself when the size calls for it.
    pub fn compact(&mut self) -> Result<(), JournalError> {
        let limits = self.limits;
        self.with_store(|open, dir| open.compact(dir, &limits))
    }

    /// Up to `max` buffered votes with a seq above `after`, oldest first.
    pub fn read_after(&mut self, after: Seq, max: usize) -> Result<Vec<Vote>, JournalError> {
        self.with_store(|open, dir| open.read_after(after, max, dir))
    }

    /// The current counters.
    pub fn stats(&self) -> JournalStats {
        let budget = votes_budget(self.limits.max_disk_bytes);
        match &self.open {
            Some(open) => JournalStats {
                depth: open.meta.next_seq - open.meta.head,
                oldest_seq: open.oldest.as_ref().map(|v| v.seq),
                oldest_ts_ms: open.oldest.as_ref().map(|v| v.ts_ms),
                next_seq: open.meta.next_seq,
                dropped: open.meta.dropped + self.unsaved_drops,
                charged_bytes: open.charged,
                max_disk_bytes: budget,
                available: true,
                commits: self.commits,
                outcomes: self.outcomes,
            },
            None => JournalStats {
                dropped: self.unsaved_drops,
                max_disk_bytes: budget,
                commits: self.commits,
                outcomes: self.outcomes,
                ..JournalStats::default()
            },
        }
    }

    /// The stored counts the tallies rebuild from: every minute at minute resolution and the
    /// quarter-hours from `quarters_from_minute` on, with the `next_seq` they are consistent with
    /// (they include every vote with a lower seq and none with a higher one).
    pub fn counts_for_tallies(
        &mut self,
        quarters_from_minute: u32,
    ) -> Result<CountsForTallies, JournalError> {
        self.with_store(|open, _| {
            let minutes = open
                .counts
                .minutes()
                .map(|(minute, terminal, tally)| (minute, terminal.clone(), *tally))
                .collect();
            let quarters = open.counts.quarters_from(quarters_from_minute);
            Ok(CountsForTallies {
                minutes,
                quarters,
                next_seq: open.meta.next_seq,
            })
        })
    }

    /// Bytes the data folder's files take.
    pub fn size_on_disk(&self) -> Option<u64> {
        Some(layout::folder_bytes(&self.dir))
    }

    /// Whether the store is open (false after a storage error until a reopen succeeds).
    pub fn is_available(&self) -> bool {
        self.open.is_some()
    }

    /// Whether acknowledgements wait to be made durable.
    pub fn has_unsynced_acks(&self) -> bool {
        self.open.as_ref().is_some_and(|open| open.needs_sync())
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
    /// A clean close makes acknowledgements durable, as a shutdown does.
    fn drop(&mut self) {
        if self.has_unsynced_acks() {
            if let Err(err) = self.sync() {
                log::warn!("journal close: acknowledgements not made durable: {err}");
            }
        }
    }
}

/// A generation's records as written into a fresh store: by compaction and by conversion.
struct Snapshot<'a> {
    meta: Meta,
    drops: &'a DropRanges,
    tail: &'a VoteStream,
    dedup: Vec<ChunkChange>,
    counts: Vec<CountChange>,
}

impl OpenJournal {
    fn load(dir: &Path, limits: &Limits) -> Result<OpenJournal, JournalError> {
        let generation = open_layout(dir, limits)?;
        let gen_dir = layout::generation_dir(dir, generation);
        let store = Store::open(&gen_dir, limits.cache_bytes).map_err(|e| storage(dir, e))?;
        let meta = match store.get(record::META_KEY).map_err(|e| storage(dir, e))? {
            Some(bytes) => Meta::decode(&bytes).map_err(|cause| corrupt(dir, "meta", cause))?,
            None => {
                return Err(corrupt(
                    dir,
                    "meta",
                    RecordError::Corrupt(format!("missing in {}", gen_dir.display())),
                ))
            }
        };
        let drops = match store.get(record::DROPS_KEY).map_err(|e| storage(dir, e))? {
            Some(bytes) => {
                DropRanges::decode(&bytes).map_err(|cause| corrupt(dir, "dropped ranges", cause))?
            }
            None => DropRanges::new(),
        };
        let (wal, log) = match Wal::open(&gen_dir) {
            Ok(opened) => opened,
            // A generation written before its log: give it an empty one.
            Err(_) if !gen_dir.join(wal::WAL_FILE).exists() => (
                Wal::create(&gen_dir, limits.tuning.wal_bytes)
                    .map_err(|e| storage(dir, e.into()))?,
                Vec::new(),
            ),
            Err(err) => return Err(storage(dir, err.into())),
        };
        // The log's records come after the checkpoint; their head is durable too, and block
        // files below it may be gone already.
        let (records, log_end) = wal::replay(&log, meta.epoch, meta.next_seq);
        let head = records.iter().map(|r| r.head).fold(meta.head, Seq::max);
        let (segments, found) = Segments::open(dir, segment_bytes(limits), head, meta.tail_first)
            .map_err(|e| storage(dir, e.into()))?;
        let mut open = OpenJournal {
            generation,
            store,
            segments,
            wal,
            meta,
            checkpoint: meta,
            durable: (meta.head, meta.dropped, 0),
            logged: meta.next_seq,
            unlogged: Vec::new(),
            blocks: BTreeMap::new(),
            tail: Tail::default(),
            drops,
            drops_version: 0,
            dedup: DedupWindow::new(DEDUP_WINDOW),
            counts: Counts::new(),
            charged: 0,
            oldest: None,
            checkpoints: 0,
            compacted_at: 0,
        };
        open.load_blocks(found);
        open.load_records(dir)?;
        open.replay(records, log_end, limits);
        open.recount();
        open.refresh_oldest(dir)?;
        open.compacted_at = layout::folder_bytes(&gen_dir);
        Ok(open)
    }

    /// Takes the sealed blocks found in the segment files ([`Segments::open`] has checked that
    /// they hold every buffered vote before the tail).
    fn load_blocks(&mut self, found: Vec<segments::Found>) {
        for block in found {
            self.blocks.insert(
                block.first,
                BlockInfo {
                    count: block.count,
                    bytes: u64::from(block.location.len),
                    pending: None,
                    location: Some(block.location),
                },
            );
        }
    }

    /// Loads tail, duplicate window and counts from sled.
    fn load_records(&mut self, dir: &Path) -> Result<(), JournalError> {
        let tail_first = self.meta.tail_first;
        if let Some(value) = self
            .store
            .get(record::TAIL_KEY)
            .map_err(|e| storage(dir, e))?
        {
            let votes = block::decode_block(tail_first, &value)
                .map_err(|cause| corrupt(dir, "tail", cause))?;
            if tail_first + votes.len() as u64 != self.meta.next_seq {
                return Err(corrupt(
                    dir,
                    "tail",
                    RecordError::Corrupt(format!(
                        "{} votes from seq {tail_first}, meta says next seq {}",
                        votes.len(),
                        self.meta.next_seq
                    )),
                ));
            }
            for vote in votes {
                self.tail.stream.push(&vote);
                self.tail.votes.push(vote);
            }
        }
        let mut chunks: BTreeMap<TerminalId, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
        self.store
            .for_each_prefix(&[record::CHUNK_PREFIX], |key, value| {
                if let Some((terminal, chunk)) = record::parse_chunk_key(key) {
                    chunks
                        .entry(terminal)
                        .or_default()
                        .push((chunk, value.to_vec()));
                }
                Ok::<(), StoreError>(())
            })
            .map_err(|e| storage(dir, e))?;
        for (terminal, chunks) in chunks {
            self.dedup
                .load(&terminal, chunks)
                .map_err(|cause| corrupt(dir, &format!("duplicate window of {terminal}"), cause))?;
        }
        let counts = &mut self.counts;
        for prefix in [counts::HOUR_PREFIX, counts::DAY_PREFIX] {
            self.store
                .for_each_prefix(&[prefix], |key, value| {
                    let loaded = if prefix == counts::HOUR_PREFIX {
                        counts.load_hour(key, value)
                    } else {
                        counts.load_day(key, value)
                    };
                    loaded.map_err(|cause| corrupt(dir, "counts", cause))
                })
                .map_err(storage_of(dir))?;
        }
        self.counts.finish_load();
        Ok(())
    }

    /// Replays the log's records of the stored epoch on top of the checkpoint.
    fn replay(&mut self, records: Vec<wal::WalRecord>, end: usize, limits: &Limits) {
        let replayed = records.len() as u64;
        for record in records {
            for vote in record.votes {
                self.dedup_remember(&vote);
                self.counts.replay(&vote);
                self.meta.next_seq = vote.seq + 1;
                self.push_tail(vote, limits);
            }
            self.meta.head = self.meta.head.max(record.head);
            self.meta.dropped = self.meta.dropped.max(record.dropped);
            if let Some(drops) = record.drops {
                self.drops = drops;
            }
        }
        if self.meta.head > self.meta.next_seq {
            log::warn!(
                "journal: acknowledged through seq {} but holds votes only up to {}; starting after them",
                self.meta.head - 1,
                self.meta.next_seq - 1
            );
            self.meta.head = self.meta.next_seq;
        }
        self.wal.resume(end, replayed);
        self.logged = self.meta.next_seq;
        self.durable = self.durable_key();
    }

    fn dedup_remember(&mut self, vote: &Vote) {
        if let Some(term_seq) = vote.term_seq {
            self.dedup.remember(&vote.terminal, term_seq, vote.seq);
        }
    }

    /// Recomputes the charged bytes of the live blocks and the tail.
    fn recount(&mut self) {
        let head = self.meta.head;
        self.charged = self
            .blocks
            .iter()
            .filter(|(first, info)| *first + info.count > head)
            .map(|(_, info)| info.charge())
            .sum::<u64>()
            + self.tail.charge();
    }

    /// Adds a vote to the tail, sealing the tail when it is full.
    fn push_tail(&mut self, vote: Vote, limits: &Limits) {
        self.tail.stream.push(&vote);
        self.tail.votes.push(vote);
        let full = self.tail.votes.len() >= limits.tuning.block_votes.max(1)
            || block::block_len(&self.tail.stream) >= limits.tuning.block_bytes;
        if full {
            self.seal_tail();
        }
    }

    fn seal_tail(&mut self) {
        let tail = std::mem::take(&mut self.tail);
        let value = block::encode_block(&tail.stream);
        self.blocks.insert(
            self.meta.tail_first,
            BlockInfo {
                count: tail.votes.len() as u64,
                bytes: value.len() as u64,
                pending: Some(value),
                location: None,
            },
        );
        self.meta.tail_first += tail.votes.len() as u64;
    }

    /// What adding `vote` to the tail costs in charged bytes.
    fn cost_of(&self, vote: &Vote) -> u64 {
        let before = self.tail.charge();
        let mut stream = self.tail.stream.clone();
        stream.push(vote);
        block::block_len(&stream) as u64 + BLOCK_OVERHEAD - before
    }

    /// Numbers and stores the presses in memory; [`OpenJournal::commit`] makes them durable.
    /// The filter judges each new press; the ones it counted go into `counted`, for the caller
    /// to remember once the commit is durable.
    fn append(
        &mut self,
        presses: Vec<Press>,
        limits: &Limits,
        filter: &PressFilter,
        counted: &mut Counted,
    ) -> Vec<Outcome> {
        let budget = votes_budget(limits.max_disk_bytes);
        let first_new = self.meta.next_seq;
        let mut outcomes = Vec::with_capacity(presses.len());
        for press in presses {
            if let Some(term_seq) = press.term_seq {
                if let Some(seq) = self.dedup.lookup(&press.terminal, term_seq) {
                    outcomes.push(Outcome::Duplicate(seq));
                    continue;
                }
            }
            let mut vote = Vote::accept(self.meta.next_seq, press);
            // Judged on a copy: a press that is refused below must not count.
            let mut judged = counted.clone();
            vote.filtered |= filter.judge(&mut judged, &vote.terminal, &vote.press_time());
            let cost = self.cost_of(&vote);
            if self.charged + cost > budget && limits.when_full == WhenFull::DropOldest {
                self.drop_oldest(cost, budget, first_new);
            }
            if self.charged + cost > budget {
                if vote.term_seq.is_none() {
                    self.meta.dropped += 1;
                }
                outcomes.push(Outcome::Refused);
                continue;
            }
            self.charged += cost;
            *counted = judged;
            self.dedup_remember(&vote);
            self.counts.add(&vote);
            self.meta.next_seq += 1;
            self.unlogged.push(vote.clone());
            self.push_tail(vote.clone(), limits);
            outcomes.push(Outcome::Accepted(vote));
        }
        outcomes
    }

    /// Drops the oldest sealed blocks stored before this commit until `cost` more bytes fit.
    fn drop_oldest(&mut self, cost: u64, budget: u64, first_new: Seq) {
        while self.charged + cost > budget {
            let head = self.meta.head;
            let Some((first, info)) = self
                .blocks
                .range(..first_new)
                .find(|(first, info)| *first + info.count > head)
                .map(|(first, info)| (*first, info.clone()))
            else {
                return;
            };
            let end = first + info.count;
            if end > first_new {
                return;
            }
            self.meta.dropped += end - head.max(first);
            self.drops.add(head.max(first), end - 1);
            self.drops_version += 1;
            self.meta.head = end;
            self.charged -= info.charge();
            self.oldest = None;
        }
    }

    /// Makes the commit durable: a log record, or a checkpoint when the log is full.
    fn commit(&mut self, dir: &Path, limits: &Limits) -> Result<(), JournalError> {
        if self.oldest.is_none() && self.meta.head < self.meta.next_seq {
            self.refresh_oldest(dir)?;
        }
        let changed = !self.unlogged.is_empty() || self.durable != self.durable_key();
        if !changed {
            return Ok(());
        }
        let record = self.log_record();
        if !self.wal.has_room(record.len()) {
            return self.checkpoint(dir, limits);
        }
        self.wal
            .append(&record)
            .map_err(|e| storage(dir, e.into()))?;
        self.logged = self.meta.next_seq;
        self.unlogged.clear();
        self.durable = self.durable_key();
        step(limits, Step::LogRecordWritten);
        Ok(())
    }

    /// The log record of the votes accepted since the last durable write.
    fn log_record(&self) -> Vec<u8> {
        let mut stream = VoteStream::new();
        for vote in &self.unlogged {
            stream.push(vote);
        }
        wal::encode_record(
            self.checkpoint.epoch,
            self.wal.next_number(),
            self.logged,
            self.meta.head,
            self.meta.dropped,
            &stream,
            &self.drops,
        )
    }

    /// Writes everything to sled under the next epoch and makes it durable; the log starts again.
    fn checkpoint(&mut self, dir: &Path, limits: &Limits) -> Result<(), JournalError> {
        self.release_dead_blocks();
        self.write_pending_blocks(dir)?;
        step(limits, Step::BlocksWritten);
        let mut writes = Vec::new();
        writes.extend(self.dedup.take_changes().into_iter().map(Write::from));
        writes.extend(
            self.counts
                .take_changes(self.meta.next_seq)
                .into_iter()
                .map(Write::from),
        );
        let meta = Meta {
            epoch: self.checkpoint.epoch + 1,
            ..self.meta
        };
        // The tail and the dropped ranges must change with the meta record, in one batch: a
        // SIGKILL can leave sled with the batches before the last (its buffers written, not
        // flushed), and a tail ahead of its meta made the journal refuse to open.
        let last = [
            Write::Put(
                record::TAIL_KEY.to_vec(),
                block::encode_block(&self.tail.stream),
            ),
            drops_write(&self.drops),
            Write::Put(record::META_KEY.to_vec(), meta.encode()),
        ];
        self.write_batches(writes, last, limits, dir)?;
        self.store.make_durable().map_err(|e| storage(dir, e))?;
        self.checkpoint = meta;
        self.meta.epoch = meta.epoch;
        self.wal.restart();
        self.logged = self.meta.next_seq;
        self.unlogged.clear();
        self.durable = self.durable_key();
        self.checkpoints += 1;
        step(limits, Step::CheckpointWritten);
        self.remove_dead_segments(dir)?;
        if self.should_compact(dir, limits) {
            self.compact(dir, limits)?;
        }
        Ok(())
    }

    /// Applies `writes` in sled batches of at most `batch_ops`, in order, then `last` (tail,
    /// dropped ranges and meta) as one batch: that is the one that counts, the others only add
    /// what replay tolerates.
    fn write_batches(
        &mut self,
        writes: Vec<Write>,
        last: [Write; 3],
        limits: &Limits,
        dir: &Path,
    ) -> Result<(), JournalError> {
        let per_batch = limits.tuning.batch_ops.max(2);
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let mut batch = WriteBatch::default();
            for write in writes.by_ref().take(per_batch) {
                write.add_to(&mut batch);
            }
            self.store.apply(batch).map_err(|e| storage(dir, e))?;
            step(limits, Step::CheckpointHalfway);
        }
        let mut batch = WriteBatch::default();
        for write in last {
            write.add_to(&mut batch);
        }
        self.store.apply(batch).map_err(|e| storage(dir, e))
    }

    /// Forgets the blocks wholly below `head` (their files go once the head is durable).
    fn release_dead_blocks(&mut self) {
        let head = self.meta.head;
        while let Some(entry) = self.blocks.first_entry() {
            if *entry.key() + entry.get().count > head {
                break;
            }
            entry.remove();
        }
    }

    /// Appends the sealed blocks not written yet to the segment files, durably.
    fn write_pending_blocks(&mut self, dir: &Path) -> Result<(), JournalError> {
        let pending: Vec<(Seq, u64, &[u8])> = self
            .blocks
            .iter()
            .filter_map(|(first, info)| Some((*first, info.count, info.pending.as_deref()?)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let firsts: Vec<Seq> = pending.iter().map(|(first, _, _)| *first).collect();
        let locations = self
            .segments
            .append(&pending)
            .map_err(|e| storage(dir, e.into()))?;
        for (first, location) in firsts.into_iter().zip(locations) {
            if let Some(info) = self.blocks.get_mut(&first) {
                info.pending = None;
                info.location = Some(location);
            }
        }
        Ok(())
    }

    /// Removes the segment files below the durable head.
    fn remove_dead_segments(&mut self, dir: &Path) -> Result<(), JournalError> {
        self.segments
            .remove_below(self.durable.0)
            .map_err(|e| storage(dir, e.into()))
    }

    fn ack_through(
        &mut self,
        through: Seq,
        dir: &Path,
        limits: &Limits,
    ) -> Result<u64, JournalError> {
        let new_head = through.saturating_add(1).min(self.meta.next_seq);
        if new_head <= self.meta.head {
            return Ok(0);
        }
        let acked = new_head - self.meta.head;
        self.meta.head = new_head;
        self.recount();
        self.refresh_oldest(dir)?;
        // Nothing is written here: the head goes into the next log record (or the idle sync's),
        // and the blocks below it are deleted by the next checkpoint or left out of the next
        // compaction, which is cheaper than sled deleting them one by one.
        if self.should_compact(dir, limits) {
            self.compact(dir, limits)?;
        }
        Ok(acked)
    }

    /// `head`, `dropped` and the version of the dropped ranges now: what a durable write saves.
    fn durable_key(&self) -> (Seq, u64, u64) {
        (self.meta.head, self.meta.dropped, self.drops_version)
    }

    /// Whether acknowledgements or drops wait to be made durable.
    fn needs_sync(&self) -> bool {
        self.durable != self.durable_key()
    }

    fn sync(&mut self, dir: &Path, limits: &Limits) -> Result<(), JournalError> {
        if self.durable != self.durable_key() {
            self.commit(dir, limits)?;
            self.release_dead_blocks();
            self.remove_dead_segments(dir)?;
        }
        Ok(())
    }

    fn read_after(&self, after: Seq, max: usize, dir: &Path) -> Result<Vec<Vote>, JournalError> {
        let start = after.saturating_add(1).max(self.meta.head);
        let mut votes = Vec::new();
        if start >= self.meta.next_seq || max == 0 {
            return Ok(votes);
        }
        let first_block = self
            .blocks
            .range(..=start)
            .next_back()
            .map_or(start, |(first, _)| *first);
        for (first, info) in self.blocks.range(first_block..) {
            if first + info.count <= start {
                continue;
            }
            let block = self.block_votes(*first, info, dir)?;
            votes.extend(
                block
                    .into_iter()
                    .filter(|v| v.seq >= start)
                    .take(max - votes.len()),
            );
            if votes.len() >= max {
                return Ok(votes);
            }
        }
        votes.extend(
            self.tail
                .votes
                .iter()
                .filter(|v| v.seq >= start)
                .take(max - votes.len())
                .cloned(),
        );
        Ok(votes)
    }

    fn block_votes(
        &self,
        first: Seq,
        info: &BlockInfo,
        dir: &Path,
    ) -> Result<Vec<Vote>, JournalError> {
        let stored;
        let value = match (&info.pending, info.location) {
            (Some(value), _) => value,
            (None, Some(location)) => {
                stored = self
                    .segments
                    .read(location)
                    .map_err(|e| storage(dir, e.into()))?;
                &stored
            }
            (None, None) => {
                return Err(corrupt(
                    dir,
                    &format!("block {first}"),
                    RecordError::Corrupt("neither written nor pending".into()),
                ))
            }
        };
        block::decode_block(first, value)
            .map_err(|cause| corrupt(dir, &format!("block {first}"), cause))
    }

    fn refresh_oldest(&mut self, dir: &Path) -> Result<(), JournalError> {
        let head = self.meta.head;
        self.oldest = if head >= self.meta.next_seq {
            None
        } else if self.oldest.as_ref().is_some_and(|v| v.seq == head) {
            self.oldest.take()
        } else {
            self.read_after(head - 1, 1, dir)?.into_iter().next()
        };
        Ok(())
    }

    /// Whether the folder should be compacted now (see the module doc § Size).
    fn should_compact(&self, dir: &Path, limits: &Limits) -> bool {
        if let Some(every) = limits.tuning.compact_every {
            if self.checkpoints >= every.max(1) {
                return true;
            }
        }
        let current = layout::folder_bytes(&layout::generation_dir(dir, self.generation));
        let copy = self.estimate_copy(limits);
        let limit = folder_limit(limits.max_disk_bytes);
        let total = current + self.segments.bytes();
        // The bound would be passed while both generations exist (and the generation has grown
        // since the last compaction, so that a copy too large for the bound cannot loop).
        let near_bound = total + copy + MIB > limit && current > self.compacted_at + MIB;
        // Mostly garbage and cheap to copy: the folder shrinks (after a backlog was delivered).
        // Not while a backlog drains: acknowledgements write nothing to sled, so the folder does
        // not grow, and copying what is left again and again would cost more than it frees.
        let mostly_garbage = current > 8 * MIB && current > 2 * copy;
        near_bound || mostly_garbage
    }

    /// About what a fresh generation holding the live records takes (the blocks stay where
    /// they are, in the segment files). sled writes a fresh tree at about 4 × its payload
    /// (measured: 256 terminals' duplicate windows, 0.8 MB, make a 3.5 MiB database).
    fn estimate_copy(&self, limits: &Limits) -> u64 {
        let records = self.dedup.encoded_bytes() as u64
            + 48 * self.counts.records() as u64
            + block::block_len(&self.tail.stream) as u64;
        4 * records + limits.tuning.wal_bytes as u64 + 512 * 1024
    }

    /// Copies the live records into a new generation and switches to it.
    fn compact(&mut self, dir: &Path, limits: &Limits) -> Result<(), JournalError> {
        let old_dir = layout::generation_dir(dir, self.generation);
        let before = layout::folder_bytes(&old_dir);
        let started = std::time::Instant::now();
        // Sealed blocks stay in their segment files; blocks not written yet are written now, so
        // that the new generation's meta can count on them.
        let new_generation = self.generation + 1;
        self.write_pending_blocks(dir)?;
        let meta = Meta {
            epoch: 0,
            ..self.meta
        };
        let snapshot = Snapshot {
            meta,
            drops: &self.drops,
            tail: &self.tail.stream,
            dedup: self.dedup.all_records(),
            counts: self.counts.all_records(self.meta.next_seq),
        };
        let written = write_generation(dir, new_generation, limits, snapshot);
        let (store, wal) = match written {
            Ok(written) => written,
            Err(err) => {
                // The live generation is untouched: keep going on it and try again later.
                log::warn!(data_dir:% = dir.display(); "journal compaction failed, the journal keeps its folder as it is: {err}");
                let _ = layout::remove(&layout::generation_dir(dir, new_generation));
                self.compacted_at = before;
                return Ok(());
            }
        };
        step(limits, Step::GenerationWritten);
        layout::switch(dir, new_generation, &|| step(limits, Step::PointerWritten))
            .map_err(|e| storage(dir, e))?;
        step(limits, Step::PointerSwitched);
        let old_store = std::mem::replace(&mut self.store, store);
        drop(old_store);
        self.wal = wal;
        self.generation = new_generation;
        self.checkpoint = meta;
        self.meta.epoch = 0;
        self.logged = self.meta.next_seq;
        self.unlogged.clear();
        self.durable = self.durable_key();
        self.dedup.mark_saved();
        self.counts.mark_saved();
        self.checkpoints = 0;
        layout::remove(&old_dir).map_err(|e| storage(dir, e))?;
        step(limits, Step::OldGenerationRemoved);
        let after = layout::folder_bytes(&layout::generation_dir(dir, new_generation));
        self.compacted_at = after;
        log::info!(
            data_dir:% = dir.display();
            "journal compacted: {} → {} in {} ms ({} votes buffered)",
            crate::config::units::format_size(before),
            crate::config::units::format_size(after),
            started.elapsed().as_millis(),
            self.meta.next_seq - self.meta.head
        );
        Ok(())
    }
}

/// The write that stores the unreported dropped ranges (or removes the record when none).
fn drops_write(drops: &DropRanges) -> Write {
    if drops.is_empty() {
        Write::Delete(record::DROPS_KEY.to_vec())
    } else {
        Write::Put(record::DROPS_KEY.to_vec(), drops.encode())
    }
}

/// One write of a checkpoint.
enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Write {
    fn add_to(self, batch: &mut WriteBatch) {
        match self {
            Write::Put(key, value) => batch.put(&key, &value),
            Write::Delete(key) => batch.delete(&key),
        }
    }
}

impl From<ChunkChange> for Write {
    fn from(change: ChunkChange) -> Write {
        match change {
            ChunkChange::Put {
                terminal,
                chunk,
                value,
            } => Write::Put(record::chunk_key(&terminal, chunk), value),
            ChunkChange::Delete { terminal, chunk } => {
                Write::Delete(record::chunk_key(&terminal, chunk))
            }
        }
    }
}

impl From<CountChange> for Write {
    fn from(change: CountChange) -> Write {
        match change {
            CountChange::Put { key, value } => Write::Put(key, value),
            CountChange::Delete { key } => Write::Delete(key),
        }
    }
}

/// Writes a complete generation `number` (the snapshot's records) and makes it durable, with an
/// empty log. A generation folder of that number left by a crash is removed first.
fn write_generation(
    dir: &Path,
    number: u64,
    limits: &Limits,
    snapshot: Snapshot<'_>,
) -> Result<(Store, Wal), JournalError> {
    let gen_dir = layout::generation_dir(dir, number);
    layout::remove(&gen_dir).map_err(|e| storage(dir, e))?;
    let store = Store::open(&gen_dir, limits.cache_bytes).map_err(|e| storage(dir, e))?;
    let per_batch = limits.tuning.batch_ops.max(2);
    let mut batch = WriteBatch::default();
    let writes = snapshot
        .dedup
        .into_iter()
        .map(Write::from)
        .chain(snapshot.counts.into_iter().map(Write::from))
        .chain([
            Write::Put(
                record::TAIL_KEY.to_vec(),
                block::encode_block(snapshot.tail),
            ),
            drops_write(snapshot.drops),
            Write::Put(record::META_KEY.to_vec(), snapshot.meta.encode()),
        ]);
    for write in writes {
        write.add_to(&mut batch);
        if batch.len() >= per_batch {
            store
                .apply(std::mem::take(&mut batch))
                .map_err(|e| storage(dir, e))?;
        }
    }
    if !batch.is_empty() {
        store.apply(batch).map_err(|e| storage(dir, e))?;
    }
    store.make_durable().map_err(|e| storage(dir, e))?;
    let wal = Wal::create(&gen_dir, limits.tuning.wal_bytes).map_err(|e| storage(dir, e.into()))?;
    Ok((store, wal))
}

/// Opens (or creates, or converts) the data folder's layout; returns the live generation.
fn open_layout(dir: &Path, limits: &Limits) -> Result<u64, JournalError> {
    std::fs::create_dir_all(dir).map_err(|err| {
        storage(
            dir,
            StoreError {
                detail: format!("cannot create {}: {err}", dir.display()),
            },
        )
    })?;
    // The data folder's own entry must survive a power cut too.
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        layout::sync_dir(parent).map_err(|e| storage(dir, e))?;
    }
    let generation = match layout::read_pointer(dir).map_err(|e| storage(dir, e))? {
        layout::Pointer::Generation(number) => {
            layout::tidy(dir, Some(number)).map_err(|e| storage(dir, e))?;
            number
        }
        layout::Pointer::Unreadable(text) => {
            return Err(corrupt(
                dir,
                layout::POINTER,
                RecordError::Corrupt(format!("does not name a generation: {text:?}")),
            ))
        }
        layout::Pointer::Missing => {
            layout::tidy(dir, None).map_err(|e| storage(dir, e))?;
            let number = 1;
            if layout::has_legacy(dir) {
                legacy::convert(dir, number, limits)?;
            } else {
                let tail = VoteStream::new();
                let drops = DropRanges::new();
                let snapshot = Snapshot {
                    meta: Meta::new(),
                    drops: &drops,
                    tail: &tail,
                    dedup: Vec::new(),
                    counts: Vec::new(),
                };
                write_generation(dir, number, limits, snapshot)?;
            }
            layout::switch(dir, number, &|| {}).map_err(|e| storage(dir, e))?;
            layout::tidy(dir, Some(number)).map_err(|e| storage(dir, e))?;
            number
        }
    };
    // The pointer's rename must be durable before anything is written under it.
    layout::sync_dir(dir).map_err(|e| storage(dir, e))?;
    Ok(generation)
}

fn step(limits: &Limits, step: Step) {
    if let Some(on_step) = limits.tuning.on_step {
        on_step(step);
    }
}

fn corrupt(dir: &Path, key: &str, cause: RecordError) -> JournalError {
    JournalError::Record {
        dir: dir.to_path_buf(),
        key: key.to_string(),
        cause,
    }
}

/// Maps a storage error raised inside a scan to the journal's, keeping record errors.
fn storage_of(dir: &Path) -> impl Fn(JournalError) -> JournalError + '_ {
    move |err| match err {
        JournalError::Storage { cause, .. } => storage(dir, cause),
        other => other,
    }
}

impl From<StoreError> for JournalError {
    /// A storage error without its folder (filled in by [`storage_of`] at the edge).
    fn from(cause: StoreError) -> JournalError {
        JournalError::Storage {
            dir: PathBuf::new(),
            cause,
        }
    }
}

fn storage(dir: &Path, cause: StoreError) -> JournalError {
    JournalError::Storage {
        dir: dir.to_path_buf(),
        cause,
    }
}

//! The write-ahead log: how a commit becomes durable with one page written and one `fdatasync`.
//!
//! sled 0.34 writes each atomic batch as two log messages, each followed by its own
//! `sync_file_range` on one of sled's I/O threads, so a commit through sled costs two page writes,
//! two waits for the device and two thread hand-offs before the journal's own fsync
//! (BENCHMARKS.md § Journal). The journal therefore appends each commit's votes to this log,
//! a file of fixed size written in place, and moves them into sled in blocks at checkpoints.
//!
//! # File
//! [`WAL_FILE`] in the generation folder, [`Tuning::wal_bytes`](super::Tuning) long, created
//! zero-filled and fsynced (file and folder) before first use: a commit then overwrites bytes
//! inside the file, so `fdatasync` writes the page and never the inode.
//!
//! # Records
//! `[len: u32 LE][crc32 of body: u32 LE][body]`, body = format byte, then varints: epoch, record
//! number, first seq, head, dropped, vote count, then the votes as a [`VoteStream`], then (format
//! 2) the dropped ranges not yet reported, complete (format 1, written before them, has none and
//! leaves them as they were). Records of
//! one epoch follow each other from offset 0, numbered from 0; a record that does not fit in the
//! rest of its page (and fits in a page) starts at the next page, so a small commit writes one
//! page. Replay reads records while each has a valid checksum, the current epoch, the next
//! record number and the next seq; at an invalid one it looks once more at the start of the next
//! page, then stops. A checkpoint bumps the epoch (stored in sled) and the log starts again at 0.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::block::{decode_stream, VoteStream, MAX_STREAM_VOTES};
use super::codec::{put_varint, Reader};
use super::drops::DropRanges;
use super::record::RecordError;
use crate::model::{Seq, Vote};

/// The log's file name in a generation folder.
pub const WAL_FILE: &str = "wal";
const PAGE: usize = 4096;
const FRAME: usize = 8;
const RECORD_FORMAT_V1: u8 = 1;
const RECORD_FORMAT_V2: u8 = 2;

/// A failure of the log's file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {}: {cause}", path.display())]
pub struct WalError {
    /// What was being done.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    pub cause: String,
}

impl From<WalError> for super::store::StoreError {
    fn from(err: WalError) -> super::store::StoreError {
        super::store::StoreError {
            detail: err.to_string(),
        }
    }
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    /// The checkpoint epoch it belongs to.
    pub epoch: u64,
    /// Its number within the epoch.
    pub number: u64,
    /// The seq of its first vote (or, without votes, the next seq then).
    pub first_seq: Seq,
    /// The first buffered seq after the commit.
    pub head: Seq,
    /// The dropped counter after the commit.
    pub dropped: u64,
    /// The votes it accepted.
    pub votes: Vec<Vote>,
    /// The dropped ranges not yet reported after the commit (`None` in a format-1 record).
    pub drops: Option<DropRanges>,
}

/// Encodes a record, framed.
pub fn encode_record(
    epoch: u64,
    number: u64,
    first_seq: Seq,
    head: Seq,
    dropped: u64,
    votes: &VoteStream,
    drops: &DropRanges,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(votes.len() + 48);
    body.push(RECORD_FORMAT_V2);
    for value in [
        epoch,
        number,
        first_seq,
        head,
        dropped,
        votes.count() as u64,
    ] {
        put_varint(&mut body, value);
    }
    body.extend_from_slice(votes.bytes());
    drops.encode_into(&mut body);
    let mut framed = Vec::with_capacity(FRAME + body.len());
    framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    framed.extend_from_slice(&body);
    framed
}

fn decode_body(body: &[u8]) -> Result<WalRecord, RecordError> {
    let mut reader = Reader::new(body);
    let version = reader.byte()?;
    if ![RECORD_FORMAT_V1, RECORD_FORMAT_V2].contains(&version) {
        return Err(RecordError::UnknownVersion(version));
    }
    let epoch = reader.varint()?;
    let number = reader.varint()?;
    let first_seq = reader.varint()?;
    let head = reader.varint()?;
    let dropped = reader.varint()?;
    let count = reader.count(MAX_STREAM_VOTES)?;
    let votes = decode_stream(first_seq, count, &mut reader)?;
    let drops = if version == RECORD_FORMAT_V2 {
        Some(DropRanges::decode_from(&mut reader)?)
    } else {
        None
    };
    if !reader.is_empty() {
        return Err(RecordError::Corrupt("bytes after a log record".into()));
    }
    Ok(WalRecord {
        epoch,
        number,
        first_seq,
        head,
        dropped,
        votes,
        drops,
    })
}

/// The framed record at `offset`, if one is there with a valid checksum.
fn record_at(log: &[u8], offset: usize) -> Option<(WalRecord, usize)> {
    let frame = log.get(offset..offset.checked_add(FRAME)?)?;
    let len = u32::from_le_bytes(frame[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(frame[4..].try_into().ok()?);
    if len == 0 {
        return None;
    }
    let body = log.get(offset + FRAME..(offset + FRAME).checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let record = decode_body(body).ok()?;
    Some((record, offset + FRAME + len))
}

/// Where the next record of `len` framed bytes goes when the log ends at `end`.
fn placement(end: usize, len: usize) -> usize {
    let room_in_page = PAGE - end % PAGE;
    if len > room_in_page && len <= PAGE {
        end + room_in_page
    } else {
        end
    }
}

/// Reads the records of `epoch` from the start of `log`, each continuing the one before
/// (`next_seq` is the seq the first record must start at). Returns them and where the log ends.
pub fn replay(log: &[u8], epoch: u64, mut next_seq: Seq) -> (Vec<WalRecord>, usize) {
    let mut records = Vec::new();
    let mut end = 0;
    loop {
        let expected = |record: &WalRecord| {
            record.epoch == epoch
                && record.number == records.len() as u64
                && record.first_seq == next_seq
        };
        let found = match record_at(log, end) {
            Some((record, after)) if expected(&record) => Some((record, after)),
            _ if end % PAGE != 0 => match record_at(log, end + PAGE - end % PAGE) {
                Some((record, after)) if expected(&record) => Some((record, after)),
                _ => None,
            },
            _ => None,
        };
        let Some((record, after)) = found else {
            return (records, end);
        };
        next_seq = record.first_seq + record.votes.len() as u64;
        end = after;
        records.push(record);
    }
}

/// The open log file of a generation.
pub struct Wal {
    file: File,
    path: PathBuf,
    len: usize,
    /// Where the current epoch's records end.
    end: usize,
    /// Records written in the current epoch.
    records: u64,
}

impl Wal {
    /// Creates a zero-filled log of `len` bytes in `dir` and makes it durable (file and
    /// folder entry).
    pub fn create(dir: &Path, len: usize) -> Result<Wal, WalError> {
        let path = dir.join(WAL_FILE);
        let err = |what| {
            let path = path.clone();
            move |e: std::io::Error| WalError {
                what,
                path,
                cause: e.to_string(),
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(err("cannot create"))?;
        // Page by page: one large write would leave the file in large page-cache folios, and
        // then every small commit would count (though not write) a whole folio.
        let zeros = [0u8; PAGE];
        for offset in (0..len).step_by(PAGE) {
            file.write_all_at(&zeros[..PAGE.min(len - offset)], offset as u64)
                .map_err(err("cannot write"))?;
        }
        file.sync_all().map_err(err("cannot fsync"))?;
        File::open(dir)
            .and_then(|folder| folder.sync_all())
            .map_err(err("cannot fsync the folder of"))?;
        Ok(Wal {
            file,
            path,
            len,
            end: 0,
            records: 0,
        })
    }

    /// Opens the log in `dir` and returns it with its whole content.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<u8>), WalError> {
        let path = dir.join(WAL_FILE);
        let err = |what| {
            let path = path.clone();
            move |e: std::io::Error| WalError {
                what,
                path,
                cause: e.to_string(),
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(err("cannot open"))?;
        let mut content = Vec::new();
        file.read_to_end(&mut content).map_err(err("cannot read"))?;
        let wal = Wal {
            file,
            path,
            len: content.len(),
            end: 0,
            records: 0,
        };
        Ok((wal, content))
    }

    /// Continues after `records` replayed records ending at `end`.
    pub fn resume(&mut self, end: usize, records: u64) {
        self.end = end;
        self.records = records;
    }

    /// Starts a new epoch at the beginning of the file.
    pub fn restart(&mut self) {
        self.end = 0;
        self.records = 0;
    }

    /// The number the next record gets.
    pub fn next_number(&self) -> u64 {
        self.records
    }

    /// Whether a framed record of `len` bytes fits.
    pub fn has_room(&self, len: usize) -> bool {
        placement(self.end, len) + len <= self.len
    }

    /// The file's size.
    pub fn file_len(&self) -> usize {
        self.len
    }

    /// Writes a framed record and makes it durable.
    pub fn append(&mut self, record: &[u8]) -> Result<(), WalError> {
        let at = placement(self.end, record.len());
        if at + record.len() > self.len {
            return Err(WalError {
                what: "no room for a record in",
                path: self.path.clone(),
                cause: format!("{} bytes at offset {at}", record.len()),
            });
        }
        let err = |what| {
            let path = self.path.clone();
            move |e: std::io::Error| WalError {
                what,
                path,
                cause: e.to_string(),
            }
        };
        self.file
            .write_all_at(record, at as u64)
            .map_err(err("cannot write"))?;
        self.file.sync_data().map_err(err("cannot fsync"))?;
        self.end = at + record.len();
        self.records += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BootId, Button, TerminalId};

    fn votes(first: Seq, count: u64) -> VoteStream {
        let mut stream = VoteStream::new();
        for n in 0..count {
            stream.push(&Vote {
                seq: first + n,
                terminal: TerminalId::new("t").expect("valid"),
                button: Button::Happy,
                ts_ms: 1_795_000_000_000 + n,
                clock_synced: true,
                filtered: false,
                term_seq: Some(first + n),
                boot_id: BootId([1; 16]),
                mono_ms: n,
            });
        }
        stream
    }

    /// Writes records of `counts` votes each into a log image, as [`Wal::append`] places them.
    fn image(epoch: u64, first: Seq, counts: &[u64]) -> (Vec<u8>, usize) {
        let mut log = vec![0u8; 64 * 1024];
        let (mut end, mut seq) = (0, first);
        for (number, count) in counts.iter().enumerate() {
            let record = encode_record(
                epoch,
                number as u64,
                seq,
                1,
                0,
                &votes(seq, *count),
                &DropRanges::new(),
            );
            let at = placement(end, record.len());
            log[at..at + record.len()].copy_from_slice(&record);
            end = at + record.len();
            seq += count;
        }
        (log, end)
    }

    #[test]
    fn records_replay_in_order_and_small_ones_never_straddle_a_page() {
        let counts: Vec<u64> = (0..300).map(|n| n % 7).collect();
        let (log, end) = image(4, 100, &counts);
        let (records, replay_end) = replay(&log, 4, 100);
        assert_eq!(records.len(), counts.len());
        assert_eq!(replay_end, end);
        assert_eq!(records[3].first_seq, 100 + 3);
        let mut at = 0;
        for record in &records {
            let len = encode_record(
                4,
                record.number,
                record.first_seq,
                1,
                0,
                &votes(record.first_seq, record.votes.len() as u64),
                &DropRanges::new(),
            )
            .len();
            at = placement(at, len);
            assert_eq!(
                at / PAGE,
                (at + len - 1) / PAGE,
                "record {} straddles",
                record.number
            );
            at += len;
        }
    }

    #[test]
    fn replay_stops_at_a_torn_record_another_epoch_or_a_gap() {
        let (log, _) = image(4, 100, &[3, 3, 3]);
        assert_eq!(replay(&log, 5, 100).0.len(), 0, "another epoch");
        assert_eq!(replay(&log, 4, 101).0.len(), 0, "seq gap");
        // A torn second record: the first is still replayed.
        let mut torn = log.clone();
        let (first, _) = record_at(&log, 0).expect("first record");
        let second_at = placement(0, 0)
            + encode_record(4, 0, 100, 1, 0, &votes(100, 3), &DropRanges::new()).len();
        torn[second_at + 12] ^= 0xff;
        let (records, end) = replay(&torn, 4, 100);
        assert_eq!(records, vec![first]);
        assert_eq!(end, second_at);
        // Stale records of an older epoch after the end are ignored.
        let (mut mixed, end) = image(7, 1, &[1]);
        let (old, _) = image(6, 2, &[1, 1, 1]);
        mixed[end..end + 200].copy_from_slice(&old[end..end + 200]);
        assert_eq!(replay(&mixed, 7, 1).0.len(), 1);
    }

    #[test]
    fn dropped_ranges_ride_along_and_a_format_1_record_leaves_them_alone() {
        let mut drops = DropRanges::new();
        drops.add(3, 9);
        let record = encode_record(2, 0, 10, 10, 7, &votes(10, 2), &drops);
        let (decoded, _) = record_at(&record, 0).expect("a record");
        assert_eq!(decoded.drops, Some(drops));
        // Format 1 (written before the ranges): the same body without them.
        let mut body = vec![RECORD_FORMAT_V1];
        for value in [2, 0, 10, 10, 7, 2] {
            put_varint(&mut body, value);
        }
        body.extend_from_slice(votes(10, 2).bytes());
        let mut framed = (body.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        framed.extend_from_slice(&body);
        let (old, _) = record_at(&framed, 0).expect("a format-1 record");
        assert_eq!(old.drops, None);
        assert_eq!(old.votes, decoded.votes);
    }

    #[test]
    fn the_file_keeps_records_across_reopen_and_reports_a_full_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wal = Wal::create(dir.path(), 3 * PAGE).expect("create");
        let record = encode_record(1, 0, 10, 1, 0, &votes(10, 5), &DropRanges::new());
        wal.append(&record).expect("append");
        let second = encode_record(1, 1, 15, 1, 0, &votes(15, 2), &DropRanges::new());
        wal.append(&second).expect("append");
        let (mut reopened, content) = Wal::open(dir.path()).expect("open");
        assert_eq!(content.len(), 3 * PAGE);
        let (records, end) = replay(&content, 1, 10);
        assert_eq!(records.len(), 2);
        reopened.resume(end, 2);
        let big = encode_record(1, 2, 17, 1, 0, &votes(17, 4000), &DropRanges::new());
        assert!(!reopened.has_room(big.len()));
        assert!(reopened.append(&big).is_err());
    }
}

//! Sealed blocks on disk: append-only segment files, read by offset, deleted whole once every
//! vote in them is acknowledged or dropped (as Vector's disk buffer keeps its data files).
//!
//! sled keeps in memory what it has read or written, whatever its cache setting (sled issues
//! #986, #1410; BENCHMARKS.md § Memory: reading 40 MB of values raised the RSS by 40 MB with a
//! 1 MB cache), so a backlog of a million votes in sled would cost its size in RAM. Sealed blocks
//! never change, so they need no key-value store: the journal appends them here at checkpoints
//! and keeps their offsets in memory; sled keeps the small state that changes.
//!
//! # Files
//! `blocks/{first seq:020}.seg` in the data folder, shared by every generation. A file holds
//! blocks with consecutive seqs, each framed as `[len: u32 LE][crc32: u32 LE][first seq: u64 LE]`
//! followed by `len` bytes of block value ([`super::block`]). A file grows to the segment size
//! ([`super::Tuning::segment_bytes`]), then the next block starts a new one (its folder entry
//! made durable before a checkpoint counts on it).
//!
//! At open the files are scanned frame by frame. Blocks at or after the checkpoint's tail were
//! appended by a checkpoint that did not finish (their votes are in the write-ahead log): they are
//! cut off, whatever a power cut left there. A frame that is torn or corrupt between the head
//! (the oldest vote not yet acknowledged) and the tail is an error, and nothing is cut or removed
//! then: votes the journal holds would be missing. Below the head it only ends what is kept.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::block;
use super::store::StoreError;
use crate::model::Seq;

/// The folder of segment files in the data folder.
pub const SEGMENTS_DIR: &str = "blocks";
const FRAME: usize = 16;
const SUFFIX: &str = ".seg";

/// Where a sealed block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The first seq of its file.
    pub segment: Seq,
    /// The frame's offset in the file.
    pub offset: u64,
    /// The block value's length.
    pub len: u32,
}

/// A block found by [`Segments::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its first seq.
    pub first: Seq,
    /// Its vote count.
    pub count: u64,
    /// Where it is.
    pub location: Location,
}

/// A problem with the segment files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The file system failed.
    #[error("{what} {}: {cause}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        cause: String,
    },
    /// A block that must be there is not readable.
    #[error("block file {}: {problem}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl From<SegmentError> for StoreError {
    fn from(err: SegmentError) -> StoreError {
        StoreError {
            detail: err.to_string(),
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError {
    let path = path.to_path_buf();
    move |err| SegmentError::Io {
        what,
        path,
        cause: err.to_string(),
    }
}

struct Segment {
    file: File,
    len: u64,
    /// The seq after its last block.
    end: Seq,
}

/// The open segment files.
pub struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    files: BTreeMap<Seq, Segment>,
}

fn file_name(first: Seq) -> String {
    format!("{first:020}{SUFFIX}")
}

fn parse_file_name(name: &str) -> Option<Seq> {
    let digits = name.strip_suffix(SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl Segments {
    /// Opens the segment files in `data_dir`, keeping the blocks before `tail_first` and cutting
    /// off the rest; files wholly below `head` are removed. Returns the blocks kept, in order.
    pub fn open(
        data_dir: &Path,
        max_bytes: u64,
        head: Seq,
        tail_first: Seq,
    ) -> Result<(Segments, Vec<Found>), SegmentError> {
        let dir = data_dir.join(SEGMENTS_DIR);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
            // The folder's own entry must survive a power cut before a block counts on it.
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(io("cannot fsync", data_dir))?;
        }
        let mut names: Vec<(Seq, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(io("cannot list", &dir))?
            .filter_map(Result::ok)
            .filter_map(|e| Some((parse_file_name(e.file_name().to_str()?)?, e.path())))
            .collect();
        names.sort();
        // Every file is read before any is cut or removed: if the blocks the journal needs are
        // not all there, the files stay as they were for whoever looks into it.
        let mut plans = Vec::new();
        let mut found = Vec::new();
        let mut expected = None;
        for (first, path) in names {
            if first >= tail_first {
                plans.push((first, path, None));
                continue;
            }
            let (blocks, keep) = scan(&path, first, head, tail_first)?;
            let end = blocks.last().map_or(first, |b| b.first + b.count);
            if end <= head {
                plans.push((first, path, None));
                continue;
            }
            if let Some(expected) = expected.filter(|e| !continues(*e, first, head)) {
                return Err(SegmentError::Corrupt {
                    path,
                    problem: format!("starts at seq {first}, the file before ends at {expected}"),
                });
            }
            expected = Some(end);
            found.extend(blocks);
            plans.push((first, path, Some((keep, end))));
        }
        check_coverage(&dir, &found, head, tail_first)?;
        let mut segments = Segments {
            dir,
            max_bytes,
            files: BTreeMap::new(),
        };
        let mut changed = false;
        for (first, path, plan) in plans {
            let Some((keep, end)) = plan else {
                remove_file(&path)?;
                changed = true;
                continue;
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io("cannot open", &path))?;
            let len = file.metadata().map_err(io("cannot stat", &path))?.len();
            if keep < len {
                file.set_len(keep).map_err(io("cannot truncate", &path))?;
                file.sync_all().map_err(io("cannot fsync", &path))?;
            }
            segments.files.insert(
                first,
                Segment {
                    file,
                    len: keep,
                    end,
                },
            );
        }
        if changed {
            segments.sync_dir()?;
        }
        Ok((segments, found))
    }

    /// Appends sealed blocks `(first seq, count, value)` with consecutive seqs and makes them
    /// durable (data, and the folder entry of a new file). Returns where each went.
    pub fn append(&mut self, blocks: &[(Seq, u64, &[u8])]) -> Result<Vec<Location>, SegmentError> {
        let mut locations = Vec::with_capacity(blocks.len());
        let mut touched = Vec::new();
        let mut new_file = false;
        for (first, count, value) in blocks {
            let full = self
                .files
                .last_key_value()
                .is_none_or(|(_, last)| last.len >= self.max_bytes);
            if full {
                self.create(*first)?;
                new_file = true;
            }
            let Some(mut last) = self.files.last_entry() else {
                continue;
            };
            let segment = *last.key();
            let seg = last.get_mut();
            let mut frame = Vec::with_capacity(FRAME + value.len());
            frame.extend_from_slice(&(value.len() as u32).to_le_bytes());
            frame.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
            frame.extend_from_slice(&first.to_le_bytes());
            frame.extend_from_slice(value);
            let path = self.dir.join(file_name(segment));
            seg.file
                .write_all_at(&frame, seg.len)
                .map_err(io("cannot write", &path))?;
            locations.push(Location {
                segment,
                offset: seg.len,
                len: value.len() as u32,
            });
            seg.len += frame.len() as u64;
            seg.end = first + count;
            if touched.last() != Some(&segment) {
                touched.push(segment);
            }
        }
        for segment in touched {
            if let Some(seg) = self.files.get(&segment) {
                let path = self.dir.join(file_name(segment));
                seg.file.sync_data().map_err(io("cannot fsync", &path))?;
            }
        }
        if new_file {
            self.sync_dir()?;
        }
        Ok(locations)
    }

    fn create(&mut self, first: Seq) -> Result<(), SegmentError> {
        let path = self.dir.join(file_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("cannot create", &path))?;
        self.files.insert(
            first,
            Segment {
                file,
                len: 0,
                end: first,
            },
        );
        Ok(())
    }

    /// Reads a block value.
    pub fn read(&self, location: Location) -> Result<Vec<u8>, SegmentError> {
        let path = self.dir.join(file_name(location.segment));
        let segment = self
            .files
            .get(&location.segment)
            .ok_or_else(|| SegmentError::Corrupt {
                path: path.clone(),
                problem: "is missing".to_string(),
            })?;
        let mut value = vec![0u8; location.len as usize];
        segment
            .file
            .read_exact_at(&mut value, location.offset + FRAME as u64)
            .map_err(io("cannot read", &path))?;
        Ok(value)
    }

    /// Removes the files whose every vote is below `head` (which must be durable).
    pub fn remove_below(&mut self, head: Seq) -> Result<(), SegmentError> {
        let dead: Vec<Seq> = self
            .files
            .iter()
            .filter(|(_, seg)| seg.end <= head && seg.len > 0)
            .map(|(first, _)| *first)
            .collect();
        let mut removed = false;
        for first in dead {
            self.files.remove(&first);
            remove_file(&self.dir.join(file_name(first)))?;
            removed = true;
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|s| s.len).sum()
    }

    fn sync_dir(&self) -> Result<(), SegmentError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot fsync", &self.dir))
    }
}

fn remove_file(path: &Path) -> Result<(), SegmentError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io("cannot remove", path)(err)),
    }
}

/// Checks that `found` holds every vote from `head` up to `tail_first` (the votes buffered and
/// not yet acknowledged that the checkpoint sealed).
fn check_coverage(
    dir: &Path,
    found: &[Found],
    head: Seq,
    tail_first: Seq,
) -> Result<(), SegmentError> {
    let covered_from = found.first().map_or(tail_first, |b| b.first);
    let covered_to = found.last().map_or(tail_first, |b| b.first + b.count);
    if head < tail_first && (covered_from > head || covered_to != tail_first) {
        return Err(SegmentError::Corrupt {
            path: dir.to_path_buf(),
            problem: format!(
                "the files hold seqs {covered_from}..{covered_to}, the journal needs \
                 {head}..{tail_first}; nothing was changed"
            ),
        });
    }
    Ok(())
}

/// Whether a block at `first` may follow blocks ending at `expected`: right after them, or after
/// a gap wholly below `head` (blocks acknowledged before a checkpoint wrote them are never
/// written).
fn continues(expected: Seq, first: Seq, head: Seq) -> bool {
    first == expected || (first > expected && first <= head)
}

/// Reads a file's frames; returns the blocks before `tail_first` and the length to keep.
fn scan(
    path: &Path,
    first: Seq,
    head: Seq,
    tail_first: Seq,
) -> Result<(Vec<Found>, u64), SegmentError> {
    let mut content = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut content))
        .map_err(io("cannot read", path))?;
    let mut blocks = Vec::new();
    let mut offset = 0usize;
    let mut expected = first;
    let corrupt = |offset: usize, problem: String| SegmentError::Corrupt {
        path: path.to_path_buf(),
        problem: format!("at offset {offset}: {problem}"),
    };
    // The file ends where the next block is in the next file.
    while let Some(frame) = content.get(offset..offset + FRAME) {
        if expected >= tail_first {
            // The rest was written by a checkpoint that did not finish, and a power cut may have
            // left anything there (zeros where a page was lost before one that was kept).
            break;
        }
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let seq = Seq::from_le_bytes(frame[8..16].try_into().unwrap_or_default());
        let value = (offset + FRAME)
            .checked_add(len)
            .and_then(|end| content.get(offset + FRAME..end));
        // A block is never empty; an all-zero frame would otherwise pass (the CRC of nothing).
        let intact = len > 0 && value.is_some_and(|v| crc32fast::hash(v) == crc);
        if !intact || seq >= tail_first {
            // Written by a checkpoint that did not finish (possibly torn): cut off here, unless
            // votes the checkpoint counted on are missing.
            if expected < tail_first && expected >= head {
                return Err(corrupt(
                    offset,
                    format!("block {expected} is missing or corrupt"),
                ));
            }
            break;
        }
        if !continues(expected, seq, head) {
            return Err(corrupt(
                offset,
                format!("block {seq} where block {expected} was expected"),
            ));
        }
        let value = value.unwrap_or_default();
        let count = block::block_count(value)
            .map_err(|err| corrupt(offset, format!("block {seq}: {err}")))?
            as u64;
        blocks.push(Found {
            first: seq,
            count,
            location: Location {
                segment: first,
                offset: offset as u64,
                len: len as u32,
            },
        });
        offset += FRAME + len;
        expected = seq + count;
    }
    Ok((blocks, offset as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::block::{encode_block, VoteStream};
    use crate::model::{BootId, Button, TerminalId, Vote};

    fn value(first: Seq, count: u64) -> Vec<u8> {
        let mut stream = VoteStream::new();
        for n in 0..count {
            stream.push(&Vote {
                seq: first + n,
                terminal: TerminalId::new("t").expect("id"),
                button: Button::Happy,
                ts_ms: n,
                clock_synced: true,
                filtered: false,
                term_seq: Some(first + n),
                boot_id: BootId([1; 16]),
                mono_ms: n,
            });
        }
        encode_block(&stream)
    }

    fn append(segments: &mut Segments, first: Seq, count: u64) -> Location {
        let value = value(first, count);
        segments.append(&[(first, count, &value)]).expect("append")[0]
    }

    #[test]
    fn blocks_span_files_and_reopen_where_they_were() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut segments, found) = Segments::open(dir.path(), 200, 1, 1).expect("open");
        assert!(found.is_empty());
        let mut locations = Vec::new();
        for n in 0..10 {
            locations.push(append(&mut segments, 1 + n * 5, 5));
        }
        assert!(segments.files.len() > 1, "no second file");
        assert_eq!(segments.read(locations[3]).expect("read"), value(16, 5));
        drop(segments);
        let (segments, found) = Segments::open(dir.path(), 200, 1, 51).expect("reopen");
        assert_eq!(found.len(), 10);
        assert_eq!(
            found.iter().map(|f| f.location).collect::<Vec<_>>(),
            locations
        );
        assert_eq!(
            segments.read(found[9].location).expect("read"),
            value(46, 5)
        );
    }

    #[test]
    fn blocks_of_an_unfinished_checkpoint_are_cut_off_and_dead_files_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut segments, _) = Segments::open(dir.path(), 100, 1, 1).expect("open");
        for n in 0..6 {
            append(&mut segments, 1 + n * 4, 4);
        }
        let files = segments.files.len();
        drop(segments);
        // The checkpoint that stored blocks from seq 17 on never finished; votes below 9 are acked.
        let (mut segments, found) = Segments::open(dir.path(), 100, 9, 17).expect("reopen");
        assert_eq!(found.last().map(|f| f.first + f.count), Some(17));
        assert!(found.iter().all(|f| f.first + f.count > 9));
        assert!(segments.files.len() < files);
        // Appending continues after the cut.
        let at = append(&mut segments, 17, 4);
        assert_eq!(segments.read(at).expect("read"), value(17, 4));
        segments.remove_below(21).expect("remove");
        assert!(segments.files.is_empty(), "a dead file is left");
        // The next block starts a new file.
        let at = append(&mut segments, 21, 4);
        assert_eq!((at.segment, at.offset), (21, 0));
    }

    /// A power cut in a checkpoint's write can keep a later page of the file and lose an
    /// earlier one: the file then has zeros where a frame should start, and an all-zero frame
    /// passes its CRC (the CRC of nothing is 0). Found by the power-cut test in CI.
    #[test]
    fn zeros_left_by_a_cut_checkpoint_are_cut_off_not_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut segments, _) = Segments::open(dir.path(), 1 << 20, 1, 1).expect("open");
        append(&mut segments, 1, 4);
        let at = append(&mut segments, 5, 4);
        drop(segments);
        let path = dir.path().join(SEGMENTS_DIR).join(file_name(1));
        let kept = at.offset + (FRAME + at.len as usize) as u64;
        let mut bytes = std::fs::read(&path).expect("read");
        // The unfinished checkpoint's next frame lost, a page after it kept.
        bytes.extend(std::iter::repeat_n(0u8, 4096));
        bytes.extend(value(9, 4));
        std::fs::write(&path, bytes).expect("write");
        let (mut segments, found) = Segments::open(dir.path(), 1 << 20, 1, 9).expect("reopen");
        assert_eq!(found.last().map(|f| f.first + f.count), Some(9));
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), kept);
        let at = append(&mut segments, 9, 4);
        assert_eq!(segments.read(at).expect("read"), value(9, 4));
        // Zeros where a block the checkpoint counted on should be are still an error.
        drop(segments);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.truncate(kept as usize);
        bytes.extend(std::iter::repeat_n(0u8, 64));
        std::fs::write(&path, bytes).expect("write");
        let err = Segments::open(dir.path(), 1 << 20, 1, 13)
            .err()
            .expect("corrupt");
        assert!(
            err.to_string().contains("block 9 is missing or corrupt"),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_block_before_the_tail_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut segments, _) = Segments::open(dir.path(), 1 << 20, 1, 1).expect("open");
        let at = append(&mut segments, 1, 4);
        append(&mut segments, 5, 4);
        drop(segments);
        let path = dir.path().join(SEGMENTS_DIR).join(file_name(1));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[at.offset as usize + FRAME + 2] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let err = Segments::open(dir.path(), 1 << 20, 1, 9)
            .err()
            .expect("corrupt");
        assert!(
            err.to_string().contains("block 1 is missing or corrupt"),
            "{err}"
        );
        // Damage below the head ends what is kept; if a needed block is behind it, that is an
        // error too, and the file is left as it was.
        let damaged = std::fs::read(&path).expect("read");
        let err = Segments::open(dir.path(), 1 << 20, 5, 9)
            .err()
            .expect("block 5 is behind the damage");
        assert!(
            err.to_string()
                .contains("the journal needs 5..9; nothing was changed"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), damaged);
        // Once everything is acknowledged, the damage does not matter.
        let (segments, found) = Segments::open(dir.path(), 1 << 20, 9, 9).expect("open");
        assert!(found.is_empty() && segments.files.is_empty());
        assert!(!path.exists());
    }

    /// Blocks acknowledged before a checkpoint sealed them are never written, so a file can end
    /// below the head and the next checkpoint's frame (torn by a cut: zeros) follow there.
    #[test]
    fn zeros_below_the_head_end_the_file_cleanly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut segments, _) = Segments::open(dir.path(), 1 << 20, 1, 1).expect("open");
        append(&mut segments, 1, 4);
        drop(segments);
        let path = dir.path().join(SEGMENTS_DIR).join(file_name(1));
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend(std::iter::repeat_n(0u8, 4096));
        let later = value(9, 4);
        bytes.extend_from_slice(&(later.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&later).to_le_bytes());
        bytes.extend_from_slice(&9u64.to_le_bytes());
        bytes.extend(later);
        std::fs::write(&path, bytes).expect("write");
        let (segments, found) = Segments::open(dir.path(), 1 << 20, 9, 9).expect("reopen");
        assert!(found.is_empty() && segments.files.is_empty());
    }
}

//! Which `(terminal, term_seq)` pairs the journal has already accepted. Pure: no I/O.
//!
//! A serial terminal retransmits a vote until it sees the gateway's ack; if the ack is lost (or
//! the gateway restarts between the durable write and the ack), the same vote arrives again and
//! must map to the seq it already has. hardware/PROTOCOL.md promises that the gateway remembers
//! the last [`DEDUP_WINDOW`] term_seqs of each terminal, in acceptance order, across restarts.
//!
//! Each terminal's window is kept as chunks of [`CHUNK_ENTRIES`] entries: the newest chunk
//! open, the older ones sealed and encoded (about 3 bytes an entry instead of 16), which is
//! also how they are stored: one record per chunk, so a checkpoint rewrites only the chunks
//! that changed. The window holds between [`DEDUP_WINDOW`] and `DEDUP_WINDOW + CHUNK_ENTRIES`
//! entries: the oldest chunk goes only when the others hold the whole window.

use std::collections::{HashMap, VecDeque};

use super::codec::{apply_delta, delta, put_signed, put_varint, Reader};
use super::record::RecordError;
use crate::model::{Seq, TermSeq, TerminalId};

/// How many accepted term_seqs per terminal are remembered at least.
pub const DEDUP_WINDOW: usize = 1024;
/// Entries per chunk.
pub const CHUNK_ENTRIES: usize = 64;
const CHUNK_FORMAT_V1: u8 = 1;

/// The remembered term_seqs of all terminals.
#[derive(Debug)]
pub struct DedupWindow {
    capacity: usize,
    terminals: HashMap<TerminalId, Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    /// Number of the oldest chunk in `sealed` (chunks are numbered from 0, oldest first).
    first_chunk: u32,
    sealed: VecDeque<Chunk>,
    open: Vec<(TermSeq, Seq)>,
    /// Chunks from this number on changed since the last [`DedupWindow::take_changes`].
    dirty_from: Option<u32>,
    /// Chunks evicted since then.
    evicted: Vec<u32>,
}

#[derive(Debug)]
struct Chunk {
    entries: usize,
    min: TermSeq,
    max: TermSeq,
    encoded: Box<[u8]>,
}

/// A chunk record to write or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkChange {
    /// Store `value` as chunk `chunk` of `terminal`.
    Put {
        /// The terminal.
        terminal: TerminalId,
        /// The chunk number.
        chunk: u32,
        /// The encoded chunk.
        value: Vec<u8>,
    },
    /// Delete chunk `chunk` of `terminal`.
    Delete {
        /// The terminal.
        terminal: TerminalId,
        /// The chunk number.
        chunk: u32,
    },
}

impl DedupWindow {
    /// An empty window remembering at least `capacity` term_seqs per terminal.
    pub fn new(capacity: usize) -> DedupWindow {
        DedupWindow {
            capacity: capacity.max(1),
            terminals: HashMap::new(),
        }
    }

    /// The seq of an already accepted `(terminal, term_seq)`.
    pub fn lookup(&self, terminal: &TerminalId, term_seq: TermSeq) -> Option<Seq> {
        let recent = self.terminals.get(terminal)?;
        if let Some((_, seq)) = recent.open.iter().rev().find(|(t, _)| *t == term_seq) {
            return Some(*seq);
        }
        recent
            .sealed
            .iter()
            .rev()
            .filter(|chunk| (chunk.min..=chunk.max).contains(&term_seq))
            .find_map(|chunk| {
                decode_entries(&chunk.encoded)
                    .ok()?
                    .into_iter()
                    .rev()
                    .find(|(t, _)| *t == term_seq)
                    .map(|(_, seq)| seq)
            })
    }

    /// Remembers an accepted vote (again: a pair already remembered is left as it is).
    pub fn remember(&mut self, terminal: &TerminalId, term_seq: TermSeq, seq: Seq) {
        if self.lookup(terminal, term_seq).is_some() {
            return;
        }
        let capacity = self.capacity;
        let recent = self.terminals.entry(terminal.clone()).or_default();
        let open_chunk = recent.open_chunk();
        recent.mark_dirty(open_chunk);
        recent.open.push((term_seq, seq));
        if recent.open.len() >= CHUNK_ENTRIES {
            let entries = std::mem::take(&mut recent.open);
            recent.sealed.push_back(Chunk::seal(&entries));
        }
        while let Some(oldest) = recent.sealed.front() {
            let total: usize =
                recent.sealed.iter().map(|c| c.entries).sum::<usize>() + recent.open.len();
            if total - oldest.entries < capacity {
                break;
            }
            recent.sealed.pop_front();
            recent.evicted.push(recent.first_chunk);
            recent.first_chunk += 1;
        }
    }

    /// The chunk records changed since the last call, to store with the next checkpoint.
    pub fn take_changes(&mut self) -> Vec<ChunkChange> {
        let mut changes = Vec::new();
        for (terminal, recent) in &mut self.terminals {
            for chunk in recent.evicted.drain(..) {
                changes.push(ChunkChange::Delete {
                    terminal: terminal.clone(),
                    chunk,
                });
            }
            let Some(from) = recent.dirty_from.take() else {
                continue;
            };
            let open_chunk = recent.open_chunk();
            for (n, sealed) in (recent.first_chunk..).zip(&recent.sealed) {
                if n >= from {
                    changes.push(ChunkChange::Put {
                        terminal: terminal.clone(),
                        chunk: n,
                        value: chunk_value(sealed.entries, &sealed.encoded),
                    });
                }
            }
            if !recent.open.is_empty() {
                changes.push(ChunkChange::Put {
                    terminal: terminal.clone(),
                    chunk: open_chunk,
                    value: chunk_value(recent.open.len(), &encode_entries(&recent.open)),
                });
            }
        }
        changes
    }

    /// Every chunk record, as a fresh store (compaction) needs them.
    pub fn all_records(&self) -> Vec<ChunkChange> {
        let mut records = Vec::new();
        for (terminal, recent) in &self.terminals {
            for (n, sealed) in (recent.first_chunk..).zip(&recent.sealed) {
                records.push(ChunkChange::Put {
                    terminal: terminal.clone(),
                    chunk: n,
                    value: chunk_value(sealed.entries, &sealed.encoded),
                });
            }
            if !recent.open.is_empty() {
                records.push(ChunkChange::Put {
                    terminal: terminal.clone(),
                    chunk: recent.open_chunk(),
                    value: chunk_value(recent.open.len(), &encode_entries(&recent.open)),
                });
            }
        }
        records
    }

    /// Forgets pending changes: a fresh store got [`DedupWindow::all_records`].
    pub fn mark_saved(&mut self) {
        for recent in self.terminals.values_mut() {
            recent.dirty_from = None;
            recent.evicted.clear();
        }
    }

    /// Restores one terminal's window from its stored chunks (any order). Nothing is marked
    /// changed.
    pub fn load(
        &mut self,
        terminal: &TerminalId,
        mut chunks: Vec<(u32, Vec<u8>)>,
    ) -> Result<(), RecordError> {
        chunks.sort_by_key(|(n, _)| *n);
        let mut recent = Recent {
            first_chunk: chunks.first().map_or(0, |(n, _)| *n),
            ..Recent::default()
        };
        let last = chunks.len().saturating_sub(1);
        for (i, (n, value)) in chunks.iter().enumerate() {
            if *n != recent.first_chunk + i as u32 {
                return Err(RecordError::Corrupt(format!(
                    "duplicate window of {terminal} skips chunk {}",
                    recent.first_chunk + i as u32
                )));
            }
            let entries = decode_chunk(value)?;
            if i == last && entries.len() < CHUNK_ENTRIES {
                recent.open = entries;
            } else {
                recent.sealed.push_back(Chunk::seal(&entries));
            }
        }
        self.terminals.insert(terminal.clone(), recent);
        Ok(())
    }

    /// Number of remembered pairs over all terminals.
    pub fn len(&self) -> usize {
        self.terminals
            .values()
            .map(|r| r.sealed.iter().map(|c| c.entries).sum::<usize>() + r.open.len())
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the encoded window, about what its records take on disk.
    pub fn encoded_bytes(&self) -> usize {
        self.terminals
            .values()
            .map(|r| r.sealed.iter().map(|c| c.encoded.len()).sum::<usize>() + r.open.len() * 4)
            .sum()
    }
}

impl Recent {
    fn open_chunk(&self) -> u32 {
        self.first_chunk + self.sealed.len() as u32
    }

    fn mark_dirty(&mut self, chunk: u32) {
        self.dirty_from = Some(self.dirty_from.map_or(chunk, |from| from.min(chunk)));
    }
}

impl Chunk {
    fn seal(entries: &[(TermSeq, Seq)]) -> Chunk {
        Chunk {
            entries: entries.len(),
            min: entries.iter().map(|(t, _)| *t).min().unwrap_or(0),
            max: entries.iter().map(|(t, _)| *t).max().unwrap_or(0),
            encoded: encode_entries(entries).into_boxed_slice(),
        }
    }
}

fn encode_entries(entries: &[(TermSeq, Seq)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 3 + 16);
    let (mut term_seq, mut seq) = (0u64, 0u64);
    for (t, s) in entries {
        put_signed(&mut out, delta(term_seq, *t));
        put_signed(&mut out, delta(seq, *s));
        (term_seq, seq) = (*t, *s);
    }
    out
}

fn decode_entries(bytes: &[u8]) -> Result<Vec<(TermSeq, Seq)>, RecordError> {
    let mut reader = Reader::new(bytes);
    let mut entries = Vec::with_capacity(CHUNK_ENTRIES);
    let (mut term_seq, mut seq) = (0u64, 0u64);
    while !reader.is_empty() {
        term_seq = apply_delta(term_seq, reader.signed()?);
        seq = apply_delta(seq, reader.signed()?);
        entries.push((term_seq, seq));
    }
    Ok(entries)
}

fn chunk_value(entries: usize, encoded: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(encoded.len() + 4);
    value.push(CHUNK_FORMAT_V1);
    put_varint(&mut value, entries as u64);
    value.extend_from_slice(encoded);
    value
}

/// Decodes a stored chunk.
pub fn decode_chunk(value: &[u8]) -> Result<Vec<(TermSeq, Seq)>, RecordError> {
    let mut reader = Reader::new(value);
    match reader.byte()? {
        CHUNK_FORMAT_V1 => {}
        version => return Err(RecordError::UnknownVersion(version)),
    }
    let count = reader.count(CHUNK_ENTRIES)?;
    let entries = decode_entries(reader.rest())?;
    if entries.len() != count {
        return Err(RecordError::Corrupt(format!(
            "duplicate-window chunk says {count} entries but holds {}",
            entries.len()
        )));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> TerminalId {
        TerminalId::new(name).expect("valid id")
    }

    #[test]
    fn remembers_per_terminal() {
        let mut window = DedupWindow::new(4);
        window.remember(&id("a"), 1, 10);
        assert_eq!(window.lookup(&id("a"), 1), Some(10));
        assert_eq!(window.lookup(&id("b"), 1), None);
        assert_eq!(window.lookup(&id("a"), 2), None);
    }

    #[test]
    fn keeps_the_whole_window_and_evicts_the_oldest_accepted_not_the_smallest() {
        let mut window = DedupWindow::new(DEDUP_WINDOW);
        // A terminal whose counter restarted: 100_000 was accepted before 1.
        window.remember(&id("a"), 100_000, 1);
        for n in 1..=(DEDUP_WINDOW as u64 + 2 * CHUNK_ENTRIES as u64) {
            window.remember(&id("a"), n, n + 1);
            // The last DEDUP_WINDOW are always there.
            let oldest_kept = n.saturating_sub(DEDUP_WINDOW as u64 - 1).max(1);
            assert_eq!(window.lookup(&id("a"), oldest_kept), Some(oldest_kept + 1));
        }
        assert_eq!(window.lookup(&id("a"), 100_000), None);
        assert!(window.len() >= DEDUP_WINDOW && window.len() < DEDUP_WINDOW + CHUNK_ENTRIES);
        // Sealed chunks are compact: a counter going up by one costs 2–3 bytes an entry.
        assert!(
            window.encoded_bytes() < 4 * window.len(),
            "{}",
            window.encoded_bytes()
        );
    }

    #[test]
    fn remembering_again_changes_nothing() {
        let mut window = DedupWindow::new(8);
        window.remember(&id("a"), 5, 50);
        window.remember(&id("a"), 5, 99);
        assert_eq!(window.lookup(&id("a"), 5), Some(50));
        assert_eq!(window.len(), 1);
    }

    /// Applies changes to a map of records, as the store would.
    fn apply(store: &mut HashMap<(String, u32), Vec<u8>>, changes: Vec<ChunkChange>) {
        for change in changes {
            match change {
                ChunkChange::Put {
                    terminal,
                    chunk,
                    value,
                } => {
                    store.insert((terminal.to_string(), chunk), value);
                }
                ChunkChange::Delete { terminal, chunk } => {
                    store.remove(&(terminal.to_string(), chunk));
                }
            }
        }
    }

    fn reload(store: &HashMap<(String, u32), Vec<u8>>) -> DedupWindow {
        let mut window = DedupWindow::new(DEDUP_WINDOW);
        let mut per_terminal: HashMap<String, Vec<(u32, Vec<u8>)>> = HashMap::new();
        for ((terminal, chunk), value) in store {
            per_terminal
                .entry(terminal.clone())
                .or_default()
                .push((*chunk, value.clone()));
        }
        for (terminal, chunks) in per_terminal {
            window.load(&id(&terminal), chunks).expect("load");
        }
        window
    }

    #[test]
    fn changes_written_at_checkpoints_restore_the_same_window() {
        let mut window = DedupWindow::new(DEDUP_WINDOW);
        let mut store = HashMap::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut next = [0u64; 3];
        let mut seq = 0;
        for round in 0..200 {
            for _ in 0..rng.usize(0..40) {
                let t = rng.usize(0..3);
                next[t] += 1;
                seq += 1;
                window.remember(&id(&format!("t{t}")), next[t], seq);
            }
            apply(&mut store, window.take_changes());
            if round % 17 == 0 {
                let reloaded = reload(&store);
                assert_eq!(reloaded.len(), window.len());
                for (t, last) in next.iter().enumerate() {
                    let terminal = id(&format!("t{t}"));
                    for term_seq in last.saturating_sub(DEDUP_WINDOW as u64 + 10)..=*last {
                        assert_eq!(
                            reloaded.lookup(&terminal, term_seq),
                            window.lookup(&terminal, term_seq)
                        );
                    }
                }
            }
        }
        // Every record is also what a fresh store gets.
        let mut fresh = HashMap::new();
        apply(&mut fresh, window.all_records());
        assert_eq!(fresh, store);
    }

    #[test]
    fn corrupt_chunks_are_errors() {
        assert!(decode_chunk(&[]).is_err());
        assert_eq!(decode_chunk(&[7, 0]), Err(RecordError::UnknownVersion(7)));
        assert!(decode_chunk(&[CHUNK_FORMAT_V1, 2, 2, 2]).is_err());
        let mut window = DedupWindow::new(8);
        assert!(window
            .load(
                &id("a"),
                vec![(0, chunk_value(0, &[])), (2, chunk_value(0, &[]))]
            )
            .is_err());
    }
}

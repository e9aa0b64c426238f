//! Which `(terminal, term_seq)` pairs the journal has already accepted. Pure: no I/O.
//!
//! A serial terminal retransmits a vote until it sees the gateway's ack; if the ack is lost (or
//! the gateway restarts between the durable write and the ack), the same vote arrives again and
//! must map to the seq it already has. Retransmissions concern a terminal's most recent votes, so
//! the window keeps the last [`DEDUP_WINDOW`] term_seqs per terminal, in acceptance order. The
//! journal persists the same entries, so the window survives restarts.

use std::collections::{HashMap, VecDeque};

use crate::model::{Seq, TermSeq, TerminalId};

/// How many accepted term_seqs per terminal are remembered. A terminal that buffers votes while
/// the gateway is away sends them one at a time (hardware/PROTOCOL.md), so only the last few can
/// ever come back; 1024 leaves a wide margin for about 20 KiB per terminal.
pub const DEDUP_WINDOW: usize = 1024;

/// The remembered term_seqs of all terminals.
#[derive(Debug)]
pub struct DedupWindow {
    capacity: usize,
    terminals: HashMap<TerminalId, Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<TermSeq>,
    seqs: HashMap<TermSeq, Seq>,
}

impl DedupWindow {
    /// An empty window remembering `capacity` term_seqs per terminal.
    pub fn new(capacity: usize) -> DedupWindow {
        DedupWindow {
            capacity: capacity.max(1),
            terminals: HashMap::new(),
        }
    }

    /// The seq of an already accepted `(terminal, term_seq)`.
    pub fn lookup(&self, terminal: &TerminalId, term_seq: TermSeq) -> Option<Seq> {
        self.terminals.get(terminal)?.seqs.get(&term_seq).copied()
    }

    /// Remembers an accepted vote. Returns the term_seq that fell out of the terminal's window,
    /// which the caller deletes from storage in the same batch.
    pub fn remember(
        &mut self,
        terminal: &TerminalId,
        term_seq: TermSeq,
        seq: Seq,
    ) -> Option<TermSeq> {
        let recent = self.terminals.entry(terminal.clone()).or_default();
        if recent.seqs.insert(term_seq, seq).is_none() {
            recent.order.push_back(term_seq);
        }
        if recent.order.len() > self.capacity {
            let evicted = recent.order.pop_front()?;
            recent.seqs.remove(&evicted);
            return Some(evicted);
        }
        None
    }

    /// Number of remembered pairs over all terminals.
    pub fn len(&self) -> usize {
        self.terminals
            .values()
            .map(|recent| recent.order.len())
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        assert_eq!(window.remember(&id("a"), 1, 10), None);
        assert_eq!(window.lookup(&id("a"), 1), Some(10));
        assert_eq!(window.lookup(&id("b"), 1), None);
        assert_eq!(window.lookup(&id("a"), 2), None);
    }

    #[test]
    fn evicts_the_oldest_accepted_not_the_smallest() {
        let mut window = DedupWindow::new(2);
        // A terminal whose counter restarted: 100 was accepted before 1.
        window.remember(&id("a"), 100, 1);
        window.remember(&id("a"), 1, 2);
        assert_eq!(window.remember(&id("a"), 2, 3), Some(100));
        assert_eq!(window.lookup(&id("a"), 100), None);
        assert_eq!(window.lookup(&id("a"), 1), Some(2));
        assert_eq!(window.len(), 2);
    }
}

//! Model-based test of the journal: random sequences of appends (with retransmissions), partial
//! acks, restarts, syncs and compactions, on a journal small enough to fill up and with blocks,
//! log and sled batches small enough that every commit path runs (log record, checkpoint because
//! a block was sealed or the log is full, checkpoint in several sled batches), against a plain
//! in-memory model of blocks and a tail.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use votegate::journal::block::{block_len, VoteStream};
use votegate::journal::{votes_budget, Journal, Limits, Outcome, Tuning, WhenFull, BLOCK_OVERHEAD};
use votegate::model::{BootId, Button, Press, PressTime, TerminalId, Vote};

/// About a dozen blocks fit in the budget: the "full" paths run in most cases.
const MAX_BYTES: u64 = 4_000;

fn tuning() -> Tuning {
    Tuning {
        block_votes: 4,
        block_bytes: 120,
        wal_bytes: 3 * 4096,
        segment_bytes: 512,
        batch_ops: 3,
        ..Tuning::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A group of presses committed together: (terminal, term_seq, button).
    Append(Vec<(usize, Option<u64>, u8)>),
    /// Acknowledge through the oldest buffered seq plus this offset (partial blocks too).
    AckThrough(u64),
    /// A batch reported the dropped seqs through the oldest unreported one plus this offset.
    ForgetDrops(u64),
    Restart,
    Sync,
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    let press = (
        0..3usize,
        proptest::option::weighted(0.7, 0..12u64),
        1..=4u8,
    );
    prop_oneof![
        6 => proptest::collection::vec(press, 1..6).prop_map(Op::Append),
        2 => (0..8u64).prop_map(Op::AckThrough),
        1 => (0..8u64).prop_map(Op::ForgetDrops),
        1 => Just(Op::Restart),
        1 => Just(Op::Sync),
        1 => Just(Op::Compact),
    ]
}

/// The charged size of a block (or the tail) holding `votes`.
fn charge(votes: &[Vote]) -> u64 {
    if votes.is_empty() {
        return 0;
    }
    let mut stream = VoteStream::new();
    for vote in votes {
        stream.push(vote);
    }
    block_len(&stream) as u64 + BLOCK_OVERHEAD
}

/// The journal as sealed blocks, a tail and a few maps.
struct Model {
    when_full: WhenFull,
    tuning: Tuning,
    blocks: Vec<Vec<Vote>>,
    tail: Vec<Vote>,
    head: u64,
    next_seq: u64,
    dropped: u64,
    /// Dropped seqs not yet reported.
    drops: BTreeSet<u64>,
    dedup: HashMap<(String, u64), u64>,
    /// (minute, terminal) → counted per button, filtered.
    minutes: BTreeMap<(u32, String), ([u32; 4], u32)>,
}

impl Model {
    fn new(when_full: WhenFull) -> Model {
        Model {
            when_full,
            tuning: tuning(),
            blocks: Vec::new(),
            tail: Vec::new(),
            head: 1,
            next_seq: 1,
            dropped: 0,
            drops: BTreeSet::new(),
            dedup: HashMap::new(),
            minutes: BTreeMap::new(),
        }
    }

    fn live_blocks(&self) -> impl Iterator<Item = &Vec<Vote>> {
        let head = self.head;
        self.blocks
            .iter()
            .filter(move |b| b.last().is_some_and(|v| v.seq >= head))
    }

    fn charged(&self) -> u64 {
        self.live_blocks().map(|b| charge(b)).sum::<u64>() + charge(&self.tail)
    }

    fn buffered(&self) -> Vec<Vote> {
        self.live_blocks()
            .flatten()
            .chain(&self.tail)
            .filter(|v| v.seq >= self.head)
            .cloned()
            .collect()
    }

    fn append(&mut self, presses: &[Press]) -> Vec<Outcome> {
        let budget = votes_budget(MAX_BYTES);
        let first_new = self.next_seq;
        let mut outcomes = Vec::new();
        for press in presses {
            let terminal = press.terminal.to_string();
            if let Some(seq) = press
                .term_seq
                .and_then(|ts| self.dedup.get(&(terminal.clone(), ts)))
            {
                outcomes.push(Outcome::Duplicate(*seq));
                continue;
            }
            let vote = Vote::accept(self.next_seq, press.clone());
            let mut grown = self.tail.clone();
            grown.push(vote.clone());
            let cost = charge(&grown) - charge(&self.tail);
            if self.charged() + cost > budget && self.when_full == WhenFull::DropOldest {
                while self.charged() + cost > budget {
                    let oldest = self
                        .live_blocks()
                        .next()
                        .map(|b| (b[0].seq, b[b.len() - 1].seq + 1));
                    match oldest {
                        Some((first, end)) if end <= first_new => {
                            self.dropped += end - self.head.max(first);
                            self.drops.extend(self.head.max(first)..end);
                            self.head = end;
                        }
                        _ => break,
                    }
                }
            }
            if self.charged() + cost > budget {
                if press.term_seq.is_none() {
                    self.dropped += 1;
                }
                outcomes.push(Outcome::Refused);
                continue;
            }
            if let Some(ts) = press.term_seq {
                self.dedup.insert((terminal.clone(), ts), vote.seq);
            }
            let counts = self
                .minutes
                .entry(((vote.ts_ms / 60_000) as u32, terminal))
                .or_default();
            if vote.filtered {
                counts.1 += 1;
            } else {
                counts.0[vote.button.index()] += 1;
            }
            self.next_seq += 1;
            self.tail.push(vote.clone());
            if self.tail.len() >= self.tuning.block_votes
                || charge(&self.tail) - BLOCK_OVERHEAD >= self.tuning.block_bytes as u64
            {
                self.blocks.push(std::mem::take(&mut self.tail));
            }
            outcomes.push(Outcome::Accepted(vote));
        }
        outcomes
    }

    fn ack_through(&mut self, through: u64) -> u64 {
        let new_head = (through + 1).min(self.next_seq);
        if new_head <= self.head {
            return 0;
        }
        let acked = new_head - self.head;
        self.head = new_head;
        acked
    }
}

fn press(terminal: usize, term_seq: Option<u64>, button: u8, n: u64) -> Press {
    Press {
        terminal: TerminalId::new(&format!("term-{terminal}")).expect("valid id"),
        button: Button::try_from(button).expect("valid button"),
        term_seq,
        at: PressTime {
            // Three presses a minute, so that minute counts both grow and span minutes.
            ts_ms: 1_795_000_000_000 + n * 20_000,
            clock_synced: n % 3 != 0,
            boot_id: BootId([(n / 50) as u8; 16]),
            mono_ms: n,
        },
        filtered: n % 5 == 0,
    }
}

fn check_same(journal: &mut Journal, model: &Model) -> Result<(), TestCaseError> {
    let stats = journal.stats();
    prop_assert_eq!(stats.next_seq, model.next_seq, "next_seq");
    prop_assert_eq!(stats.dropped, model.dropped, "dropped");
    prop_assert_eq!(stats.depth, model.next_seq - model.head, "depth");
    prop_assert_eq!(stats.charged_bytes, model.charged(), "charged bytes");
    prop_assert!(stats.charged_bytes <= votes_budget(MAX_BYTES));
    let buffered = model.buffered();
    prop_assert_eq!(stats.oldest_seq, buffered.first().map(|v| v.seq), "oldest");
    prop_assert_eq!(stats.oldest_ts_ms, buffered.first().map(|v| v.ts_ms));
    prop_assert_eq!(&journal.read_after(0, usize::MAX).expect("read"), &buffered);
    // Reads that start inside a block and stop inside another.
    if buffered.len() > 3 {
        let from = buffered[1].seq;
        let part = journal.read_after(from, 2).expect("read");
        prop_assert_eq!(&part[..], &buffered[2..4]);
    }
    let counts = journal.counts_for_tallies(0).expect("counts");
    prop_assert_eq!(counts.next_seq, model.next_seq);
    let minutes: BTreeMap<(u32, String), ([u32; 4], u32)> = counts
        .minutes
        .into_iter()
        .map(|(minute, terminal, tally)| {
            (
                (minute, terminal.to_string()),
                (tally.counted, tally.filtered),
            )
        })
        .collect();
    prop_assert_eq!(&minutes, &model.minutes, "minute counts");
    let drops: BTreeSet<u64> = journal
        .unreported_drops()
        .expect("drops")
        .into_iter()
        .flat_map(|(first, last)| first..=last)
        .collect();
    prop_assert_eq!(&drops, &model.drops, "unreported drops");
    Ok(())
}

fn run_case(when_full: WhenFull, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = Limits {
        max_disk_bytes: MAX_BYTES,
        when_full,
        cache_bytes: 1024 * 1024,
        tuning: tuning(),
    };
    let mut journal = Journal::open(dir.path(), limits).expect("open");
    let mut model = Model::new(when_full);
    let mut n = 0;
    for op in ops {
        match op {
            Op::Append(group) => {
                let presses: Vec<Press> = group
                    .into_iter()
                    .map(|(t, ts, b)| {
                        n += 1;
                        press(t, ts, b, n)
                    })
                    .collect();
                let expected = model.append(&presses);
                let outcomes = journal.append(presses).expect("append");
                prop_assert_eq!(outcomes, expected);
            }
            Op::AckThrough(offset) => {
                let through = model.head + offset;
                let expected = model.ack_through(through);
                prop_assert_eq!(journal.ack_through(through).expect("ack"), expected);
            }
            Op::ForgetDrops(offset) => {
                if let Some(oldest) = model.drops.first().copied() {
                    let through = oldest + offset;
                    model.drops = model.drops.split_off(&(through + 1));
                    journal.forget_drops_through(through).expect("forget");
                }
            }
            Op::Restart => {
                drop(journal);
                journal = Journal::open(dir.path(), limits).expect("reopen");
            }
            Op::Sync => journal.sync().expect("sync"),
            Op::Compact => journal.compact().expect("compact"),
        }
        check_same(&mut journal, &model)?;
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(40);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn journal_matches_the_model_when_dropping_oldest(ops in proptest::collection::vec(op(), 1..60)) {
        run_case(WhenFull::DropOldest, ops)?;
    }

    #[test]
    fn journal_matches_the_model_when_rejecting_new(ops in proptest::collection::vec(op(), 1..60)) {
        run_case(WhenFull::RejectNew, ops)?;
    }
}

//! Model-based test of the journal: random sequences of appends (with retransmissions), acks,
//! restarts and syncs, on a journal small enough to fill up, against a plain in-memory model.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use votegate::journal::record::{encode_vote, vote_cost};
use votegate::journal::{Journal, Limits, Outcome, WhenFull};
use votegate::model::{BootId, Button, Press, PressTime, TerminalId, Vote};

/// About a dozen votes fit: the "full" paths run in most cases.
const MAX_BYTES: u64 = 2_000;

#[derive(Clone, Debug)]
enum Op {
    /// A group of presses committed together: (terminal, term_seq, button).
    Append(Vec<(usize, Option<u64>, u8)>),
    /// Acknowledge through the oldest buffered seq plus this offset.
    AckThrough(u64),
    Restart,
    Sync,
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
        1 => Just(Op::Restart),
        1 => Just(Op::Sync),
    ]
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    terminal: String,
    term_seq: Option<u64>,
    button: u8,
    cost: u64,
}

/// The journal as a few maps.
struct Model {
    when_full: WhenFull,
    votes: BTreeMap<u64, Stored>,
    dedup: HashMap<(String, u64), u64>,
    next_seq: u64,
    dropped: u64,
    /// (minute, terminal) → counted per button, filtered.
    minutes: BTreeMap<(u32, String), ([u32; 4], u32)>,
}

impl Model {
    fn new(when_full: WhenFull) -> Model {
        Model {
            when_full,
            votes: BTreeMap::new(),
            dedup: HashMap::new(),
            next_seq: 1,
            dropped: 0,
            minutes: BTreeMap::new(),
        }
    }

    fn charged(&self) -> u64 {
        self.votes.values().map(|v| v.cost).sum()
    }

    fn append(&mut self, presses: &[Press]) -> Vec<Outcome> {
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
            let cost = vote_cost(encode_vote(&vote).len());
            let mut fits = self.charged() + cost <= MAX_BYTES;
            if !fits && self.when_full == WhenFull::DropOldest {
                while self.charged() + cost > MAX_BYTES {
                    match self.votes.first_key_value() {
                        Some((&seq, _)) if seq < first_new => {
                            self.votes.remove(&seq);
                            self.dropped += 1;
                        }
                        _ => break,
                    }
                }
                fits = self.charged() + cost <= MAX_BYTES;
            }
            if !fits {
                if press.term_seq.is_none() {
                    self.dropped += 1;
                }
                outcomes.push(Outcome::Refused);
                continue;
            }
            if let Some(ts) = press.term_seq {
                self.dedup.insert((terminal.clone(), ts), vote.seq);
            }
            self.votes.insert(
                vote.seq,
                Stored {
                    terminal,
                    term_seq: press.term_seq,
                    button: press.button.number(),
                    cost,
                },
            );
            self.next_seq += 1;
            let counts = self
                .minutes
                .entry(((vote.ts_ms / 60_000) as u32, vote.terminal.to_string()))
                .or_default();
            if vote.filtered {
                counts.1 += 1;
            } else {
                counts.0[vote.button.index()] += 1;
            }
            outcomes.push(Outcome::Accepted(vote));
        }
        outcomes
    }

    fn ack_through(&mut self, through: u64) -> u64 {
        let acked: Vec<u64> = self.votes.range(..=through).map(|(seq, _)| *seq).collect();
        for seq in &acked {
            self.votes.remove(seq);
        }
        acked.len() as u64
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
            boot_id: BootId([3; 16]),
            mono_ms: n,
        },
        filtered: n % 5 == 0,
    }
}

fn check_same(journal: &mut Journal, model: &Model) -> Result<(), TestCaseError> {
    let stats = journal.stats();
    prop_assert_eq!(stats.next_seq, model.next_seq, "next_seq");
    prop_assert_eq!(stats.dropped, model.dropped, "dropped");
    prop_assert_eq!(stats.depth, model.votes.len() as u64, "depth");
    prop_assert_eq!(stats.charged_bytes, model.charged(), "charged bytes");
    prop_assert!(stats.charged_bytes <= MAX_BYTES);
    prop_assert_eq!(
        stats.oldest_seq,
        model.votes.keys().next().copied(),
        "oldest"
    );
    let stored: BTreeMap<u64, Stored> = journal
        .read_after(0, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|v| {
            let cost = vote_cost(encode_vote(&v).len());
            let stored = Stored {
                terminal: v.terminal.to_string(),
                term_seq: v.term_seq,
                button: v.button.number(),
                cost,
            };
            (v.seq, stored)
        })
        .collect();
    prop_assert_eq!(&stored, &model.votes);
    let (minutes, next_seq) = journal.minute_tallies().expect("minute tallies");
    prop_assert_eq!(next_seq, model.next_seq);
    let minutes: BTreeMap<(u32, String), ([u32; 4], u32)> = minutes
        .into_iter()
        .map(|(minute, terminal, tally)| {
            (
                (minute, terminal.to_string()),
                (tally.counted, tally.filtered),
            )
        })
        .collect();
    prop_assert_eq!(&minutes, &model.minutes, "minute counts");
    Ok(())
}

fn run_case(when_full: WhenFull, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = Limits {
        max_disk_bytes: MAX_BYTES,
        when_full,
        cache_bytes: 1024 * 1024,
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
                let through = model.votes.keys().next().copied().unwrap_or(model.next_seq) + offset;
                let expected = model.ack_through(through);
                prop_assert_eq!(journal.ack_through(through).expect("ack"), expected);
            }
            Op::Restart => {
                drop(journal);
                journal = Journal::open(dir.path(), limits).expect("reopen");
            }
            Op::Sync => journal.sync().expect("sync"),
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
    fn journal_matches_the_model_when_dropping_oldest(ops in proptest::collection::vec(op(), 1..40)) {
        run_case(WhenFull::DropOldest, ops)?;
    }

    #[test]
    fn journal_matches_the_model_when_rejecting_new(ops in proptest::collection::vec(op(), 1..40)) {
        run_case(WhenFull::RejectNew, ops)?;
    }
}

//! The crash tests' victim and their judge.
//!
//! [`run`] appends presses from four concurrent "terminals" (so appends share group commits),
//! printing a line the moment each append returns: `A seq terminal term_seq` (accepted),
//! `D seq terminal term_seq` (duplicate of an earlier vote), and now and then acknowledges old
//! votes as the uplink would, printing `K seq` just before calling `ack_through` (from then on
//! those votes may be gone). The crash tests run it
//! in a child process and kill it at random moments.
//!
//! [`History`] reads those lines across all restarts and checks the journal against them: every
//! printed vote not yet acknowledged is stored exactly as printed, no seq is ever handed out twice,
//! and `(terminal, term_seq)` maps to one seq forever.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use votegate::journal::{self, Journal, Limits, Outcome, Step, Tuning, WhenFull};
use votegate::model::{Press, TerminalId};

use super::votes;

/// Environment variable naming the journal folder: set, the child test becomes the appender.
pub const CHILD_DIR_ENV: &str = "VOTEGATE_TEST_APPENDER_DIR";
/// Environment variable with the first term_seq per terminal: `t0:17,t1:3`.
pub const CHILD_START_ENV: &str = "VOTEGATE_TEST_APPENDER_START";

/// Terminals the appender plays.
pub const TERMINALS: [&str; 4] = ["t0", "t1", "t2", "t3"];
/// Every this many appends, terminal t0 acknowledges votes older than [`ACK_LAG`] seqs.
const ACK_EVERY: u64 = 40;
const ACK_LAG: u64 = 100;

/// Environment variable telling the appender to abort itself at a step of the journal's writes:
/// `STEP:N` (the Nth time the step is reached), or `FIRST:N,STEP:M` (the Mth time `STEP` is
/// reached after the Nth `FIRST`). Steps are named as [`Step`]'s variants.
pub const CHILD_CRASH_ENV: &str = "VOTEGATE_TEST_CRASH_AT";

/// Limits used by the appender and the verifier: large enough that nothing is dropped; blocks,
/// log and sled batches small, and a compaction every few checkpoints, so that a kill at a
/// random moment often lands in a checkpoint or a compaction.
pub fn limits() -> Limits {
    Limits {
        max_disk_bytes: 64 * 1024 * 1024,
        when_full: WhenFull::RejectNew,
        cache_bytes: 4 * 1024 * 1024,
        tuning: Tuning {
            block_votes: 16,
            block_bytes: 512,
            wal_bytes: 8 * 1024,
            segment_bytes: 8 * 1024,
            batch_ops: 8,
            compact_every: Some(2),
            on_step: Some(crash_point),
        },
    }
}

/// The crash plan parsed from [`CHILD_CRASH_ENV`]: `(first step, count)` then `(step, count)`.
type CrashPlan = (Option<(String, u64)>, (String, u64));

fn crash_plan() -> Option<&'static CrashPlan> {
    static PLAN: std::sync::OnceLock<Option<CrashPlan>> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| {
        let text = std::env::var(CHILD_CRASH_ENV).ok()?;
        let parse = |part: &str| {
            let (step, count) = part.split_once(':')?;
            Some((step.to_string(), count.parse().ok()?))
        };
        match text.split_once(',') {
            Some((first, then)) => Some((Some(parse(first)?), parse(then)?)),
            None => Some((None, parse(&text)?)),
        }
    })
    .as_ref()
}

/// [`Tuning::on_step`] of the appender: aborts the process where [`CHILD_CRASH_ENV`] says.
fn crash_point(step: Step) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FIRST_SEEN: AtomicU64 = AtomicU64::new(0);
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let name = format!("{step:?}");
    if step != Step::LogRecordWritten {
        // Reported like the appends (whole lines on stdout), so the tests can tell that kills
        // landed among checkpoints and compactions.
        println!("S {name}");
    }
    let Some((first, (target, count))) = crash_plan() else {
        return;
    };
    if let Some((first_step, first_count)) = first {
        if FIRST_SEEN.load(Ordering::SeqCst) < *first_count {
            if name == *first_step {
                FIRST_SEEN.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
    }
    if name == *target && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *count {
        eprintln!("appender: crashing at {name} as planned");
        std::process::abort();
    }
}

fn press(terminal: &str, term_seq: u64) -> Press {
    votes::press(&TerminalId::new(terminal).expect("valid id"), term_seq)
}

/// Parses `t0:17,t1:3`.
pub fn parse_starts(text: &str) -> BTreeMap<String, u64> {
    text.split(',')
        .filter_map(|pair| pair.split_once(':'))
        .filter_map(|(t, n)| Some((t.to_string(), n.parse().ok()?)))
        .collect()
}

/// Formats start points for [`CHILD_START_ENV`].
pub fn format_starts(starts: &BTreeMap<String, u64>) -> String {
    starts
        .iter()
        .map(|(t, n)| format!("{t}:{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Appends until `per_terminal` presses per terminal are done (never, with `None`), writing
/// report lines to `out` as appends return.
pub fn run(
    dir: &Path,
    starts: &BTreeMap<String, u64>,
    per_terminal: Option<u64>,
    out: Box<dyn Write + Send>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let journal = Journal::open(dir, limits()).expect("journal opens");
        let service = journal::spawn(journal).expect("journal thread");
        let out = Arc::new(Mutex::new(out));
        let mut tasks = Vec::new();
        for terminal in TERMINALS {
            let handle = service.handle();
            let out = out.clone();
            let first = starts.get(terminal).copied().unwrap_or(0);
            tasks.push(tokio::spawn(async move {
                let mut highest_seq = 0;
                for (n, term_seq) in (first..).enumerate() {
                    if per_terminal.is_some_and(|limit| n as u64 >= limit) {
                        break;
                    }
                    let line = match handle
                        .append(press(terminal, term_seq))
                        .await
                        .expect("append")
                    {
                        Outcome::Accepted(vote) => {
                            highest_seq = highest_seq.max(vote.seq);
                            format!("A {} {terminal} {term_seq}\n", vote.seq)
                        }
                        Outcome::Duplicate(seq) => format!("D {seq} {terminal} {term_seq}\n"),
                        Outcome::Refused => panic!("journal refused a press: limits too small"),
                    };
                    write_line(&out, &line);
                    if terminal == "t0"
                        && n as u64 % ACK_EVERY == ACK_EVERY - 1
                        && highest_seq > ACK_LAG
                    {
                        let through = highest_seq - ACK_LAG;
                        // Announced before it is requested: a kill right after the request may
                        // leave it applied (even made durable by another terminal's commit).
                        write_line(&out, &format!("K {through}\n"));
                        handle.ack_through(through).await.expect("ack");
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("appender task");
        }
        service.shutdown().await.expect("shutdown");
    });
}

fn write_line(out: &Mutex<Box<dyn Write + Send>>, line: &str) {
    let mut out = out.lock().expect("output lock");
    out.write_all(line.as_bytes()).expect("write report");
    out.flush().expect("flush report");
}

/// What the verifier found after one restart.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verified {
    /// `A` lines read in this round.
    pub appended: usize,
    /// `D` lines read in this round.
    pub duplicates: usize,
    /// Printed votes checked present in the journal.
    pub checked_present: usize,
    /// Votes in the journal.
    pub depth: u64,
}

/// Everything the appender printed, across restarts.
#[derive(Debug, Default)]
pub struct History {
    by_seq: BTreeMap<u64, (String, u64)>,
    by_key: HashMap<(String, u64), u64>,
    highest_ack: u64,
    /// `next_seq` of the journal at the last verification: later seqs must be at least this.
    seq_floor: u64,
    next_term_seq: BTreeMap<String, u64>,
    /// How often each journal step ([`Step`]) was reported, over all runs.
    steps: BTreeMap<String, usize>,
}

impl History {
    /// How often each journal step was reached, over all runs.
    pub fn steps(&self) -> &BTreeMap<String, usize> {
        &self.steps
    }

    /// How many compactions finished, over all runs.
    pub fn compactions(&self) -> usize {
        self.steps.get("OldGenerationRemoved").copied().unwrap_or(0)
    }

    /// Where each terminal should restart: three term_seqs back, so that the first presses after
    /// a restart are retransmissions of votes that may or may not have been acknowledged.
    pub fn restart_points(&self) -> BTreeMap<String, u64> {
        TERMINALS
            .iter()
            .map(|t| {
                let next = self.next_term_seq.get(*t).copied().unwrap_or(0);
                (t.to_string(), next.saturating_sub(3))
            })
            .collect()
    }

    /// Reads one run's report (an incomplete last line is ignored: the process died writing it).
    pub fn absorb(&mut self, report: &str) -> Result<Verified, String> {
        let mut verified = Verified::default();
        let complete = match report.rfind('\n') {
            Some(end) => &report[..end],
            None => "",
        };
        for line in complete.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["A" | "D", seq, terminal, term_seq] => {
                    let seq: u64 = seq.parse().map_err(|_| format!("bad line {line:?}"))?;
                    let term_seq: u64 =
                        term_seq.parse().map_err(|_| format!("bad line {line:?}"))?;
                    let key = (terminal.to_string(), term_seq);
                    if fields[0] == "A" {
                        verified.appended += 1;
                        if seq < self.seq_floor {
                            return Err(format!(
                                "seq {seq} handed out again: the journal had reached {} before",
                                self.seq_floor
                            ));
                        }
                        if let Some(old) = self.by_seq.insert(seq, key.clone()) {
                            if old != key {
                                return Err(format!(
                                    "seq {seq} reused: first {old:?}, now {key:?}"
                                ));
                            }
                        }
                    } else {
                        verified.duplicates += 1;
                    }
                    match self.by_key.get(&key) {
                        Some(known) if *known != seq => {
                            return Err(format!("{key:?} got seq {seq} but was stored as seq {known} before: dedup broken"));
                        }
                        _ => {
                            self.by_key.insert(key.clone(), seq);
                        }
                    }
                    let next = self.next_term_seq.entry(key.0).or_default();
                    *next = (*next).max(term_seq + 1);
                }
                ["S", step] => {
                    *self.steps.entry(step.to_string()).or_default() += 1;
                }
                ["K", seq] => {
                    let seq: u64 = seq.parse().map_err(|_| format!("bad line {line:?}"))?;
                    self.highest_ack = self.highest_ack.max(seq);
                }
                _ => {} // test harness chatter
            }
        }
        Ok(verified)
    }

    /// Opens the journal and checks it against everything printed so far.
    pub fn verify_journal(&mut self, dir: &Path, verified: &mut Verified) -> Result<(), String> {
        let mut journal =
            Journal::open(dir, limits()).map_err(|e| format!("journal does not reopen: {e}"))?;
        let stored = journal
            .read_after(0, usize::MAX)
            .map_err(|e| format!("read: {e}"))?;
        let stats = journal.stats();
        verified.depth = stats.depth;
        if stats.depth != stored.len() as u64 {
            return Err(format!(
                "depth counter {} but {} votes stored",
                stats.depth,
                stored.len()
            ));
        }
        let stored_by_seq: HashMap<u64, (String, u64)> = stored
            .iter()
            .map(|v| {
                (
                    v.seq,
                    (v.terminal.to_string(), v.term_seq.unwrap_or(u64::MAX)),
                )
            })
            .collect();
        let mut keys = HashMap::new();
        for vote in &stored {
            if vote.seq >= stats.next_seq {
                return Err(format!(
                    "stored seq {} is not below next_seq {}",
                    vote.seq, stats.next_seq
                ));
            }
            let key = (vote.terminal.to_string(), vote.term_seq.unwrap_or(u64::MAX));
            if let Some(other) = keys.insert(key.clone(), vote.seq) {
                return Err(format!(
                    "{key:?} stored twice, as seq {other} and seq {}",
                    vote.seq
                ));
            }
            if let Some(printed) = self.by_seq.get(&vote.seq) {
                if *printed != key {
                    return Err(format!(
                        "seq {} printed as {printed:?} but stored as {key:?}",
                        vote.seq
                    ));
                }
            }
            // A vote stored but never printed was durable when the process died: remember it.
            self.by_seq.entry(vote.seq).or_insert_with(|| key.clone());
            self.by_key.entry(key).or_insert(vote.seq);
        }
        for (seq, key) in self.by_seq.range(self.highest_ack + 1..) {
            match stored_by_seq.get(seq) {
                Some(found) if found == key => verified.checked_present += 1,
                Some(found) => {
                    return Err(format!("seq {seq} printed as {key:?}, stored as {found:?}"))
                }
                None => {
                    return Err(format!(
                        "acknowledged vote lost: seq {seq} {key:?} not in the journal (journal: {stats:?}, first stored {:?})",
                        stored.first().map(|v| v.seq)
                    ))
                }
            }
        }
        // Retransmitting the last printed vote of each terminal must give back its seq.
        for terminal in TERMINALS {
            let Some(next) = self.next_term_seq.get(terminal) else {
                continue;
            };
            let key = (terminal.to_string(), next - 1);
            let Some(seq) = self.by_key.get(&key).copied() else {
                continue;
            };
            let outcome = journal
                .append(vec![press(terminal, next - 1)])
                .map_err(|e| format!("append: {e}"))?;
            if outcome != [Outcome::Duplicate(seq)] {
                return Err(format!(
                    "retransmitted {key:?} (seq {seq}) gave {outcome:?}"
                ));
            }
        }
        self.seq_floor = journal.stats().next_seq;
        Ok(())
    }
}

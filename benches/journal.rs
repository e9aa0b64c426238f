//! Journal benchmark: each row of the journal's resource bounds (issue 13) with its figure and
//! its bound: durable appends per second, bytes written to disk per vote, memory in a burst and
//! with a large backlog, the folder's size against `max-disk-size`. Figures go to BENCHMARKS.md.
//!
//!     cargo bench --bench journal                 # full run (1,000,000-vote backlog)
//!     VOTEGATE_BENCH_VOTES=100000 cargo bench --bench journal
//!     VOTEGATE_BENCH_DIR=/mnt/sdcard cargo bench --bench journal   # measure another disk
//!     VOTEGATE_BENCH_TERMINALS=10 VOTEGATE_BENCH_BOUNDS=16,64,256 cargo bench --bench journal
//!                                  # only the folder size at those bounds, with 10 terminals
//!     VOTEGATE_BENCH_TERMINALS=10 VOTEGATE_BENCH_STEADY=5 cargo bench --bench journal
//!                                  # only the folder size over 5 days with nothing buffered
//!     VOTEGATE_BENCH_APPENDS=1 cargo bench --bench journal   # only the append rows
//!
//! Appends go through the journal thread (group commit) exactly as in the daemon; every append
//! is durable before it returns. Bytes written are `/proc/self/io`'s `write_bytes` (what this
//! process sent to the block layer); memory is VmHWM, reset before each row that reports it.
//! In `cargo test` (no `--bench`) a quick version runs and asserts the folder bound.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: failing loudly is right

use std::path::Path;
use std::time::{Duration, Instant};

use votegate::journal::{self, layout, Journal, Limits, WhenFull};
use votegate::model::{Press, TerminalId};
use votes::press;

#[allow(dead_code)] // this bench needs only `press`
#[path = "../tests/it/harness/votes.rs"]
mod votes;

const MIB: f64 = (1 << 20) as f64;

/// write_bytes of this process from /proc/self/io.
fn written() -> u64 {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// (VmRSS, VmHWM) in MiB.
fn memory() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets VmHWM to the current RSS, so that the next peak is the next row's own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn folder(dir: &Path) -> f64 {
    layout::folder_bytes(dir) as f64 / MIB
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var("VOTEGATE_BENCH_DIR") {
        Ok(base) => tempfile::tempdir_in(base).expect("temp dir in VOTEGATE_BENCH_DIR"),
        Err(_) => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir"),
    }
}

fn unbounded() -> Limits {
    Limits {
        max_disk_bytes: 1 << 40,
        cache_bytes: env_number("VOTEGATE_BENCH_CACHE_KIB")
            .map_or(Limits::default().cache_bytes, |kib| kib << 10),
        ..Limits::default()
    }
}

fn row(measure: &str, figure: String, bound: &str) {
    println!("| {measure} | {figure} | {bound} |");
}

struct Appended {
    votes_per_s: f64,
    p50: Duration,
    p99: Duration,
    per_commit: f64,
    bytes_per_vote: f64,
    peak_mib: f64,
}

/// Durable appends from `appenders` concurrent terminals, `per_appender` each, in `dir`. With
/// `latencies`, every append is timed (16 bytes a vote of the bench's own memory: the burst row,
/// which reports memory, does without).
fn append_concurrently(dir: &Path, appenders: u64, per_appender: u64, latencies: bool) -> Appended {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    reset_peak();
    let mut before = 0;
    let (elapsed, mut latencies, commits) = runtime.block_on(async {
        let service =
            journal::spawn(Journal::open(dir, unbounded()).expect("open")).expect("spawn");
        // Creating the journal (its zero-filled log, a fresh sled) is not the appends' cost.
        before = written();
        let start = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|a| {
                let handle = service.handle();
                tokio::spawn(async move {
                    let terminal = TerminalId::new(&format!("terminal-{a}")).expect("id");
                    let mut timed = Vec::new();
                    for n in 0..per_appender {
                        let t = Instant::now();
                        handle.append(press(&terminal, n)).await.expect("append");
                        if latencies {
                            timed.push(t.elapsed());
                        }
                    }
                    timed
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("task"));
        }
        let elapsed = start.elapsed();
        let commits = service.stats().borrow().commits;
        service.shutdown().await.expect("shutdown");
        (elapsed, latencies, commits)
    });
    let votes = appenders * per_appender;
    latencies.sort();
    let quantile = |p| {
        if latencies.is_empty() {
            Duration::ZERO
        } else {
            percentile(&latencies, p)
        }
    };
    Appended {
        votes_per_s: votes as f64 / elapsed.as_secs_f64(),
        p50: quantile(0.50),
        p99: quantile(0.99),
        per_commit: votes as f64 / commits as f64,
        bytes_per_vote: (written() - before) as f64 / votes as f64,
        peak_mib: memory().1,
    }
}

fn appends(appenders: u64, per_appender: u64) -> Appended {
    let dir = bench_dir();
    append_concurrently(dir.path(), appenders, per_appender, true)
}

/// A burst: `terminals` terminals at once put `votes` into the journal (an outage's backlog
/// built at full speed); then the backlog is held, reopened and acknowledged in uplink-sized
/// acks, as a drain would. Each phase runs in a process of its own, so that its memory is its
/// own.
fn burst_and_drain(terminals: u64, votes: u64) {
    let dir = bench_dir();
    let path = dir.path().display().to_string();
    for phase in ["burst", "hold", "drain"] {
        let status = std::process::Command::new(std::env::current_exe().expect("bench binary"))
            .args(std::env::args().skip(1))
            .env(
                "VOTEGATE_BENCH_PHASE",
                format!("{phase}:{terminals}:{votes}:{path}"),
            )
            .status()
            .expect("run the phase");
        assert!(status.success(), "phase {phase} failed");
    }
}

/// Runs one phase of [`burst_and_drain`] (`phase:terminals:votes:dir`).
fn phase(spec: &str) {
    let mut parts = spec.splitn(4, ':');
    let (Some(phase), Some(terminals), Some(votes), Some(dir)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("bad VOTEGATE_BENCH_PHASE {spec:?}");
    };
    let terminals: u64 = terminals.parse().expect("terminals");
    let votes = votes.parse::<u64>().expect("votes") / terminals * terminals;
    let dir = Path::new(dir);
    match phase {
        "burst" => {
            let burst = append_concurrently(dir, terminals, votes / terminals, false);
            row(
                &format!("{terminals} terminals at once buffer {votes} votes"),
                format!(
                    "{:.0} votes/s, {:.1} votes per commit, {:.0} B written per vote; peak RSS {:.1} MiB",
                    burst.votes_per_s, burst.per_commit, burst.bytes_per_vote, burst.peak_mib
                ),
                "≤ 256 B per vote; peak RSS ≤ 32 MiB",
            );
        }
        "hold" => {
            let (baseline, _) = memory();
            let started = Instant::now();
            let journal = Journal::open(dir, unbounded()).expect("reopen");
            let reopen = started.elapsed();
            let (holding, peak) = memory();
            row(
                &format!("{votes} votes buffered"),
                format!(
                    "folder {:.1} MiB; reopened in {:.2} s; RSS holding them {holding:.1} MiB (peak {peak:.1} MiB, {baseline:.1} MiB before opening)",
                    folder(dir),
                    reopen.as_secs_f64()
                ),
                "RSS ≤ 24 MiB",
            );
            drop(journal);
        }
        "drain" => {
            let buffered = folder(dir);
            let mut journal = Journal::open(dir, unbounded()).expect("reopen");
            let before = written();
            let started = Instant::now();
            let last = journal.stats().next_seq - 1;
            let mut through = journal.stats().oldest_seq.unwrap_or(1) - 1;
            // As the uplink does: read a batch of 5,000 votes (a 128 KiB payload), acknowledge it.
            while through < last {
                let batch = journal.read_after(through, 5_000).expect("read");
                through = batch.last().expect("a batch").seq;
                journal.ack_through(through).expect("ack");
            }
            journal.sync().expect("sync");
            let elapsed = started.elapsed();
            let delete_bytes = written() - before;
            let (_, peak) = memory();
            row(
                &format!("read and acknowledge all {votes} (5,000 per ack)"),
                format!(
                    "{:.0} votes/s; {:.2} B written per vote for the deletes; peak RSS {peak:.1} MiB",
                    votes as f64 / elapsed.as_secs_f64(),
                    delete_bytes as f64 / votes as f64
                ),
                "≤ 32 B per vote; RSS ≤ 32 MiB",
            );
            drop(journal);
            row(
                &format!("folder after all {votes} were delivered"),
                format!("{:.1} MiB (was {buffered:.1} MiB)", folder(dir)),
                "≤ 8 MiB + the counts",
            );
        }
        other => panic!("unknown phase {other}"),
    }
}

/// A site's presses: its terminals in turn, each pressed about 4 times a minute around the clock.
struct Site {
    terminals: Vec<TerminalId>,
    votes_per_minute: u64,
}

impl Site {
    fn new(terminals: u64) -> Site {
        Site {
            terminals: (0..terminals)
                .map(|t| TerminalId::new(&format!("checkout-lane-{t:02}")).expect("id"))
                .collect(),
            votes_per_minute: 4 * terminals,
        }
    }

    /// The site's `n`th press (from 0), with its terminal's own term_seq.
    fn press(&self, n: u64) -> Press {
        let count = self.terminals.len() as u64;
        let mut press = press(&self.terminals[(n % count) as usize], n / count + 1);
        press.at.ts_ms = 1_795_000_000_000 + n * 60_000 / self.votes_per_minute;
        press
    }
}

/// A journal bounded at `bound` receiving `times` × what fits from `terminals` terminals in
/// turn, with drop-oldest: the folder must stay within `journal::folder_limit`.
fn bounded(bound: u64, terminals: u64, times: f64) -> f64 {
    let dir = bench_dir();
    let limits = Limits {
        max_disk_bytes: bound,
        when_full: WhenFull::DropOldest,
        ..Limits::default()
    };
    let mut journal = Journal::open(dir.path(), limits).expect("open");
    let site = Site::new(terminals);
    // Fill once to learn the capacity in votes, then press `times` that.
    let mut n = 0;
    let mut largest: f64 = 0.0;
    let mut capacity = None;
    let mut total = u64::MAX;
    while n < total {
        let group: Vec<Press> = (n..(n + 64).min(total)).map(|n| site.press(n)).collect();
        n += group.len() as u64;
        journal.append(group).expect("append");
        largest = largest.max(folder(dir.path()));
        if capacity.is_none() && journal.stats().dropped > 0 {
            capacity = Some(n);
            total = (n as f64 * times) as u64;
        }
    }
    let stats = journal.stats();
    let limit = journal::folder_limit(bound) as f64 / MIB;
    row(
        &format!(
            "folder, bound {} MiB, {terminals} terminals, {:.1}× the capacity ({} votes) pressed, drop-oldest",
            bound >> 20,
            times,
            capacity.unwrap_or(0)
        ),
        format!(
            "largest {largest:.1} MiB ({:.2}× the bound); {} buffered, {} dropped",
            largest * MIB / bound as f64,
            stats.depth,
            stats.dropped
        ),
        &format!("≤ {limit:.1} MiB (1.1 × bound + 8 MiB)"),
    );
    largest
}

/// A site with a working uplink: `terminals` terminals pressed about 4 times a minute each, every
/// group acknowledged right after it is stored (nothing stays buffered), for `days` of votes.
fn steady(terminals: u64, days: u64) {
    let dir = bench_dir();
    let mut journal = Journal::open(dir.path(), Limits::default()).expect("open");
    let site = Site::new(terminals);
    let per_day = site.votes_per_minute * 24 * 60;
    let mut n = 0;
    let mut largest: f64 = 0.0;
    for day in 1..=days {
        while n < day * per_day {
            let group: Vec<Press> = (n..n + 8).map(|n| site.press(n)).collect();
            n += group.len() as u64;
            journal.append(group).expect("append");
            let last = journal.stats().next_seq - 1;
            journal.ack_through(last).expect("ack");
            largest = largest.max(folder(dir.path()));
        }
        journal.sync().expect("sync");
        row(
            &format!("steady, {terminals} terminals, day {day} ({n} votes, nothing buffered)"),
            format!(
                "folder {:.1} MiB, largest {largest:.1} MiB",
                folder(dir.path())
            ),
            "≤ 8 MiB + the counts",
        );
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    if let Ok(spec) = std::env::var("VOTEGATE_BENCH_PHASE") {
        phase(&spec);
        return;
    }
    if let Some(days) = env_number("VOTEGATE_BENCH_STEADY") {
        steady(env_number("VOTEGATE_BENCH_TERMINALS").unwrap_or(1), days);
        return;
    }
    if let Ok(bounds) = std::env::var("VOTEGATE_BENCH_BOUNDS") {
        let terminals = env_number("VOTEGATE_BENCH_TERMINALS").unwrap_or(1);
        for mib in bounds
            .split(',')
            .filter_map(|b| b.trim().parse::<u64>().ok())
        {
            bounded(mib << 20, terminals, 3.0);
        }
        return;
    }
    println!("| journal | figure | bound |");
    println!("| --- | --- | --- |");
    if quick {
        // The folder bound, asserted: 1, 10 and 30 terminals at a 4 MiB bound.
        for terminals in [1, 10, 30] {
            let largest = bounded(4 << 20, terminals, 2.0);
            let limit = journal::folder_limit(4 << 20) as f64 / MIB;
            assert!(
                largest <= limit,
                "the folder reached {largest:.1} MiB, over 1.1 × max-disk-size + 8 MiB = {limit:.1} MiB"
            );
        }
        let one = appends(1, 200);
        row(
            "durable appends, 1 appender (quick)",
            format!(
                "{:.0} votes/s, {:.0} B per vote",
                one.votes_per_s, one.bytes_per_vote
            ),
            "",
        );
        burst_and_drain(16, 20_000);
        return;
    }
    let votes = env_number("VOTEGATE_BENCH_VOTES").unwrap_or(1_000_000);
    let only_appends = std::env::var("VOTEGATE_BENCH_APPENDS").is_ok();
    let one = appends(1, 4_000);
    row(
        "durable appends, 1 appender (one vote per fsync, a site's rate)",
        format!(
            "{:.0} votes/s, p50 {:.2} ms, p99 {:.2} ms; {:.0} B written per vote",
            one.votes_per_s,
            one.p50.as_secs_f64() * 1e3,
            one.p99.as_secs_f64() * 1e3,
            one.bytes_per_vote
        ),
        "≤ 4,608 B per vote (one 4 KiB page per commit is the floor)",
    );
    let eight = appends(8, 4_000);
    row(
        "durable appends, 8 concurrent appenders",
        format!(
            "{:.0} votes/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} votes per commit; {:.0} B per vote",
            eight.votes_per_s,
            eight.p50.as_secs_f64() * 1e3,
            eight.p99.as_secs_f64() * 1e3,
            eight.per_commit,
            eight.bytes_per_vote
        ),
        "≥ 20,000 votes/s",
    );
    if only_appends {
        return;
    }
    burst_and_drain(256, votes);
    bounded(4 << 20, 8, 4.9);
    bounded(16 << 20, 30, 3.0);
    bounded(64 << 20, 10, 3.0);
    steady(10, 4);
}

//! Journal benchmark: durable append throughput and latency, bytes written per vote, and disk
//! size and memory with a large backlog. Figures go to BENCHMARKS.md.
//!
//!     cargo bench --bench journal                 # full run (1,000,000-vote backlog)
//!     VOTEGATE_BENCH_VOTES=100000 cargo bench --bench journal
//!     VOTEGATE_BENCH_DIR=/mnt/sdcard cargo bench --bench journal   # measure another disk
//!     VOTEGATE_BENCH_TERMINALS=10 VOTEGATE_BENCH_BOUNDS=16,64,256 cargo bench --bench journal
//!                                  # only the folder size at those bounds, with 10 terminals
//!     VOTEGATE_BENCH_TERMINALS=10 VOTEGATE_BENCH_STEADY=5 cargo bench --bench journal
//!                                  # only the folder size over 5 days with nothing buffered
//!
//! Appends go through the journal thread (group commit) exactly as in the daemon; every append
//! is flushed and fsynced before it returns.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: failing loudly is right

use std::path::Path;
use std::time::{Duration, Instant};

use votegate::journal::{self, Journal, Limits, WhenFull};
use votegate::model::{Press, TerminalId};
use votes::press;

#[allow(dead_code)] // this bench needs only `press`
#[path = "../tests/it/harness/votes.rs"]
mod votes;

/// (write_bytes, wchar) of this process from /proc/self/io.
fn io_counters() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("write_bytes:"), field("wchar:"))
}

/// (VmRSS, VmHWM) in KiB.
fn memory_kib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
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

/// Durable appends from `appenders` concurrent tasks, `per_appender` each.
fn append_throughput(appenders: u64, per_appender: u64) {
    let dir = bench_dir();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (writes_before, wchar_before) = io_counters();
    let (elapsed, mut latencies, commits) = runtime.block_on(async {
        let service = journal::spawn(Journal::open(dir.path(), Limits::default()).expect("open"))
            .expect("spawn");
        let start = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|a| {
                let handle = service.handle();
                tokio::spawn(async move {
                    let terminal = TerminalId::new(&format!("terminal-{a}")).expect("id");
                    let mut latencies = Vec::with_capacity(per_appender as usize);
                    for n in 0..per_appender {
                        let t = Instant::now();
                        handle.append(press(&terminal, n)).await.expect("append");
                        latencies.push(t.elapsed());
                    }
                    latencies
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
    let (writes_after, wchar_after) = io_counters();
    let votes = appenders * per_appender;
    latencies.sort();
    println!(
        "| durable appends, {appenders} appender(s) | {:.0} votes/s | p50 {:.2} ms, p99 {:.2} ms | {:.1} votes per fsync | {:.0} B written to disk per vote ({:.0} B via write()) |",
        votes as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        votes as f64 / commits as f64,
        (writes_after - writes_before) as f64 / votes as f64,
        (wchar_after - wchar_before) as f64 / votes as f64,
    );
}

/// Fills a journal with `votes` (as a long outage would), then acknowledges them all.
fn backlog(votes: u64) {
    let dir = bench_dir();
    let limits = Limits {
        max_disk_bytes: 1 << 40,
        when_full: WhenFull::DropOldest,
        cache_bytes: Limits::default().cache_bytes,
    };
    let (rss_start, _) = memory_kib();
    let mut journal = Journal::open(dir.path(), limits).expect("open");
    let terminal = TerminalId::new("entrance-terminal").expect("id");
    let start = Instant::now();
    let mut n = 0;
    while n < votes {
        let group: Vec<Press> = (n..(n + 512).min(votes))
            .map(|i| press(&terminal, i))
            .collect();
        n += group.len() as u64;
        journal.append(group).expect("append");
    }
    let fill = start.elapsed();
    let (rss_full, _) = memory_kib();
    let charged = journal.stats().charged_bytes;
    println!(
        "| {votes} votes buffered | {} MiB on disk ({:.0} B/vote; charged {:.0} B/vote) | RSS {} MiB (process start {} MiB) | filled in {:.1} s in groups of 512 |",
        dir_bytes(dir.path()) >> 20,
        dir_bytes(dir.path()) as f64 / votes as f64,
        charged as f64 / votes as f64,
        rss_full / 1024,
        rss_start / 1024,
        fill.as_secs_f64()
    );
    drop(journal);

    let start = Instant::now();
    let mut journal = Journal::open(dir.path(), limits).expect("reopen");
    let reopen = start.elapsed();
    let last = journal.stats().next_seq - 1;
    let start = Instant::now();
    journal.ack_through(last).expect("ack");
    journal.sync().expect("sync");
    let ack = start.elapsed();
    let (rss_acked, hwm) = memory_kib();
    println!(
        "| after acking all {votes} | {} MiB on disk | RSS {} MiB, peak {} MiB | reopen with backlog {:.2} s, ack all {:.1} s |",
        dir_bytes(dir.path()) >> 20,
        rss_acked / 1024,
        hwm / 1024,
        reopen.as_secs_f64(),
        ack.as_secs_f64()
    );
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

/// A journal bounded at `bound` receiving 3× what fits from `terminals` terminals in turn, each
/// pressed about 4 times a minute (so that, once past 3 days of votes, every terminal has its
/// full duplicate window and minute counts): the files must stay below the bound.
fn bounded(bound: u64, terminals: u64) {
    let dir = bench_dir();
    let limits = Limits {
        max_disk_bytes: bound,
        when_full: WhenFull::DropOldest,
        cache_bytes: Limits::default().cache_bytes,
    };
    let mut journal = Journal::open(dir.path(), limits).expect("open");
    let site = Site::new(terminals);
    let per_vote = journal::record::vote_cost(
        journal::record::encode_vote(&votegate::model::Vote::accept(1, site.press(0))).len(),
    );
    let total = 3 * bound / per_vote;
    let mut n = 0;
    let mut largest = 0;
    while n < total {
        let group: Vec<Press> = (n..(n + 512).min(total)).map(|n| site.press(n)).collect();
        n += group.len() as u64;
        journal.append(group).expect("append");
        largest = largest.max(dir_bytes(dir.path()));
    }
    let stats = journal.stats();
    let estimate = journal::folder_estimate(bound, terminals as usize);
    println!(
        "| bound {} MiB, {terminals} terminals, {total} votes appended ({:.1} days) | largest on disk {:.1} MiB ({:.0}% of the bound; `check` plans for {:.1} MiB) | {} buffered, {} dropped |",
        bound >> 20,
        (total / site.votes_per_minute) as f64 / (24.0 * 60.0),
        largest as f64 / (1 << 20) as f64,
        largest as f64 * 100.0 / bound as f64,
        estimate as f64 / (1 << 20) as f64,
        stats.depth,
        stats.dropped
    );
    assert!(
        largest <= estimate,
        "the folder outgrew journal::folder_estimate, which `votegate check` plans with"
    );
}

/// A site with a working uplink: `terminals` terminals pressed about 4 times a minute each, every
/// group acknowledged right after it is stored (nothing stays buffered), for `days` of votes.
/// Prints the files' size each simulated day: what sled keeps besides the votes.
fn steady(terminals: u64, days: u64) {
    let dir = bench_dir();
    let mut journal = Journal::open(dir.path(), Limits::default()).expect("open");
    let site = Site::new(terminals);
    let per_day = site.votes_per_minute * 24 * 60;
    let mut n = 0;
    let mut largest = 0;
    for day in 1..=days {
        while n < day * per_day {
            let group: Vec<Press> = (n..n + 8).map(|n| site.press(n)).collect();
            n += group.len() as u64;
            journal.append(group).expect("append");
            let last = journal.stats().next_seq - 1;
            journal.ack_through(last).expect("ack");
            largest = largest.max(dir_bytes(dir.path()));
        }
        journal.sync().expect("sync");
        println!(
            "| steady, {terminals} terminals, day {day} ({n} votes, {} buffered) | on disk {:.1} MiB, largest {:.1} MiB |",
            journal.stats().depth,
            dir_bytes(dir.path()) as f64 / (1 << 20) as f64,
            largest as f64 / (1 << 20) as f64,
        );
    }
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let votes = std::env::var("VOTEGATE_BENCH_VOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let appends = if quick { 200 } else { 4_000 };
    // VOTEGATE_BENCH_STEADY=DAYS: only the steady-state rows (VOTEGATE_BENCH_TERMINALS terminals).
    if let Ok(days) = std::env::var("VOTEGATE_BENCH_STEADY") {
        let terminals = std::env::var("VOTEGATE_BENCH_TERMINALS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        steady(terminals, days.parse().unwrap_or(5));
        return;
    }
    // VOTEGATE_BENCH_BOUNDS=1,4,16 (MiB): only the bound rows, for those bounds, with
    // VOTEGATE_BENCH_TERMINALS terminals (1 unless given).
    if let Ok(bounds) = std::env::var("VOTEGATE_BENCH_BOUNDS") {
        let terminals = std::env::var("VOTEGATE_BENCH_TERMINALS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(1);
        for mib in bounds
            .split(',')
            .filter_map(|b| b.trim().parse::<u64>().ok())
        {
            bounded(mib << 20, terminals);
        }
        return;
    }
    println!("| journal benchmark | | | | |");
    println!("| --- | --- | --- | --- | --- |");
    append_throughput(1, appends);
    append_throughput(8, appends / 8);
    backlog(votes);
    if quick {
        bounded(4 << 20, 1);
        bounded(4 << 20, 3);
        steady(3, 1);
    } else {
        bounded(64 << 20, 1);
        bounded(64 << 20, 10);
        steady(10, 4);
    }
}

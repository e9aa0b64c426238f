//! Why the journal caps sled batches at 256 writes (`journal::store::MAX_BATCH_OPS`): sled 0.34's
//! memory and disk use explode when a batch that deletes grows past about 512 writes.
//!
//!     cargo bench --bench sled_batch_size
//!
//! Each run keeps a sliding window of 1,000 live keys (insert at the tail, delete at the head, as
//! the journal does with votes and dedup entries) over 300,000 inserts, in batches of the given
//! number of writes, flushing after each batch. Each batch size runs in its own child process so
//! that its RSS is its own.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: failing loudly is right

use std::process::Command;

const INSERTS: u64 = 300_000;
const WINDOW: u64 = 1_000;

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn key(n: u64) -> Vec<u8> {
    let mut key = vec![b'v'];
    key.extend_from_slice(&n.to_be_bytes());
    key
}

fn run_one(writes_per_batch: u64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(16 << 20)
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace)
        .open()
        .expect("open");
    let inserts_per_batch = writes_per_batch / 2; // each insert past the window also deletes
    let value = [7u8; 48];
    let mut n = 0;
    while n < INSERTS {
        let mut batch = sled::Batch::default();
        for i in n..n + inserts_per_batch {
            batch.insert(key(i), &value[..]);
            if i >= WINDOW {
                batch.remove(key(i - WINDOW));
            }
        }
        db.apply_batch(batch).expect("apply");
        db.flush().expect("flush");
        n += inserts_per_batch;
    }
    println!(
        "| {writes_per_batch} writes per batch | RSS {} MiB | {} MiB on disk |",
        rss_mib(),
        db.size_on_disk().expect("size") >> 20
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(size) = args
        .iter()
        .position(|a| a == "--one")
        .and_then(|i| args.get(i + 1))
    {
        run_one(size.parse().expect("batch size"));
        return;
    }
    let sizes: &[u64] = if args.iter().any(|a| a == "--bench") {
        &[64, 256, 512, 768, 1024]
    } else {
        &[64] // `cargo test --benches`: just prove it runs
    };
    println!("| sled 0.34, sliding window of {WINDOW} keys, {INSERTS} inserts | RSS | disk |");
    println!("| --- | --- | --- |");
    let exe = std::env::current_exe().expect("bench binary");
    for size in sizes {
        let status = Command::new(&exe)
            .args(["--one", &size.to_string()])
            .status()
            .expect("child runs");
        assert!(status.success());
    }
}

//! Burst benchmark: the daemon (`votegate run`, release build) with 256 simulated terminals pressed
//! as fast as the simulated source allows (100 presses/s each) buffers 1,000,000 votes with no
//! uplink; its peak RSS is read from /proc. This is the whole daemon: sources, journal, tallies,
//! the live feed for screens.
//!
//!     cargo bench --bench burst                         # 256 terminals, 1,000,000 votes
//!     VOTEGATE_BENCH_VOTES=200000 cargo bench --bench burst

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)] // a benchmark: failing loudly is right

#[path = "../tests/it/harness/mod.rs"]
mod harness;

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::RunningChild;

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (terminals, votes) = if quick {
        (16, 5_000)
    } else {
        (
            256,
            std::env::var("VOTEGATE_BENCH_VOTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1_000_000u64),
        )
    };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data_dir = dir.path().join("journal");
    let mut config = format!(
        "gateway-id = \"gw-burst\"\nsite = \"burst\"\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n\
         [journal]\nmax-disk-size = \"4 GiB\"\n\n[filter]\nmin-interval = \"0s\"\n\n",
        data_dir.display()
    );
    for t in 0..terminals {
        config.push_str(&format!(
            "[[terminal]]\nid = \"checkout-{t:03}\"\nkind = \"simulated\"\npresses-per-minute = 6000\n\n"
        ));
    }
    let config = harness::write_file(dir.path(), "votegate.toml", &config);
    let gateway = RunningChild::new(
        Command::new(env!("CARGO_BIN_EXE_votegate"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let addr = harness::http_addr(&gateway);
    let started = Instant::now();
    let depth = loop {
        std::thread::sleep(Duration::from_millis(500));
        let status = harness::http::get(addr, "/api/v1/status").json();
        let depth = status["journal"]["depth"].as_u64().unwrap_or(0);
        if depth >= votes {
            break depth;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {depth} votes after 10 minutes"
        );
    };
    let elapsed = started.elapsed();
    let rss = common::rss_now(gateway.pid());
    let (_, peak) = common::usage(gateway.pid());
    let folder = votegate::journal::layout::folder_bytes(&data_dir) as f64 / (1 << 20) as f64;
    let rebuilds = gateway.stderr_so_far().matches("rebuilding").count();
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    gateway.wait(Duration::from_secs(10));
    println!("| burst | figure | bound |");
    println!("| --- | --- | --- |");
    println!(
        "| the daemon, {terminals} simulated terminals at 100 presses/s each, no uplink, until {votes} votes are buffered | {depth} votes in {:.1} s ({:.0} votes/s); **peak RSS {peak} MiB**, {rss} MiB at the end; folder {folder:.1} MiB; tallies rebuilt {rebuilds} times | peak RSS ≤ 32 MiB |",
        elapsed.as_secs_f64(),
        depth as f64 / elapsed.as_secs_f64()
    );
}

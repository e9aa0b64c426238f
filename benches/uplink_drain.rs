//! Drain benchmark: 1,000,000 buffered votes forwarded over mutual TLS to a local Mosquitto, by
//! votegate (batches from its journal) and, side by side in the same run, by a Mosquitto bridge
//! (a local broker with persistence and `max_queued_messages 0`, bridged over TLS to the same
//! broker) holding the same votes as one message each.
//!
//!     cargo bench --bench uplink_drain                       # 1,000,000 votes
//!     VOTEGATE_BENCH_VOTES=100000 cargo bench --bench uplink_drain
//!
//! Each side's figure is measured on the process that drains: the time until the receiving
//! broker's subscriber has every vote, that process's CPU seconds and peak RSS. For votegate also:
//! its RSS holding the backlog while the link is stalled, the bytes it writes to disk per vote
//! while draining (the deletes after PUBACK), and the journal's folder before and after.

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)] // a benchmark: failing loudly is right

#[path = "../tests/it/harness/mod.rs"]
mod harness;

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{subscribe, usage, wait_until};
use harness::mosquitto::Mosquitto;
use harness::pki::Pki;
use harness::proxy::{FaultProxy, Mode};
use harness::votes::presses;
use harness::RunningChild;
use votegate::journal::{Journal, Limits};
use votegate::model::Press;
use votegate::uplink::payload::{PayloadFormat, WireVote};

/// A vote like the ones drained, to report its encoded size.
fn presses_sample(count: u64) -> WireVote {
    let press = presses(count).last().expect("votes");
    let reading = votegate::clock::Clock::now(&votegate::clock::FakeClock::new(1_795_000_000_000));
    WireVote::from_vote(&votegate::model::Vote::accept(count, press), &reading)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let votes: u64 = std::env::var("VOTEGATE_BENCH_VOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 1_000_000 });
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pki = Pki::generate(dir.path());
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Mosquitto::start(
        &broker_dir,
        &pki,
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let limit = Duration::from_secs(if quick { 60 } else { 1800 });
    eprintln!("uplink_drain: broker on {}, {votes} votes", broker.addr);

    // votegate: the votes are in the journal (an outage's backlog); start the daemon.
    let data_dir = dir.path().join("journal");
    let mut journal = Journal::open(
        &data_dir,
        Limits {
            max_disk_bytes: 1 << 40,
            ..Limits::default()
        },
    )
    .unwrap();
    let backlog: Vec<Press> = presses(votes).collect();
    for chunk in backlog.chunks(512) {
        journal.append(chunk.to_vec()).unwrap();
    }
    drop(journal);
    let gateway_link = FaultProxy::start(broker.addr);
    gateway_link.set_mode(Mode::Stall);
    let line = harness::pty::Line::new(&dir.path().join("ttyUSB-bench"));
    let config = harness::write_file(
        dir.path(),
        "votegate.toml",
        &format!(
            "gateway-id = \"gw-bench\"\nsite = \"bench\"\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nlog-level = \"warn\"\n\n\
             [journal]\nmax-disk-size = \"4 GiB\"\n\n[[terminal]]\nid = \"entrance\"\nkind = \"serial\"\nport = \"{}\"\n\n\
             [uplink]\nhost = \"127.0.0.1\"\nport = {}\nca-file = \"{}\"\nclient-cert = \"{}\"\nclient-key = \"{}\"\n",
            data_dir.display(),
            line.gateway_path.display(),
            gateway_link.addr.port(),
            pki.ca.display(),
            pki.gateway_cert.display(),
            pki.gateway_key.display()
        ),
    );
    let from_votegate = Arc::new(AtomicU64::new(0));
    let from_bridge = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber = subscribe(
        broker.addr,
        &pki,
        from_votegate.clone(),
        from_bridge.clone(),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let gateway = RunningChild::new(
        Command::new(env!("CARGO_BIN_EXE_votegate"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Holding the backlog: the journal is open, the link to the broker stalled.
    std::thread::sleep(Duration::from_secs(3));
    let holding_rss = common::rss_now(gateway.pid());
    let folder_before = votegate::journal::layout::folder_bytes(&data_dir);
    let written_before = common::write_bytes(gateway.pid());
    let (cpu_holding, _) = usage(gateway.pid());
    eprintln!("uplink_drain: votegate draining");
    gateway_link.set_mode(Mode::Pass);
    let gateway_time = wait_until(&from_votegate, votes, limit);
    eprintln!("uplink_drain: votegate done in {gateway_time:?}");
    let (cpu_drained, gateway_rss) = usage(gateway.pid());
    let gateway_cpu = cpu_drained - cpu_holding;
    // The last acknowledgements become durable within the idle tick (0.5 s).
    std::thread::sleep(Duration::from_secs(2));
    let deletes_per_vote =
        (common::write_bytes(gateway.pid()) - written_before) as f64 / votes as f64;
    let folder_after = votegate::journal::layout::folder_bytes(&data_dir);
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    gateway.wait(Duration::from_secs(10));

    // The bridge: a local broker with persistence holds the same votes, one message each, while
    // its link to the broker is stalled; then the link opens.
    let proxy = FaultProxy::start(broker.addr);
    proxy.set_mode(Mode::Stall);
    let (conf, local_port) =
        common::write_bridge_config(&dir.path().join("local"), proxy.addr, &pki);
    let local = common::start_bridge(&conf);
    eprintln!("uplink_drain: feeding the local broker");
    common::feed_bridge(local_port, "gw-bench", 200, votes);
    eprintln!("uplink_drain: bridge draining");
    let bridge_buffered_rss = common::rss_now(local.pid());
    eprintln!("uplink_drain: the bridge holds {votes} votes in {bridge_buffered_rss} MiB RSS");
    let (cpu_before, _) = usage(local.pid());
    proxy.set_mode(Mode::Pass);
    let bridge_time = wait_until(&from_bridge, votes, limit);
    let (cpu_after, bridge_rss) = usage(local.pid());
    stop.store(true, Ordering::Relaxed);
    let _ = subscriber.join();
    local.kill();

    let rate = |t: Duration| votes as f64 / t.as_secs_f64();
    println!("| drain {votes} buffered votes over mutual TLS to a local Mosquitto | votes/s | CPU s | peak RSS |");
    println!("| --- | --- | --- | --- |");
    let sample = presses_sample(votes);
    println!("| votegate (journal → batches of up to 1000 votes, about {} B of postcard per vote) | {:.0} ({:.1} s) | {gateway_cpu:.1} | {gateway_rss} MiB |",
        PayloadFormat::Postcard.vote_size(&sample),
        rate(gateway_time), gateway_time.as_secs_f64());
    println!("| Mosquitto bridge (persistence, one QoS 1 message per vote) | {:.0} ({:.1} s) | {:.1} | {bridge_rss} MiB |",
        rate(bridge_time), bridge_time.as_secs_f64(), cpu_after - cpu_before);
    println!("(the bridge's RSS holding all {votes} votes before its link opened: {bridge_buffered_rss} MiB)");
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("| votegate holding {votes} votes (link stalled) | RSS {holding_rss} MiB (bound ≤ 24 MiB); journal folder {:.1} MiB | | |", mib(folder_before));
    println!("| votegate while draining | peak RSS {gateway_rss} MiB (bound ≤ 32 MiB); {deletes_per_vote:.2} B written to disk per vote (bound ≤ 32 B); folder after {:.1} MiB | | |", mib(folder_after));
    println!(
        "| ratio votegate / bridge | {:.1}× faster (bound ≥ 5×; votegate ≥ 500,000 votes/s) | {:.1}× the CPU | |",
        bridge_time.as_secs_f64() / gateway_time.as_secs_f64(),
        gateway_cpu / (cpu_after - cpu_before).max(0.001)
    );
}

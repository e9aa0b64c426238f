//! votegate against a Mosquitto bridge on a site, side by side in one run: idle CPU and RSS,
//! bytes written to disk per vote while the cloud is unreachable, RSS with those votes held,
//! and the votes lost when the process is killed with SIGKILL during the outage.
//!
//!     cargo bench --bench site_compare                        # 5,000 votes, 60 s idle
//!     VOTEGATE_BENCH_VOTES=20000 cargo bench --bench site_compare
//!
//! votegate takes its votes from a serial terminal (`votegate simulate` over a pty: each vote is
//! acknowledged only once durable); the bridge (a local Mosquitto with `persistence true`,
//! bridged over mutual TLS) takes one QoS 1 message per vote, each acknowledged by a PubAck.
//! Both reach the same broker through fault proxies that black-hole the link during the outage.

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)] // a benchmark: failing loudly is right

#[path = "../tests/it/harness/mod.rs"]
mod harness;

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::mosquitto::Mosquitto;
use harness::pki::Pki;
use harness::proxy::{FaultProxy, Mode};
use harness::RunningChild;

/// What one side measured.
struct Side {
    idle_cpu_s_per_min: f64,
    idle_rss_mib: u64,
    written_per_vote: f64,
    buffered_rss_mib: u64,
    acknowledged: u64,
    delivered_after_kill: u64,
}

/// CPU seconds a minute over `window`, and RSS at its end.
fn idle(pid: u32, window: Duration) -> (f64, u64) {
    let (before, _) = common::usage(pid);
    std::thread::sleep(window);
    let (after, _) = common::usage(pid);
    (
        (after - before) * 60.0 / window.as_secs_f64(),
        common::rss_now(pid),
    )
}

/// Waits until `counted` stops growing for 5 s (or reaches `want`); returns it.
fn settle(counted: &AtomicU64, want: u64, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = (counted.load(Ordering::Relaxed), Instant::now());
    while start.elapsed() < limit {
        let now = counted.load(Ordering::Relaxed);
        if now >= want {
            return now;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5)
            && start.elapsed() > Duration::from_secs(15)
        {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    counted.load(Ordering::Relaxed)
}

fn start_votegate(config: &Path) -> RunningChild {
    let gateway = RunningChild::new(
        Command::new(env!("CARGO_BIN_EXE_votegate"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    gateway
        .wait_for_stderr("votegate running", Duration::from_secs(30))
        .expect("votegate started");
    gateway
}

fn votegate_side(
    dir: &Path,
    pki: &Pki,
    broker: std::net::SocketAddr,
    votes: u64,
    idle_window: Duration,
    counted: &AtomicU64,
) -> Side {
    let proxy = FaultProxy::start(broker);
    let line = harness::pty::Line::new(&dir.join("ttyUSB-compare"));
    let config = harness::write_file(
        dir,
        "votegate.toml",
        &format!(
            "gateway-id = \"gw-compare\"\nsite = \"compare\"\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nlog-level = \"info\"\n\n\
             [filter]\nmin-interval = \"0s\"\n\n[[terminal]]\nid = \"entrance\"\nkind = \"serial\"\nport = \"{}\"\n\n\
             [uplink]\nhost = \"127.0.0.1\"\nport = {}\nca-file = \"{}\"\nclient-cert = \"{}\"\nclient-key = \"{}\"\nkeepalive = \"5s\"\nbackoff-cap = \"2s\"\n",
            dir.join("journal").display(),
            line.gateway_path.display(),
            proxy.addr.port(),
            pki.ca.display(),
            pki.gateway_cert.display(),
            pki.gateway_key.display()
        ),
    );
    let gateway = start_votegate(&config);
    gateway
        .wait_for_stderr("uplink connected", Duration::from_secs(30))
        .expect("uplink connected");
    std::thread::sleep(Duration::from_secs(2));
    let (idle_cpu_s_per_min, idle_rss_mib) = idle(gateway.pid(), idle_window);

    // The outage: connections go into a black hole.
    proxy.set_mode(Mode::BlackHole);
    proxy.cut();
    let written_before = common::write_bytes(gateway.pid());
    let simulator = RunningChild::new(
        Command::new(env!("CARGO_BIN_EXE_votegate"))
            .args(["simulate", "--serial", line.terminal_path.to_str().unwrap()])
            .args([
                "--terminal",
                "entrance",
                "--rate",
                "60000",
                "--count",
                &votes.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut simulator = simulator;
    let deadline = Instant::now() + Duration::from_secs(votes / 50 + 60);
    while !simulator.has_exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = common::write_bytes(gateway.pid()) - written_before;
    let buffered_rss_mib = common::rss_now(gateway.pid());
    // One JSON line per vote the terminal saw acknowledged (durable).
    let (printed, _) = simulator.kill();
    let acknowledged = printed.lines().filter(|l| l.starts_with('{')).count() as u64;

    // SIGKILL during the outage, restart, the cloud comes back.
    let _ = gateway.kill();
    let gateway = start_votegate(&config);
    proxy.set_mode(Mode::Pass);
    let delivered_after_kill = settle(counted, acknowledged, Duration::from_secs(120));
    let _ = gateway.kill();
    Side {
        idle_cpu_s_per_min,
        idle_rss_mib,
        written_per_vote: written as f64 / acknowledged.max(1) as f64,
        buffered_rss_mib,
        acknowledged,
        delivered_after_kill,
    }
}

fn bridge_side(
    dir: &Path,
    pki: &Pki,
    broker: std::net::SocketAddr,
    votes: u64,
    idle_window: Duration,
    counted: &AtomicU64,
) -> Side {
    let proxy = FaultProxy::start(broker);
    let (conf, local_port) = common::write_bridge_config(&dir.join("bridge"), proxy.addr, pki);
    let local = common::start_bridge(&conf);
    std::thread::sleep(Duration::from_secs(2));
    let (idle_cpu_s_per_min, idle_rss_mib) = idle(local.pid(), idle_window);

    proxy.set_mode(Mode::BlackHole);
    proxy.cut();
    let written_before = common::write_bytes(local.pid());
    common::feed_bridge(local_port, "gw-compare", 100, votes);
    let written = common::write_bytes(local.pid()) - written_before;
    let buffered_rss_mib = common::rss_now(local.pid());

    let _ = local.kill();
    let local = common::start_bridge(&conf);
    proxy.set_mode(Mode::Pass);
    let delivered_after_kill = settle(counted, votes, Duration::from_secs(60));
    let _ = local.kill();
    Side {
        idle_cpu_s_per_min,
        idle_rss_mib,
        written_per_vote: written as f64 / votes as f64,
        buffered_rss_mib,
        acknowledged: votes,
        delivered_after_kill,
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let votes: u64 = std::env::var("VOTEGATE_BENCH_VOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 100 } else { 5_000 });
    let idle_window = Duration::from_secs(if quick { 2 } else { 60 });
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pki = Pki::generate(dir.path());
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Mosquitto::start(
        &broker_dir,
        &pki,
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let from_votegate = Arc::new(AtomicU64::new(0));
    let from_bridge = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber = common::subscribe(
        broker.addr,
        &pki,
        from_votegate.clone(),
        from_bridge.clone(),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(500));

    eprintln!("site_compare: votegate, {votes} votes");
    let gateway = votegate_side(
        dir.path(),
        &pki,
        broker.addr,
        votes,
        idle_window,
        &from_votegate,
    );
    eprintln!("site_compare: Mosquitto bridge, {votes} votes");
    let bridge = bridge_side(
        dir.path(),
        &pki,
        broker.addr,
        votes,
        idle_window,
        &from_bridge,
    );
    stop.store(true, Ordering::Relaxed);
    let _ = subscriber.join();

    println!("| {votes} votes during an outage | votegate | Mosquitto bridge |");
    println!("| --- | --- | --- |");
    println!(
        "| idle CPU (s per minute, connected, no votes) | {:.3} | {:.3} |",
        gateway.idle_cpu_s_per_min, bridge.idle_cpu_s_per_min
    );
    println!(
        "| RSS idle | {} MiB | {} MiB |",
        gateway.idle_rss_mib, bridge.idle_rss_mib
    );
    println!(
        "| bytes written to disk per acknowledged vote | {:.0} B | {:.0} B |",
        gateway.written_per_vote, bridge.written_per_vote
    );
    println!(
        "| RSS holding the votes | {} MiB | {} MiB |",
        gateway.buffered_rss_mib, bridge.buffered_rss_mib
    );
    println!(
        "| acknowledged votes lost by a SIGKILL during the outage | {} of {} | {} of {} |",
        gateway.acknowledged - gateway.delivered_after_kill.min(gateway.acknowledged),
        gateway.acknowledged,
        bridge.acknowledged - bridge.delivered_after_kill.min(bridge.acknowledged),
        bridge.acknowledged
    );
    assert_eq!(
        gateway.delivered_after_kill, gateway.acknowledged,
        "votegate lost acknowledged votes"
    );
}

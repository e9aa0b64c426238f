//! Drain benchmark: 1,000,000 buffered votes forwarded over mutual TLS to a local Mosquitto, by
//! votegate (batches from its journal) and, side by side in the same run, by a Mosquitto bridge
//! (a local broker with persistence and `max_queued_messages 0`, bridged over TLS to the same
//! broker) holding the same votes as one message each.
//!
//!     cargo bench --bench uplink_drain                       # 1,000,000 votes
//!     VOTEGATE_BENCH_VOTES=100000 cargo bench --bench uplink_drain
//!
//! Each side's figure is measured on the process that drains: the time until the receiving
//! broker's subscriber has every vote, that process's CPU seconds and peak RSS.

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
use harness::RunningChild;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use votegate::journal::{Journal, Limits};
use votegate::model::{BootId, Button, Press, PressTime, TerminalId};
use votegate::uplink::payload::{PayloadFormat, WireVote};

fn wire_votes(count: u64) -> impl Iterator<Item = Press> {
    let terminal = TerminalId::new("entrance").unwrap();
    (1..=count).map(move |n| Press {
        terminal: terminal.clone(),
        button: Button::ALL[(n % 4) as usize],
        term_seq: Some(n),
        at: PressTime {
            ts_ms: 1_795_000_000_000 + n,
            clock_synced: true,
            boot_id: BootId([1; 16]),
            mono_ms: n,
        },
        filtered: false,
    })
}

/// A vote like the ones drained, to report its encoded size.
fn presses_sample(count: u64) -> WireVote {
    let press = wire_votes(count).last().expect("votes");
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
    let presses: Vec<Press> = wire_votes(votes).collect();
    for chunk in presses.chunks(512) {
        journal.append(chunk.to_vec()).unwrap();
    }
    drop(journal);
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
            broker.addr.port(),
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
    eprintln!("uplink_drain: votegate draining");
    let gateway_time = wait_until(&from_votegate, votes, limit);
    eprintln!("uplink_drain: votegate done in {gateway_time:?}");
    let (gateway_cpu, gateway_rss) = usage(gateway.pid());
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    gateway.wait(Duration::from_secs(10));

    // The bridge: a local broker with persistence holds the same votes, one message each, while
    // its link to the broker is stalled; then the link opens.
    let proxy = FaultProxy::start(broker.addr);
    proxy.set_mode(Mode::Stall);
    let local_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let local_dir = dir.path().join("local");
    std::fs::create_dir_all(&local_dir).unwrap();
    std::fs::write(
        local_dir.join("mosquitto.conf"),
        format!(
            "user root\nallow_anonymous true\npersistence true\npersistence_location {dir}/\nmax_queued_messages 0\n\
             log_dest file {dir}/mosquitto.log\nlistener {local_port} 127.0.0.1\n\
             connection to-cloud\naddress 127.0.0.1:{proxy_port}\nbridge_cafile {ca}\nbridge_certfile {cert}\n\
             bridge_keyfile {key}\ncleansession false\nrestart_timeout 1\ntopic bridge/# out 1\n",
            dir = local_dir.display(),
            proxy_port = proxy.addr.port(),
            ca = pki.ca.display(),
            cert = pki.gateway_cert.display(),
            key = pki.gateway_key.display(),
        ),
    )
    .unwrap();
    let local = RunningChild::new(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(local_dir.join("mosquitto.conf"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("uplink_drain: feeding the local broker");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut options = MqttOptions::new("bench-feeder", "127.0.0.1", local_port);
        options
            .set_inflight(200)
            .set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let feeder = tokio::spawn(async move {
            let now = votegate::clock::FakeClock::new(1_795_000_000_000);
            let reading = votegate::clock::Clock::now(&now);
            for press in wire_votes(votes) {
                let seq = press.term_seq.unwrap();
                let vote =
                    WireVote::from_vote(&votegate::model::Vote::accept(seq, press), &reading);
                client
                    .publish(
                        format!("bridge/gw-bench/{}", seq % 16),
                        QoS::AtLeastOnce,
                        false,
                        postcard::to_stdvec(&vote).unwrap(),
                    )
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < votes {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                acked += 1;
            }
        }
        drop(feeder.await.unwrap());
    });
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
    println!(
        "| ratio votegate / bridge | {:.1}× faster | {:.1}× the CPU | |",
        bridge_time.as_secs_f64() / gateway_time.as_secs_f64(),
        gateway_cpu / (cpu_after - cpu_before).max(0.001)
    );
}

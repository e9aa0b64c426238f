//! The cloud side under a fleet: `votegate fleet-sim` (1,000 simulated gateways, each its own
//! mutual-TLS MQTT client publishing one batch a second from the gateway's payload encoder, with
//! redeliveries, dropped ranges and reconnects) → one Mosquitto → `votegate ingest` replicas in one
//! share group → PostgreSQL (a private server, fsync and synchronous commit on). Runs 1 replica,
//! 3 replicas, and 3 replicas with one SIGKILLed mid-run and restarted.
//!
//!     cargo bench --features ingest --bench fleet
//!     VOTEGATE_FLEET_GATEWAYS=1000 VOTEGATE_FLEET_VOTES=100 VOTEGATE_FLEET_SECONDS=60 \
//!         VOTEGATE_FLEET_RUNS=1,3,3k VOTEGATE_FLEET_CONNECTIONS=4 cargo bench --features ingest --bench fleet
//!
//! Per run: votes/s committed (votes stored ÷ first to last `received_at`), the offered rate, the
//! end-to-end delay from publish to COMMIT (the replicas' `votegate_ingest_commit_delay_seconds`
//! histograms, p50/p99 interpolated within buckets; the simulator stamps each batch's newest vote
//! just before publishing it), CPU seconds per 1,000 votes of the ingest replicas, PostgreSQL,
//! Mosquitto and the simulator, and `ingest report`: 0 missing and 0 conflicts are asserted, and
//! the dropped seqs must equal the simulator's. Without `--bench` (e.g. `cargo test --benches`)
//! it runs a quick version: 20 gateways for 4 s.

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)] // a benchmark: failing loudly is right

#[path = "../tests/it/harness/mod.rs"]
mod harness;

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::mosquitto::Mosquitto;
use harness::pki::Pki;
use harness::postgres::Postgres;
use harness::{votegate_command, write_file, RunningChild};

/// PostgreSQL as a cloud team would run it for this load: durable commits, more memory than
/// the test default, checkpoints not in the way of a one-minute run.
const POSTGRES_OPTIONS: &str =
    "-c shared_buffers=512MB -c max_connections=100 -c wal_buffers=16MB \
     -c max_wal_size=8GB -c checkpoint_timeout=30min -c synchronous_commit=on";

/// Mosquitto for a fleet: nothing dropped from a client's queue (the default drops QoS 1 messages
/// beyond 1,000 queued per client), and a wider in-flight window towards each replica.
const BROKER_OPTIONS: &str = "max_queued_messages 0\nmax_inflight_messages 100\n";

struct Settings {
    gateways: usize,
    votes_per_batch: u32,
    seconds: u64,
    connections: usize,
    runs: Vec<(usize, bool)>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(quick: bool) -> Settings {
    let runs = std::env::var("VOTEGATE_FLEET_RUNS").unwrap_or_else(|_| "1,3,3k".into());
    Settings {
        gateways: env_or("VOTEGATE_FLEET_GATEWAYS", if quick { 20 } else { 1_000 }),
        votes_per_batch: env_or("VOTEGATE_FLEET_VOTES", if quick { 20 } else { 100 }),
        seconds: env_or("VOTEGATE_FLEET_SECONDS", if quick { 4 } else { 60 }),
        connections: env_or("VOTEGATE_FLEET_CONNECTIONS", 4),
        runs: runs
            .split(',')
            .filter_map(|run| {
                let kill = run.ends_with('k');
                run.trim_end_matches('k')
                    .parse()
                    .ok()
                    .map(|replicas| (replicas, kill))
            })
            .collect(),
    }
}

/// CPU seconds of a process and of its children still running (PostgreSQL's backends).
fn cpu_with_children(pid: u32) -> f64 {
    let mut total = common::usage(pid).0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let parent = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            total += common::usage(child).0;
        }
    }
    total
}

fn postmaster_pid(pg: &Postgres) -> u32 {
    std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse().ok())
        .expect("postmaster.pid")
}

struct Replica {
    config: PathBuf,
    process: Option<RunningChild>,
    metrics: Option<SocketAddr>,
    /// CPU seconds of the runs of this replica that ended (killed).
    cpu_before: f64,
}

impl Replica {
    fn start(&mut self) {
        let process = RunningChild::new(
            votegate_command()
                .args(["ingest", "--config"])
                .arg(&self.config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("votegate ingest"),
        );
        process
            .wait_for_stderr("ingest: subscribed to", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("ingest did not subscribe: {}", process.stderr_so_far()));
        let line = process
            .wait_for_stderr("/metrics and /healthz on http://", Duration::from_secs(5))
            .expect("metrics address");
        self.metrics = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok());
        self.process = Some(process);
    }

    fn cpu(&self) -> f64 {
        self.cpu_before
            + self
                .process
                .as_ref()
                .map_or(0.0, |p| common::usage(p.pid()).0)
    }

    fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            self.cpu_before += common::usage(process.pid()).0;
            process.kill();
        }
    }
}

/// A histogram from the exposition text: (upper bound, cumulative count) pairs.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of summed cumulative buckets, interpolated linearly inside its bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return lower.0 + (bound - lower.0) * fraction;
        }
        lower = (bound, count);
    }
    f64::NAN
}

fn run(settings: &Settings, replicas: usize, kill: bool) -> String {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pki = Pki::generate(dir.path());
    let pg = Postgres::start_with(POSTGRES_OPTIONS);
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let broker = Mosquitto::start(&broker_dir, &pki, BROKER_OPTIONS);
    let mqtt = |client_id: &str, cert: &Path, key: &Path| {
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca-file = \"{}\"\nclient-cert = \"{}\"\n\
             client-key = \"{}\"\nclient-id = \"{client_id}\"\n",
            broker.addr.port(),
            pki.ca.display(),
            cert.display(),
            key.display()
        )
    };
    let mut group: Vec<Replica> =
        (1..=replicas)
            .map(|n| Replica {
                config: write_file(
                    dir.path(),
                    &format!("ingest-{n}.toml"),
                    &format!(
                    "postgres-url = \"{}\"\nconnections = {}\nmetrics-listen = \"127.0.0.1:0\"\n{}",
                    pg.url(),
                    settings.connections,
                    mqtt(&format!("ingest-{n}"), &pki.subscriber_cert, &pki.subscriber_key)
                ),
                ),
                process: None,
                metrics: None,
                cpu_before: 0.0,
            })
            .collect();
    for replica in &mut group {
        replica.start();
    }
    let sim_config = write_file(
        dir.path(),
        "fleet.toml",
        &format!(
            "postgres-url = \"{}\"\n{}",
            pg.url(),
            mqtt("unused", &pki.gateway_cert, &pki.gateway_key)
        ),
    );
    let summary_path = dir.path().join("summary.json");
    let postmaster = postmaster_pid(&pg);
    let broker_pid = broker.pid().expect("broker pid");
    let (pg_cpu0, broker_cpu0) = (cpu_with_children(postmaster), common::usage(broker_pid).0);
    let started = Instant::now();
    let mut sim = RunningChild::new(
        votegate_command()
            .args(["fleet-sim", "--config"])
            .arg(&sim_config)
            .args(["--gateways", &settings.gateways.to_string()])
            .args(["--votes-per-batch", &settings.votes_per_batch.to_string()])
            .args(["--duration", &format!("{}s", settings.seconds)])
            .args([
                "--rate",
                "1",
                "--redeliver",
                "0.01",
                "--drop",
                "0.001",
                "--reconnect",
                "6",
            ])
            .args(["--seed", "17", "--drain-timeout", "300s", "--summary"])
            .arg(&summary_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate fleet-sim"),
    );
    let mut sim_cpu = 0.0;
    let mut killed = false;
    let mut pg_cpu = 0.0;
    while !sim.has_exited() {
        sim_cpu = common::usage(sim.pid()).0.max(sim_cpu);
        pg_cpu = cpu_with_children(postmaster).max(pg_cpu);
        if kill && !killed && started.elapsed() > Duration::from_secs(settings.seconds / 2) {
            let text = harness::http::get(group[0].metrics.expect("metrics"), "/metrics").body;
            let pending = text
                .lines()
                .find_map(|l| l.strip_prefix("votegate_ingest_unacknowledged_messages "))
                .unwrap_or("?")
                .to_string();
            group[0].kill();
            killed = true;
            eprintln!(
                "fleet: replica 1 killed at {:?} with {pending} messages unacknowledged",
                started.elapsed()
            );
            std::thread::sleep(Duration::from_secs(3));
            group[0].start();
            eprintln!("fleet: replica 1 back at {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, sim_out, sim_err) = sim.wait_with_output(Duration::from_secs(1));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary_path)
            .unwrap_or_else(|e| panic!("no summary ({e}): {sim_out}{sim_err}")),
    )
    .expect("summary");
    let totals = &summary["totals"];
    let acked = totals["votes_acked"].as_u64().expect("votes_acked");
    assert_eq!(totals["unacked_batches"], 0, "{sim_err}");
    // Wait for the ingest to have every acknowledged vote.
    let deadline = Instant::now() + Duration::from_secs(600);
    let stored = loop {
        pg_cpu = cpu_with_children(postmaster).max(pg_cpu);
        let stored: u64 = pg.psql("SELECT count(*) FROM votes").parse().unwrap_or(0);
        if stored >= acked || Instant::now() > deadline {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        stored, acked,
        "the ingest did not store every acknowledged vote"
    );
    let span_s: f64 = pg
        .psql("SELECT extract(epoch FROM max(received_at) - min(received_at)) FROM votes")
        .parse()
        .expect("span");
    let per_second = stored as f64 / span_s.max(0.001);
    let elapsed_sim = (summary["stopped_ms"].as_u64().unwrap()
        - summary["started_ms"].as_u64().unwrap()) as f64
        / 1000.0;
    let offered = totals["votes_created"].as_u64().unwrap() as f64 / elapsed_sim;
    // Delay histograms of the replicas running now (a killed one's first life is not counted).
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for replica in &group {
        let text = harness::http::get(replica.metrics.expect("metrics"), "/metrics").body;
        let h = histogram(&text, "votegate_ingest_commit_delay_seconds");
        if buckets.is_empty() {
            buckets = h;
        } else {
            for (sum, (_, count)) in buckets.iter_mut().zip(h) {
                sum.1 += count;
            }
        }
    }
    let (p50, p99) = (quantile(&buckets, 0.5), quantile(&buckets, 0.99));
    let ingest_cpu: f64 = group.iter().map(Replica::cpu).sum();
    let pg_cpu = pg_cpu - pg_cpu0;
    let broker_cpu = common::usage(broker_pid).0 - broker_cpu0;
    let per_k = |cpu: f64| cpu / stored as f64 * 1000.0 * 1000.0;
    // The ledger: nothing missing, no conflict, every dropped seq accounted as dropped.
    let output = votegate_command()
        .args(["ingest", "report", "--grace", "0s", "--json", "--config"])
        .arg(&group[0].config)
        .output()
        .expect("report");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("report JSON");
    let sum = |key: &str| -> u64 {
        report["gateways"]
            .as_array()
            .expect("gateways")
            .iter()
            .map(|g| g[key].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(report["result"], "ok", "{report}");
    assert_eq!((sum("missing"), sum("conflicts")), (0, 0));
    assert_eq!(sum("dropped"), totals["dropped_seqs"].as_u64().unwrap());
    assert_eq!(sum("received"), stored);
    for replica in &mut group {
        replica.kill();
    }
    format!(
        "| {replicas}{} | {} × {} | {:.0} | {:.0} | {:.1} / {:.1} | {:.0} / {:.0} / {:.0} / {:.0} | {} | {} | {} |",
        if kill { ", one killed mid-run" } else { "" },
        settings.gateways,
        settings.votes_per_batch,
        offered,
        per_second,
        p50 * 1000.0,
        p99 * 1000.0,
        per_k(ingest_cpu),
        per_k(pg_cpu),
        per_k(broker_cpu),
        per_k(sim_cpu),
        sum("duplicates"),
        sum("dropped"),
        stored,
    )
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let settings = settings(quick);
    let mut rows = Vec::new();
    for &(replicas, kill) in &settings.runs {
        let row = run(&settings, replicas, kill);
        eprintln!("{row}");
        rows.push(row);
    }
    println!(
        "| replicas | gateways × votes/batch | offered votes/s | committed votes/s | publish→COMMIT p50 / p99 ms | CPU ms per 1,000 votes: ingest / PostgreSQL / Mosquitto / simulator | duplicates absorbed | dropped (reported) | votes stored, 0 missing |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!("{row}");
    }
}

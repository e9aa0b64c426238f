//! `votegate fleet-sim` against real parts: a private mutual-TLS Mosquitto, a private PostgreSQL
//! and one `votegate ingest`. The simulator's ground truth (`--summary`) must agree with what
//! `votegate ingest report` finds, through redeliveries, dropped ranges and reconnects.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::mosquitto::Mosquitto;
use crate::harness::pki::Pki;
use crate::harness::postgres::Postgres;
use crate::harness::{seed, votegate_command, RunningChild};

/// An ingest config for this broker, with this client certificate.
fn config(
    dir: &Path,
    name: &str,
    pg_url: &str,
    port: u16,
    pki: &Pki,
    (cert, key): (&Path, &Path),
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "postgres-url = \"{pg_url}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             ca-file = \"{}\"\nclient-cert = \"{}\"\nclient-key = \"{}\"\nclient-id = \"{name}\"\n",
            pki.ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    path
}

/// A child killed when the test ends, passed or failed ([`RunningChild`] alone leaves it running).
struct Reaped(Option<RunningChild>);

impl Reaped {
    fn stderr_so_far(&self) -> String {
        self.0
            .as_ref()
            .map(RunningChild::stderr_so_far)
            .unwrap_or_default()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            child.kill();
        }
    }
}

fn start_ingest(config: &Path) -> Reaped {
    let ingest = RunningChild::new(
        votegate_command()
            .args(["ingest", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate ingest starts"),
    );
    assert!(
        ingest
            .wait_for_stderr("ingest: subscribed to", Duration::from_secs(20))
            .is_some(),
        "{}",
        ingest.stderr_so_far()
    );
    Reaped(Some(ingest))
}

/// Runs `votegate fleet-sim --config CONFIG ARGS…` to its end: (exit code, summary, stderr).
fn fleet_sim(config: &Path, summary: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let sim = RunningChild::new(
        votegate_command()
            .args(["fleet-sim", "--config"])
            .arg(config)
            .arg("--summary")
            .arg(summary)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate fleet-sim starts"),
    );
    let (status, stderr) = sim.wait(Duration::from_secs(90));
    let status = status.unwrap_or_else(|| panic!("fleet-sim did not finish in 90 s:\n{stderr}"));
    let text = std::fs::read_to_string(summary)
        .unwrap_or_else(|e| panic!("no summary ({e}); fleet-sim said:\n{stderr}"));
    let summary = serde_json::from_str(&text).expect("the summary is JSON");
    (status.code().expect("exit code"), summary, stderr)
}

fn report(config: &Path) -> serde_json::Value {
    let output = votegate_command()
        .args(["ingest", "report", "--json", "--grace", "0s", "--config"])
        .arg(config)
        .output()
        .expect("votegate runs");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn u64_of(value: &serde_json::Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {value}"))
}

/// What is wrong with the report, compared with the summary (empty when they agree).
fn disagreements(summary: &serde_json::Value, report: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let gateways = summary["gateways"].as_array().expect("gateways");
    let lines = report["gateways"].as_array().expect("report gateways");
    if lines.len() != gateways.len() {
        problems.push(format!(
            "{} gateways in the report, {} simulated",
            lines.len(),
            gateways.len()
        ));
    }
    for truth in gateways {
        let id = truth["gateway_id"].as_str().expect("gateway_id");
        let Some(line) = lines.iter().find(|l| l["gateway_id"] == id) else {
            problems.push(format!("{id} is not in the report"));
            continue;
        };
        let span = u64_of(truth, "last_seq") - u64_of(truth, "first_seq") + 1;
        let dropped: u64 = truth["dropped"]
            .as_array()
            .expect("dropped")
            .iter()
            .map(|r| r[1].as_u64().expect("last") - r[0].as_u64().expect("first") + 1)
            .sum();
        let (received, reported_dropped) = (u64_of(line, "received"), u64_of(line, "dropped"));
        let checks = [
            ("received + dropped", received + reported_dropped, span),
            ("received", received, u64_of(truth, "votes_acked")),
            ("dropped", reported_dropped, dropped),
            ("missing", u64_of(line, "missing"), 0),
            ("pending", u64_of(line, "pending"), 0),
            ("conflicts", u64_of(line, "conflicts"), 0),
            (
                "highest_seq",
                u64_of(line, "highest_seq"),
                u64_of(truth, "last_seq"),
            ),
            ("site", u64::from(line["site"] != truth["site"]), 0),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                problems.push(format!("{id}: {what} is {found}, expected {expected}"));
            }
        }
    }
    problems
}

#[test]
fn the_fleets_ground_truth_matches_the_ingest_report_through_drops_redeliveries_and_reconnects() {
    let began = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = Postgres::start();
    let pki = Pki::generate(dir.path());
    let broker = Mosquitto::start(dir.path(), &pki, "");
    let port = broker.addr.port();
    let subscriber = (pki.subscriber_cert.as_path(), pki.subscriber_key.as_path());
    let gateway = (pki.gateway_cert.as_path(), pki.gateway_key.as_path());
    let ingest_config = config(
        dir.path(),
        "ingest-fleet",
        &pg.url(),
        port,
        &pki,
        subscriber,
    );
    let sim_config = config(dir.path(), "fleet", &pg.url(), port, &pki, gateway);
    let ingest = start_ingest(&ingest_config);

    let seed = seed("fleet_sim").to_string();
    let summary_path = dir.path().join("summary.json");
    // High rates, so that each kind of event surely happens in a few seconds.
    let (code, summary, stderr) = fleet_sim(
        &sim_config,
        &summary_path,
        &[
            "--gateways",
            "20",
            "--rate",
            "5",
            "--votes-per-batch",
            "10",
            "--duration",
            "4s",
            "--redeliver",
            "0.2",
            "--drop",
            "0.05",
            "--reconnect",
            "1800",
            "--max-in-flight",
            "4",
            "--seed",
            &seed,
        ],
    );
    assert_eq!(code, 0, "fleet-sim failed:\n{stderr}");
    assert!(stderr.contains("everything acknowledged"), "{stderr}");
    let totals = &summary["totals"];
    for key in [
        "redelivered_batches",
        "dropped_seqs",
        "reconnects",
        "votes_acked",
    ] {
        assert!(u64_of(totals, key) > 0, "no {key} in {totals}");
    }
    assert_eq!(u64_of(totals, "gateways"), 20);
    assert_eq!(
        u64_of(totals, "votes_acked"),
        u64_of(totals, "votes_created")
    );

    // The ingest catches up: every vote, every dropped range, the redeliveries.
    let expected = u64_of(totals, "votes_acked");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let stored: u64 = pg.psql("SELECT count(*) FROM votes").parse().unwrap_or(0);
        if stored == expected {
            let report = report(&ingest_config);
            let duplicates: u64 = report["gateways"]
                .as_array()
                .expect("gateways")
                .iter()
                .map(|g| u64_of(g, "duplicates"))
                .sum();
            if disagreements(&summary, &report).is_empty() && duplicates > 0 {
                break report;
            }
            if Instant::now() > deadline {
                panic!(
                    "the report disagrees with the simulator's summary: {:#?}\nreport: {report}\nsummary totals: {totals}",
                    disagreements(&summary, &report)
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "{stored} votes of {expected} after 30 s; ingest log:\n{}",
            ingest.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["result"], "ok", "{report}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM votes"),
        expected.to_string(),
        "one row per acknowledged vote"
    );
    eprintln!(
        "fleet_sim: {} in {:.1} s",
        stderr.lines().last().unwrap_or_default(),
        began.elapsed().as_secs_f64()
    );
    drop(ingest);
}

#[test]
fn without_a_broker_the_fleet_sim_exits_1_and_counts_what_it_could_not_deliver() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path());
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let gateway = (pki.gateway_cert.as_path(), pki.gateway_key.as_path());
    let config = config(
        dir.path(),
        "fleet",
        "postgresql://unused@127.0.0.1/none",
        port,
        &pki,
        gateway,
    );
    let (code, summary, stderr) = fleet_sim(
        &config,
        &dir.path().join("summary.json"),
        &[
            "--gateways",
            "3",
            "--rate",
            "10",
            "--duration",
            "1s",
            "--drain-timeout",
            "1s",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    let totals = &summary["totals"];
    assert_eq!(u64_of(totals, "votes_acked"), 0);
    assert!(u64_of(totals, "unsent_votes") > 0, "{totals}");
    assert!(
        stderr.contains("cannot connect to the broker at 127.0.0.1:")
            && stderr.contains("never sent"),
        "{stderr}"
    );

    // A CA file that does not exist is a configuration fault: it stops the run at once.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&config)
            .expect("config")
            .replace(&pki.ca.display().to_string(), "/nonexistent/ca.pem"),
    )
    .expect("write");
    let started = Instant::now();
    let output = votegate_command()
        .args(["fleet-sim", "--duration", "30s", "--config"])
        .arg(&broken)
        .output()
        .expect("votegate runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot use CA file /nonexistent/ca.pem"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn sigint_stops_the_votes_and_the_fleet_sim_still_waits_for_every_ack() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path());
    let broker = Mosquitto::start(dir.path(), &pki, "");
    let gateway = (pki.gateway_cert.as_path(), pki.gateway_key.as_path());
    let config = config(
        dir.path(),
        "fleet",
        "postgresql://unused@127.0.0.1/none",
        broker.addr.port(),
        &pki,
        gateway,
    );
    let summary_path = dir.path().join("summary.json");
    let sim = RunningChild::new(
        votegate_command()
            .args([
                "fleet-sim",
                "--gateways",
                "5",
                "--rate",
                "20",
                "--format",
                "json",
            ])
            .args(["--duration", "10m", "--config"])
            .arg(&config)
            .arg("--summary")
            .arg(&summary_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate fleet-sim starts"),
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(unsafe { libc::kill(sim.pid() as i32, libc::SIGINT) }, 0);
    let (status, stderr) = sim.wait(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).expect("summary"))
            .expect("JSON");
    let made_for = u64_of(&summary, "stopped_ms") - u64_of(&summary, "started_ms");
    assert!((2000..6000).contains(&made_for), "{made_for} ms");
    let totals = &summary["totals"];
    assert!(u64_of(totals, "votes_acked") > 0, "{totals}");
    assert_eq!(
        u64_of(totals, "votes_acked"),
        u64_of(totals, "votes_created")
    );
}

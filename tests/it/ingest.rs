//! `votegate ingest` against a real PostgreSQL (a private server per test, harness/postgres.rs):
//! batches written through `ingest load` (the same `Store::ingest_batch` the MQTT consumer uses),
//! audited by `ingest report`.

use std::path::PathBuf;
use std::time::Instant;

use votegate::ingest::store::{BatchOutcome, Store};
use votegate::uplink::payload::{encode, BatchPayload, DroppedRange, PayloadFormat, WireVote};

use crate::harness::mosquitto::Mosquitto;
use crate::harness::pki::Pki;
use crate::harness::postgres::Postgres;
use crate::harness::{votegate_command, RunningChild};

fn vote(seq: u64) -> WireVote {
    WireVote {
        seq,
        terminal: format!("t{}", seq % 3),
        button: (seq % 4) as u8 + 1,
        ts_ms: 1_795_000_000_000 + seq * 1000,
        clock_synced: true,
        restamped: false,
        filtered: seq % 10 == 0,
        term_seq: Some(seq + 100),
    }
}

fn batch(
    gateway: &str,
    seqs: impl IntoIterator<Item = u64>,
    dropped: &[(u64, u64)],
) -> BatchPayload {
    let votes: Vec<WireVote> = seqs.into_iter().map(vote).collect();
    let first = votes.first().map_or(0, |v| v.seq);
    BatchPayload {
        format: votegate::uplink::payload::FORMAT_VERSION,
        gateway_id: gateway.into(),
        site: "store-042".into(),
        batch_id: first,
        first_seq: first,
        last_seq: votes.last().map_or(0, |v| v.seq),
        votes,
        dropped: dropped
            .iter()
            .map(|&(first_seq, last_seq)| DroppedRange {
                first_seq,
                last_seq,
            })
            .collect(),
    }
}

/// A private server and an ingest config pointing at it.
struct Setup {
    pg: Postgres,
    config: PathBuf,
    files: tempfile::TempDir,
}

fn setup() -> Setup {
    let pg = Postgres::start();
    let files = tempfile::tempdir().expect("temp dir");
    let config = files.path().join("ingest.toml");
    std::fs::write(&config, format!("postgres-url = \"{}\"\n", pg.url())).expect("config");
    Setup { pg, config, files }
}

impl Setup {
    /// `votegate ingest load` of these batches (alternating postcard and JSON); the outcomes.
    fn load(&self, batches: &[BatchPayload]) -> Vec<serde_json::Value> {
        let mut paths = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            let format = if i % 2 == 0 {
                PayloadFormat::Postcard
            } else {
                PayloadFormat::Json
            };
            let path = self
                .files
                .path()
                .join(format!("batch-{}-{i}", fastrand::u64(..)));
            std::fs::write(&path, encode(batch, format)).expect("write batch");
            paths.push(path);
        }
        let output = votegate_command()
            .args(["ingest", "load", "--config"])
            .arg(&self.config)
            .args(&paths)
            .output()
            .expect("votegate runs");
        assert!(
            output.status.success(),
            "ingest load failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.pg.log()
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// `votegate ingest report --json --grace GRACE`: (exit code, the report).
    fn report(&self, grace: &str) -> (i32, serde_json::Value) {
        let output = votegate_command()
            .args(["ingest", "report", "--json", "--grace", grace, "--config"])
            .arg(&self.config)
            .output()
            .expect("votegate runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "report is not JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code().expect("exit code"), report)
    }

    fn text_report(&self, grace: &str) -> (i32, String) {
        let output = votegate_command()
            .args(["ingest", "report", "--grace", grace, "--config"])
            .arg(&self.config)
            .output()
            .expect("votegate runs");
        (
            output.status.code().expect("exit code"),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }
}

fn sum(outcomes: &[serde_json::Value], key: &str) -> u64 {
    outcomes.iter().map(|o| o[key].as_u64().expect(key)).sum()
}

fn gateway<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["gateways"]
        .as_array()
        .expect("gateways")
        .iter()
        .find(|g| g["gateway_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {report}"))
}

#[test]
fn the_test_postgres_is_private_and_gone_after_the_test() {
    let pg = Postgres::start();
    assert_ne!(pg.port, 5432, "never the machine's own server");
    assert_eq!(pg.psql("SHOW fsync"), "on");
    assert_eq!(pg.psql("SELECT current_user"), "postgres");
    let data_dir = pg.psql("SHOW data_directory");
    assert!(
        data_dir.starts_with(&pg.dir.path().display().to_string()),
        "{data_dir}"
    );
    let pid_file = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).expect("pid");
    let pid = pid_file
        .lines()
        .next()
        .expect("pid line")
        .trim()
        .to_string();
    let folder = pg.dir.path().to_path_buf();
    drop(pg);
    // Gone, or a zombie waiting for whoever adopted it (pg_ctl's postmaster is not our child).
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    assert!(!running(), "postmaster {pid} still runs");
    assert!(!folder.exists(), "{} is left behind", folder.display());
}

#[test]
fn redelivered_batches_are_absorbed_and_nothing_is_missing() {
    let s = setup();
    let outcomes = s.load(&[
        batch("gw-1", 1..=40, &[]),
        batch("gw-1", 41..=80, &[]),
        batch("gw-1", 41..=80, &[]),  // redelivered as it was
        batch("gw-1", 61..=100, &[]), // redelivered after a reconnect, with more votes
        batch("gw-2", 1..=10, &[]),
    ]);
    assert_eq!(sum(&outcomes, "inserted"), 110);
    assert_eq!(sum(&outcomes, "duplicates"), 60);
    assert_eq!(sum(&outcomes, "conflicts"), 0);
    assert_eq!(
        s.pg.psql("SELECT count(*), count(DISTINCT (gateway_id, seq)) FROM votes"),
        "110|110"
    );
    let (code, report) = s.report("0s");
    assert_eq!(code, 0, "{report}");
    let gw1 = gateway(&report, "gw-1");
    assert_eq!(gw1["received"], 100);
    assert_eq!(gw1["duplicates"], 60);
    assert_eq!(gw1["missing"], 0);
    assert_eq!(gw1["conflicts"], 0);
    assert_eq!(gw1["contiguous_through"], 100);
    assert_eq!(gateway(&report, "gw-2")["received"], 10);
    // The row is the vote as sent: ts from ts_ms, exact to the millisecond.
    assert_eq!(
        s.pg.psql(
            "SELECT site, terminal, button, (extract(epoch FROM ts) * 1000)::bigint, filtered, \
             term_seq FROM votes WHERE gateway_id = 'gw-1' AND seq = 30"
        ),
        format!("store-042|t0|3|{}|t|130", 1_795_000_000_000u64 + 30_000)
    );
    let (code, text) = s.text_report("0s");
    assert_eq!(code, 0);
    assert!(
        text.contains("gw-1 (site store-042): received 100, dropped at the gateway 0, missing 0"),
        "{text}"
    );
}

#[test]
fn a_reported_dropped_range_counts_as_dropped_not_missing() {
    let s = setup();
    s.load(&[
        batch("gw-1", 1..=10, &[]),
        // drop-oldest threw away 11..=20 (and 15..=22 overlaps what was sent later)
        batch("gw-1", 21..=30, &[(11, 20)]),
        batch("gw-1", 31..=40, &[(11, 20), (15, 22)]),
    ]);
    let (code, report) = s.report("0s");
    assert_eq!(code, 0, "{report}");
    let gw = gateway(&report, "gw-1");
    assert_eq!(gw["received"], 30);
    assert_eq!(gw["dropped"], 10);
    assert_eq!(gw["missing"], 0);
    assert_eq!(gw["contiguous_through"], 40);
    assert_eq!(
        s.pg.psql("SELECT contiguous_through, highest_seq FROM gateway_ledger"),
        "40|40",
        "the ledger kept batch by batch agrees"
    );
}

#[test]
fn a_vote_deleted_by_hand_is_missing() {
    // The negative control: the report audits `votes` itself, not its own counters.
    let s = setup();
    s.load(&[batch("gw-1", 1..=50, &[]), batch("gw-2", 1..=5, &[])]);
    assert_eq!(s.report("0s").0, 0);
    s.pg.psql("DELETE FROM votes WHERE gateway_id = 'gw-1' AND seq IN (17, 50)");
    let (code, report) = s.report("0s");
    assert_eq!(code, 1, "{report}");
    let gw = gateway(&report, "gw-1");
    assert_eq!(gw["missing"], 2, "{report}");
    assert_eq!(
        gw["missing_ranges"],
        serde_json::json!([{"first": 17, "last": 17}, {"first": 50, "last": 50}])
    );
    assert_eq!(gw["contiguous_through"], 16);
    assert_eq!(gateway(&report, "gw-2")["missing"], 0);
    let (code, text) = s.text_report("0s");
    assert_eq!(code, 1);
    assert!(
        text.contains("FAIL gw-1") && text.contains("missing 2 (seq 17, 50)"),
        "{text}"
    );
    assert!(
        text.contains("1 of 2 gateway(s) with missing votes or conflicts"),
        "{text}"
    );
    // Within the grace period a gap is pending (a batch may still be on its way), not missing.
    let (code, report) = s.report("5m");
    assert_eq!(code, 0, "{report}");
    assert_eq!(gateway(&report, "gw-1")["pending"], 2);
}

#[test]
fn a_redelivered_vote_with_other_content_is_a_conflict_and_the_first_is_kept() {
    let s = setup();
    let original = batch("gw-1", 1..=10, &[]);
    let mut changed = original.clone();
    changed.votes[4].button = if changed.votes[4].button == 1 { 4 } else { 1 };
    let outcomes = s.load(&[original.clone(), changed.clone()]);
    assert_eq!(outcomes[1]["inserted"], 0);
    assert_eq!(outcomes[1]["duplicates"], 9);
    assert_eq!(outcomes[1]["conflicts"], 1);
    assert_eq!(
        s.pg.psql("SELECT button FROM votes WHERE gateway_id = 'gw-1' AND seq = 5"),
        original.votes[4].button.to_string(),
        "the stored row is never overwritten"
    );
    assert_eq!(
        s.pg.psql("SELECT seq, button, batch_id FROM vote_conflicts"),
        format!("5|{}|1", changed.votes[4].button),
        "the newcomer is recorded"
    );
    let (code, report) = s.report("0s");
    assert_eq!(code, 1, "{report}");
    let gw = gateway(&report, "gw-1");
    assert_eq!(
        (gw["conflicts"].clone(), gw["missing"].clone()),
        (1.into(), 0.into())
    );
}

#[test]
fn a_gap_filled_late_moves_the_ledger_mark_over_it() {
    let s = setup();
    s.load(&[batch("gw-1", 1..=10, &[]), batch("gw-1", 21..=30, &[])]);
    assert_eq!(
        s.pg.psql("SELECT contiguous_through, highest_seq FROM gateway_ledger"),
        "10|30"
    );
    let (code, report) = s.report("0s");
    assert_eq!(
        (code, gateway(&report, "gw-1")["missing"].clone()),
        (1, 10.into())
    );
    s.load(&[batch("gw-1", 11..=20, &[])]);
    assert_eq!(
        s.pg.psql("SELECT contiguous_through, highest_seq FROM gateway_ledger"),
        "30|30"
    );
    assert_eq!(s.report("0s").0, 0);
}

#[test]
fn an_invalid_batch_is_refused_whole_and_a_bad_config_names_its_key() {
    let s = setup();
    let mut bad = batch("gw-1", 1..=3, &[]);
    bad.votes[2].button = 9;
    let path = s.files.path().join("bad");
    std::fs::write(&path, encode(&bad, PayloadFormat::Json)).expect("write");
    let output = votegate_command()
        .args(["ingest", "load", "--config"])
        .arg(&s.config)
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("vote 3: button 9 is not 1 to 4"),
        "{stderr}"
    );
    assert_eq!(s.pg.psql("SELECT count(*) FROM votes"), "0");

    let config = s.files.path().join("bad.toml");
    std::fs::write(
        &config,
        format!("postgres-url = \"{}\"\n[mqtt]\nhots = \"x\"\n", s.pg.url()),
    )
    .expect("write");
    let output = votegate_command()
        .args(["ingest", "report", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("mqtt.hots"),
        "{stderr}"
    );
}

#[test]
fn replicas_writing_the_same_batches_at_once_keep_the_ledger_exact() {
    // Three connections (three replicas, each handed every batch of one gateway, in different
    // orders: redeliveries racing each other): every vote is stored once, every other copy is
    // counted as a duplicate, never as a conflict, and the ledger's mark reaches the end.
    let s = setup();
    let url = s.pg.url();
    let batches: Vec<BatchPayload> = (0..30u64)
        .map(|b| batch("gw-1", b * 20 + 1..=b * 20 + 20, &[]))
        .collect();
    let totals = runtime().block_on(async {
        let mut tasks = Vec::new();
        for replica in 0..3u64 {
            let url = url.clone();
            let mut mine = batches.clone();
            let mut rng = fastrand::Rng::with_seed(replica);
            rng.shuffle(&mut mine);
            tasks.push(tokio::spawn(async move {
                let mut store = Store::open(&url).await.expect("open");
                let mut total = BatchOutcome::default();
                for batch in &mine {
                    let outcome = store.ingest_batch(batch).await.expect("ingest_batch");
                    total.inserted += outcome.inserted;
                    total.duplicates += outcome.duplicates;
                    total.conflicts += outcome.conflicts;
                }
                total
            }));
        }
        let mut sum = BatchOutcome::default();
        for task in tasks {
            let total = task.await.expect("task");
            sum.inserted += total.inserted;
            sum.duplicates += total.duplicates;
            sum.conflicts += total.conflicts;
        }
        sum
    });
    assert_eq!(
        (totals.inserted, totals.duplicates, totals.conflicts),
        (600, 1200, 0)
    );
    assert_eq!(
        s.pg.psql(
            "SELECT received, duplicates, conflicts, contiguous_through, highest_seq, batches \
             FROM gateway_ledger"
        ),
        "600|1200|0|600|600|90"
    );
    let (code, report) = s.report("0s");
    assert_eq!(code, 0, "{report}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Writes `batches` batches of `size` votes for each of `gateways` gateways, one connection per
/// gateway, all at once; returns votes per second.
async fn write_fleet(url: &str, prefix: &str, gateways: u64, batches: u64, size: u64) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for g in 0..gateways {
        let url = url.to_string();
        let gateway = format!("{prefix}-{g}");
        tasks.push(tokio::spawn(async move {
            let mut store = Store::open(&url).await.expect("open");
            let mut total = BatchOutcome::default();
            for b in 0..batches {
                let first = b * size + 1;
                let outcome = store
                    .ingest_batch(&batch(&gateway, first..first + size, &[]))
                    .await
                    .expect("ingest_batch");
                total.inserted += outcome.inserted;
            }
            total.inserted
        }));
    }
    let mut inserted = 0;
    for task in tasks {
        inserted += task.await.expect("task");
    }
    assert_eq!(inserted, gateways * batches * size);
    inserted as f64 / start.elapsed().as_secs_f64()
}

#[test]
fn ingest_batch_throughput_into_a_real_postgres() {
    // A figure, not a pass mark (the machine is shared): printed for BENCHMARKS.md. Three
    // connections migrate at once (replicas starting together), then write.
    let s = setup();
    let url = s.pg.url();
    let (one, three) = runtime().block_on(async {
        let opens: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::open(&url).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.expect("task").expect("concurrent migrations");
        }
        let one = write_fleet(&url, "one", 1, 50, 1000).await;
        let three = write_fleet(&url, "three", 3, 50, 1000).await;
        (one, three)
    });
    eprintln!(
        "ingest_batch: {one:.0} votes/s on 1 connection, {three:.0} votes/s on 3 (batches of 1000 votes, fsync on)"
    );
    assert_eq!(s.pg.psql("SELECT max(version) FROM schema_migrations"), "1");
    let (code, report) = s.report("0s");
    assert_eq!(code, 0, "{report}");
}

/// Publishes a file at QoS 1 with the gateway's certificate.
fn publish(broker: &Mosquitto, pki: &Pki, topic: &str, file: &std::path::Path) {
    let output = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.addr.port().to_string(),
            "-q",
            "1",
        ])
        .arg("--cafile")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.gateway_cert)
        .arg("--key")
        .arg(&pki.gateway_key)
        .args(["-t", topic, "-f"])
        .arg(file)
        .output()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn wait_for_votes(pg: &Postgres, count: u64, ingest: &RunningChild) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now: u64 = pg.psql("SELECT count(*) FROM votes").parse().unwrap_or(0);
        if now == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} votes of {count} after 30 s; ingest log:\n{}",
            ingest.stderr_so_far()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn batches_from_the_broker_are_acknowledged_only_after_their_commit() {
    let mut s = setup();
    let pki = Pki::generate(s.files.path());
    let broker = Mosquitto::start(s.files.path(), &pki, "");
    std::fs::write(
        &s.config,
        format!(
            "postgres-url = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca-file = \"{}\"\n\
             client-cert = \"{}\"\nclient-key = \"{}\"\nclient-id = \"ingest-test\"\n",
            s.pg.url(),
            broker.addr.port(),
            pki.ca.display(),
            pki.subscriber_cert.display(),
            pki.subscriber_key.display()
        ),
    )
    .expect("config");
    let ingest = RunningChild::new(
        votegate_command()
            .args(["ingest", "--config"])
            .arg(&s.config)
            .env("VOTEGATE_LOG", "debug")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("votegate ingest starts"),
    );
    assert!(
        ingest
            .wait_for_stderr(
                "subscribed to $share/votegate-ingest/votegate/+/+/votes",
                std::time::Duration::from_secs(20)
            )
            .is_some(),
        "{}",
        ingest.stderr_so_far()
    );
    let file = |name: &str, batch: &BatchPayload, format| {
        let path = s.files.path().join(name);
        std::fs::write(&path, encode(batch, format)).expect("write");
        path
    };
    let topic = "votegate/store-042/gw-1/votes";
    publish(
        &broker,
        &pki,
        topic,
        &file("a", &batch("gw-1", 1..=50, &[]), PayloadFormat::Postcard),
    );
    publish(
        &broker,
        &pki,
        topic,
        &file("b", &batch("gw-1", 51..=100, &[]), PayloadFormat::Json),
    );
    publish(
        &broker,
        &pki,
        topic,
        &file("b", &batch("gw-1", 51..=100, &[]), PayloadFormat::Postcard),
    );
    let garbage = s.files.path().join("garbage");
    std::fs::write(&garbage, "hello").expect("write");
    publish(&broker, &pki, topic, &garbage);
    publish(
        &broker,
        &pki,
        "votegate/store-042/gw-2/votes",
        &file("c", &batch("gw-2", 1..=10, &[]), PayloadFormat::Postcard),
    );
    wait_for_votes(&s.pg, 110, &ingest);
    assert!(
        ingest
            .wait_for_stderr("is not a votegate batch", std::time::Duration::from_secs(5))
            .is_some(),
        "{}",
        ingest.stderr_so_far()
    );

    // PostgreSQL goes away: a batch published now cannot be committed, so it must not be
    // acknowledged; the broker sends it again once the ingest is back, and nothing is lost.
    s.pg.shut_down();
    publish(
        &broker,
        &pki,
        topic,
        &file("d", &batch("gw-1", 101..=150, &[]), PayloadFormat::Postcard),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    s.pg.start_again();
    wait_for_votes(&s.pg, 160, &ingest);
    let (code, report) = s.report("0s");
    assert_eq!(code, 0, "{report}");
    let gw = gateway(&report, "gw-1");
    assert_eq!(
        (gw["received"].clone(), gw["duplicates"].clone()),
        (150.into(), 50.into())
    );
    let (_, stderr) = ingest.kill();
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

fn mqtt_config(s: &Setup, broker: &Mosquitto, pki: &Pki, client_id: &str) -> PathBuf {
    let path = s.files.path().join(format!("{client_id}.toml"));
    std::fs::write(
        &path,
        format!(
            "postgres-url = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca-file = \"{}\"\n\
             client-cert = \"{}\"\nclient-key = \"{}\"\nclient-id = \"{client_id}\"\n",
            s.pg.url(),
            broker.addr.port(),
            pki.ca.display(),
            pki.subscriber_cert.display(),
            pki.subscriber_key.display()
        ),
    )
    .expect("config");
    path
}

fn start_ingest(config: &std::path::Path) -> RunningChild {
    let ingest = RunningChild::new(
        votegate_command()
            .args(["ingest", "--config"])
            .arg(config)
            .env("VOTEGATE_LOG", "debug")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("votegate ingest starts"),
    );
    assert!(
        ingest
            .wait_for_stderr("ingest: subscribed to", std::time::Duration::from_secs(20))
            .is_some(),
        "{}",
        ingest.stderr_so_far()
    );
    ingest
}

#[test]
fn two_replicas_in_one_group_split_the_batches_and_a_killed_one_loses_none() {
    let s = setup();
    let pki = Pki::generate(s.files.path());
    let broker = Mosquitto::start(s.files.path(), &pki, "");
    let config_a = mqtt_config(&s, &broker, &pki, "ingest-a");
    let config_b = mqtt_config(&s, &broker, &pki, "ingest-b");
    let a = start_ingest(&config_a);
    let b = start_ingest(&config_b);
    let topic = |g: u64| format!("votegate/store-042/gw-{g}/votes");
    let publish_batches = |range: std::ops::Range<u64>| {
        for n in range {
            let (g, b) = (n % 2, n / 2);
            let path = s.files.path().join(format!("batch-{n}"));
            let payload = batch(&format!("gw-{g}"), b * 10 + 1..=b * 10 + 10, &[]);
            std::fs::write(&path, encode(&payload, PayloadFormat::Postcard)).expect("write");
            publish(&broker, &pki, &topic(g), &path);
        }
    };
    publish_batches(0..20);
    wait_for_votes(&s.pg, 200, &a);
    let handled = |log: &str| log.lines().filter(|l| l.contains("ingest: batch ")).count();
    let (by_a, by_b) = (handled(&a.stderr_so_far()), handled(&b.stderr_so_far()));
    assert_eq!(by_a + by_b, 20, "each batch went to one replica");
    assert!(
        by_a > 0 && by_b > 0,
        "the group splits the traffic: {by_a} and {by_b}"
    );

    // Replica A dies (SIGKILL); batches keep coming; A comes back under its client id.
    a.kill();
    publish_batches(20..40);
    let a = start_ingest(&config_a);
    wait_for_votes(&s.pg, 400, &b);
    let (code, report) = s.report("0s");
    assert_eq!(code, 0, "{report}");
    for g in ["gw-0", "gw-1"] {
        assert_eq!(gateway(&report, g)["received"], 200, "{report}");
    }
    drop((a, b));
}

/// The value of one sample of the exposition text, e.g. `votegate_ingest_ledger_missing`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_show_what_the_replica_did_and_the_ledgers_missing_and_dropped_seqs() {
    let s = setup();
    let pki = Pki::generate(s.files.path());
    let broker = Mosquitto::start(s.files.path(), &pki, "");
    let config = mqtt_config(&s, &broker, &pki, "ingest-m");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text = text.replacen(
        "[mqtt]",
        "metrics-listen = \"127.0.0.1:0\"\nledger-interval = \"200ms\"\nmissing-grace = \"0s\"\nconnections = 3\n[mqtt]",
        1,
    );
    std::fs::write(&config, text).expect("config");
    let ingest = start_ingest(&config);
    let line = ingest
        .wait_for_stderr(
            "/metrics and /healthz on http://",
            std::time::Duration::from_secs(5),
        )
        .expect("the metrics address is logged");
    let addr: std::net::SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .expect("an address");
    assert_eq!(crate::harness::http::get(addr, "/healthz").status, 200);

    // gw-0: 1-10 and 21-30 (11-20 never arrive); gw-1: 1-10, then 16-20 reporting 11-15 dropped.
    let batches = [
        ("gw-0", batch("gw-0", 1..=10, &[])),
        ("gw-0", batch("gw-0", 21..=30, &[])),
        ("gw-1", batch("gw-1", 1..=10, &[])),
        ("gw-1", batch("gw-1", 16..=20, &[(11, 15)])),
        ("gw-1", batch("gw-1", 16..=20, &[(11, 15)])),
    ];
    for (n, (gateway, payload)) in batches.iter().enumerate() {
        let path = s.files.path().join(format!("m-{n}"));
        std::fs::write(&path, encode(payload, PayloadFormat::Postcard)).expect("write");
        publish(
            &broker,
            &pki,
            &format!("votegate/store-042/{gateway}/votes"),
            &path,
        );
    }
    wait_for_votes(&s.pg, 35, &ingest);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let expected = [
        ("votegate_ingest_batches_total", 5.0),
        ("votegate_ingest_votes_inserted_total", 35.0),
        ("votegate_ingest_duplicates_total", 5.0),
        ("votegate_ingest_database_connections", 3.0),
        ("votegate_ingest_subscribed", 1.0),
        ("votegate_ingest_unacknowledged_messages", 0.0),
        ("votegate_ingest_ledger_missing", 10.0),
        (
            "votegate_ingest_gateway_missing{gateway=\"gw-0\",site=\"store-042\"}",
            10.0,
        ),
        (
            "votegate_ingest_gateway_dropped{gateway=\"gw-1\",site=\"store-042\"}",
            5.0,
        ),
        (
            "votegate_ingest_gateway_missing{gateway=\"gw-1\",site=\"store-042\"}",
            0.0,
        ),
        (
            "votegate_ingest_gateway_contiguous_through{gateway=\"gw-0\",site=\"store-042\"}",
            10.0,
        ),
        (
            "votegate_ingest_gateway_contiguous_through{gateway=\"gw-1\",site=\"store-042\"}",
            20.0,
        ),
        (
            "votegate_ingest_gateway_received{gateway=\"gw-1\",site=\"store-042\"}",
            15.0,
        ),
        ("votegate_ingest_commit_delay_seconds_count", 4.0),
    ];
    loop {
        let text = crate::harness::http::get(addr, "/metrics").body;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, value)| sample(&text, series) != Some(*value))
            .map(|(series, value)| {
                format!("{series}: {:?}, expected {value}", sample(&text, series))
            })
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{wrong:#?}\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The report says the same.
    let (code, report) = s.report("0s");
    assert_eq!(code, 1, "{report}");
    assert_eq!(gateway(&report, "gw-0")["missing"], 10, "{report}");
    assert_eq!(gateway(&report, "gw-1")["dropped"], 5, "{report}");

    // PostgreSQL gone: /healthz says so.
    let mut pg = s.pg;
    pg.shut_down();
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let response = crate::harness::http::get(addr, "/healthz");
        if response.status == 503 {
            assert!(response.body.contains("PostgreSQL"), "{}", response.body);
            break;
        }
        // A failure shows once the consumer touches the database: send it a batch.
        let path = s.files.path().join("m-late");
        std::fs::write(
            &path,
            encode(&batch("gw-0", 31..=31, &[]), PayloadFormat::Postcard),
        )
        .expect("write");
        publish(&broker, &pki, "votegate/store-042/gw-0/votes", &path);
        assert!(Instant::now() < deadline, "{}", ingest.stderr_so_far());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

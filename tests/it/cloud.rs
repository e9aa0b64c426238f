//! The whole chain, black box: gateways (the real daemon, serial terminals played by `simulate`
//! on kernel ptys) → a fault proxy → a mutual-TLS Mosquitto that keeps its sessions across a
//! restart → three `votegate ingest` replicas in one shared-subscription group → a private
//! PostgreSQL. Faults on every hop; at the end `ingest report` must account for every seq.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use votegate::journal::{Journal, Limits, WhenFull};
use votegate::model::Press;

use crate::display::start_gateway;
use crate::harness::mosquitto::Mosquitto;
use crate::harness::pki::Pki;
use crate::harness::postgres::Postgres;
use crate::harness::proxy::{FaultProxy, Mode};
use crate::harness::pty::Line;
use crate::harness::{votegate_command, votes, write_file, RunningChild};
use crate::uplink::{status, wait_for};

/// Term_seqs of the live presses start here (the backlog's are 1…).
const FIRST_LIVE_TERM_SEQ: u64 = 100_000;

/// A gateway under test: its pty line, data folder and config.
struct Site {
    gateway_id: &'static str,
    line: Line,
    config: PathBuf,
    data_dir: PathBuf,
}

impl Site {
    fn new(
        dir: &Path,
        gateway_id: &'static str,
        site: &str,
        proxy: &FaultProxy,
        pki: &Pki,
        journal: &str,
    ) -> Site {
        let line = Line::new(&dir.join(format!("ttyUSB-{gateway_id}")));
        let data_dir = dir.join(format!("journal-{gateway_id}"));
        let text = format!(
            r#"gateway-id = "{gateway_id}"
site = "{site}"
data-dir = "{data}"
time-zone = "UTC"
listen = "127.0.0.1:0"

[filter]
min-interval = "0s"

[[terminal]]
id = "entrance"
kind = "serial"
port = "{port}"

[uplink]
host = "127.0.0.1"
port = {proxy_port}
ca-file = "{ca}"
client-cert = "{cert}"
client-key = "{key}"
keepalive = "5s"
backoff-cap = "1s"
max-batch-age = "200ms"
max-batch-votes = 50
{journal}
"#,
            data = data_dir.display(),
            port = line.gateway_path.display(),
            proxy_port = proxy.addr.port(),
            ca = pki.ca.display(),
            cert = pki.gateway_cert.display(),
            key = pki.gateway_key.display(),
        );
        let config = write_file(dir, &format!("{gateway_id}.toml"), &text);
        Site {
            gateway_id,
            line,
            config,
            data_dir,
        }
    }

    /// Puts `count` presses in the journal before the gateway starts (an outage's backlog).
    fn prefill(&self, count: u64, limits: Limits) {
        let mut journal = Journal::open(&self.data_dir, limits).expect("journal");
        let presses: Vec<Press> = votes::presses(count).collect();
        for chunk in presses.chunks(4_000) {
            journal.append(chunk.to_vec()).expect("append");
        }
    }

    /// Plays the terminal: `count` presses at `rate` per minute, each retransmitted until acknowledged.
    fn simulate(&self, count: u64, rate: u64) -> RunningChild {
        RunningChild::new(
            votegate_command()
                .args(["simulate", "--serial"])
                .arg(&self.line.terminal_path)
                .args(["--terminal", "entrance", "--rate", &rate.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--first-term-seq", &FIRST_LIVE_TERM_SEQ.to_string()])
                .args(["--retransmit-ms", "200"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("simulate"),
        )
    }
}

/// One `votegate ingest` replica of the group.
struct Replica {
    name: String,
    config: PathBuf,
    process: Option<RunningChild>,
}

impl Replica {
    fn new(dir: &Path, name: &str, pg: &Postgres, broker: &Mosquitto, pki: &Pki) -> Replica {
        let text = format!(
            "postgres-url = \"{url}?application_name={name}\"\nconnections = 2\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nca-file = \"{ca}\"\n\
             client-cert = \"{cert}\"\nclient-key = \"{key}\"\nclient-id = \"{name}\"\n",
            url = pg.url(),
            port = broker.addr.port(),
            ca = pki.ca.display(),
            cert = pki.subscriber_cert.display(),
            key = pki.subscriber_key.display(),
        );
        let mut replica = Replica {
            name: name.to_string(),
            config: write_file(dir, &format!("{name}.toml"), &text),
            process: None,
        };
        replica.start();
        replica
    }

    fn start(&mut self) {
        let process = RunningChild::new(
            votegate_command()
                .args(["ingest", "--config"])
                .arg(&self.config)
                .env("VOTEGATE_LOG", "debug")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("votegate ingest"),
        );
        assert!(
            process
                .wait_for_stderr("ingest: subscribed to", Duration::from_secs(20))
                .is_some(),
            "{}: {}",
            self.name,
            process.stderr_so_far()
        );
        self.process = Some(process);
    }

    /// SIGKILL; returns its log.
    fn kill(&mut self) -> String {
        self.process.take().map(|p| p.kill().1).unwrap_or_default()
    }

    fn log(&self) -> String {
        self.process
            .as_ref()
            .map(RunningChild::stderr_so_far)
            .unwrap_or_default()
    }
}

/// `votegate ingest report --json` with no grace: (exit code, report).
fn report(config: &Path) -> (i32, serde_json::Value) {
    let output = votegate_command()
        .args(["ingest", "report", "--grace", "0s", "--json", "--config"])
        .arg(config)
        .output()
        .expect("ingest report");
    let text = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

fn gateway<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["gateways"]
        .as_array()
        .and_then(|all| all.iter().find(|g| g["gateway_id"] == id))
        .unwrap_or_else(|| panic!("{id} not in the report: {report}"))
}

fn count(pg: &Postgres, sql: &str) -> u64 {
    pg.psql(sql).parse().unwrap_or(0)
}

/// Holds the ledger row of `gateway_id` locked in a transaction of its own (every batch of that
/// gateway then waits inside its transaction, between BEGIN and COMMIT); returns the session and
/// its backend's pid once the lock is held.
fn lock_ledger_row(pg: &Postgres, gateway_id: &str) -> (std::process::Child, String) {
    let mut session = pg.psql_session();
    let stdin = session.stdin.as_mut().expect("stdin");
    writeln!(
        stdin,
        "SET application_name = 'lock-holder'; BEGIN; \
         SELECT 1 FROM gateway_ledger WHERE gateway_id = '{gateway_id}' FOR UPDATE;"
    )
    .expect("psql");
    stdin.flush().expect("psql");
    // Held once the session sits idle in its transaction (the SELECT … FOR UPDATE returned).
    let mut pid = String::new();
    wait_for(
        "the lock holder to hold the row",
        Duration::from_secs(30),
        || {
            pid = pg.psql(
                "SELECT pid FROM pg_stat_activity \
             WHERE application_name = 'lock-holder' AND state = 'idle in transaction'",
            );
            !pid.is_empty()
        },
    );
    (session, pid)
}

/// The replica whose PostgreSQL backend waits, inside a batch's transaction, for the lock
/// `holder` (a backend pid) holds.
fn replica_blocked_by(pg: &Postgres, holder: &str) -> Option<String> {
    let name = pg.psql(&format!(
        "SELECT application_name FROM pg_stat_activity \
         WHERE application_name LIKE 'ingest-%' AND xact_start IS NOT NULL \
           AND {holder} = ANY(pg_blocking_pids(pid)) LIMIT 1"
    ));
    (!name.is_empty()).then_some(name)
}

#[test]
fn every_acknowledged_press_reaches_postgres_exactly_once_through_faults_on_every_hop() {
    const BACKLOG: u64 = 2_000;
    const LIVE: u64 = 300;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pg = Postgres::start();
    let pki = Pki::generate(dir.path());
    let mut broker = Mosquitto::start_persistent(dir.path(), &pki, "max_queued_messages 100000");
    let proxy = FaultProxy::start(broker.addr);
    let sites = [
        Site::new(dir.path(), "gw-a", "store-1", &proxy, &pki, ""),
        Site::new(dir.path(), "gw-b", "store-2", &proxy, &pki, ""),
    ];
    // The replicas first: their subscription must exist before the first batch is published.
    let mut replicas: Vec<Replica> = (1..=3)
        .map(|n| Replica::new(dir.path(), &format!("ingest-{n}"), &pg, &broker, &pki))
        .collect();
    let gateways: Vec<_> = sites
        .iter()
        .map(|site| {
            site.prefill(BACKLOG, Limits::default());
            start_gateway(&site.config)
        })
        .collect();
    let simulators: Vec<RunningChild> = sites.iter().map(|s| s.simulate(LIVE, 2_400)).collect();
    let started = Instant::now();
    let mut faults = Vec::new();

    // 1. The broker's acks to the gateways are lost while their batches get through; then the
    //    link is cut: the gateways publish those batches again.
    std::thread::sleep(Duration::from_millis(1_000));
    let stored = count(&pg, "SELECT count(*) FROM votes");
    proxy.set_mode(Mode::BlackHoleReplies);
    wait_for(
        "a batch stored whose ack is lost",
        Duration::from_secs(30),
        || count(&pg, "SELECT count(*) FROM votes") > stored,
    );
    std::thread::sleep(Duration::from_millis(300));
    proxy.cut();
    proxy.set_mode(Mode::Pass);
    faults.push(format!("{:?}: acks lost, link cut", started.elapsed()));

    // 2. A replica is killed (SIGKILL) while a batch's transaction is open in PostgreSQL.
    let (mut lock, holder) = lock_ledger_row(&pg, "gw-a");
    let mut victim = None;
    wait_for(
        "a replica waiting inside a transaction",
        Duration::from_secs(30),
        || {
            victim = replica_blocked_by(&pg, &holder);
            victim.is_some()
        },
    );
    let victim = victim.expect("a replica");
    let index = replicas
        .iter()
        .position(|r| r.name == victim)
        .expect("one of ours");
    let killed_log = replicas[index].kill();
    faults.push(format!(
        "{:?}: {victim} killed mid-transaction",
        started.elapsed()
    ));
    if let Some(stdin) = lock.stdin.as_mut() {
        let _ = writeln!(stdin, "COMMIT;");
    }
    drop(lock.stdin.take());
    let _ = lock.wait();
    std::thread::sleep(Duration::from_millis(1_000));
    replicas[index].start();

    // 3. The broker restarts (cleanly: it keeps the sessions and the queued messages).
    std::thread::sleep(Duration::from_millis(1_000));
    broker.restart();
    faults.push(format!("{:?}: broker restarted", started.elapsed()));

    // 4. Another link cut, then PostgreSQL restarts (fast: open transactions roll back).
    std::thread::sleep(Duration::from_millis(1_500));
    proxy.cut();
    faults.push(format!("{:?}: link cut", started.elapsed()));
    std::thread::sleep(Duration::from_millis(500));
    pg.shut_down();
    std::thread::sleep(Duration::from_millis(1_500));
    pg.start_again();
    faults.push(format!("{:?}: PostgreSQL restarted", started.elapsed()));

    // The terminals finish; the gateways' journals empty; the ingest catches up.
    let mut pressed = HashMap::new();
    for ((site, mut simulator), (gateway, _)) in sites.iter().zip(simulators).zip(&gateways) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !simulator.has_exited() {
            assert!(
                Instant::now() < deadline,
                "{}: the simulator did not finish; faults {faults:#?}\nsimulator: {}\ngateway: {}",
                site.gateway_id,
                simulator.stderr_so_far(),
                gateway.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pressed.insert(site.gateway_id, simulator.kill().0);
    }
    for (_, addr) in &gateways {
        wait_for("the journal to drain", Duration::from_secs(120), || {
            status(*addr)["journal"]["depth"] == 0
        });
    }
    let expected = 2 * (BACKLOG + LIVE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&pg, "SELECT count(*) FROM votes") < expected {
        let logs: Vec<String> = replicas.iter().map(Replica::log).collect();
        assert!(
            Instant::now() < deadline,
            "{} votes of {expected}; faults {faults:#?}; replicas:\n{}",
            count(&pg, "SELECT count(*) FROM votes"),
            logs.join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count(&pg, "SELECT count(*) FROM votes"), expected);

    // Every press a terminal saw acknowledged is in `votes` once, under one seq.
    for site in &sites {
        let lines = &pressed[site.gateway_id];
        let rows = pg.psql(&format!(
            "SELECT term_seq, count(*) FROM votes WHERE gateway_id = '{}' AND term_seq >= {FIRST_LIVE_TERM_SEQ} GROUP BY term_seq",
            site.gateway_id
        ));
        let stored: HashMap<u64, u64> = rows
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(t, n)| (t.parse().expect("term_seq"), n.parse().expect("count")))
            .collect();
        let mut acked = 0;
        for line in lines.lines() {
            let vote: serde_json::Value = serde_json::from_str(line).expect("json");
            let term_seq = vote["term_seq"].as_u64().expect("term_seq");
            assert_eq!(
                stored.get(&term_seq),
                Some(&1),
                "{}: acknowledged press {term_seq} is not stored exactly once",
                site.gateway_id
            );
            acked += 1;
        }
        assert_eq!(acked, LIVE, "{}", site.gateway_id);
        assert_eq!(
            stored.len() as u64,
            LIVE,
            "{}: presses nobody saw acknowledged",
            site.gateway_id
        );
    }

    let (code, report) = report(&replicas[0].config);
    assert_eq!(code, 0, "{report}");
    let mut duplicates = 0;
    for site in &sites {
        let g = gateway(&report, site.gateway_id);
        assert_eq!(g["received"], BACKLOG + LIVE, "{g}");
        assert_eq!(
            (g["missing"].as_u64(), g["conflicts"].as_u64()),
            (Some(0), Some(0)),
            "{g}"
        );
        assert_eq!(g["contiguous_through"], BACKLOG + LIVE, "{g}");
        duplicates += g["duplicates"].as_u64().expect("duplicates");
    }
    assert!(
        duplicates > 0,
        "no redelivery was absorbed: the faults did not test exactly-once; faults {faults:#?}"
    );
    // The killed replica's batch was rolled back and never acknowledged: the broker sent it
    // again to the replica's session when it came back.
    let comeback = replicas[index].log();
    assert!(
        comeback.contains(" of gw-a: "),
        "{victim} wrote no batch of gw-a after its restart:\n{comeback}"
    );
    let handled: Vec<usize> = replicas
        .iter()
        .map(|r| {
            r.log()
                .lines()
                .filter(|l| l.contains("ingest: batch "))
                .count()
        })
        .collect();
    assert!(
        handled.iter().filter(|n| **n > 0).count() >= 2,
        "the group split nothing: {handled:?}"
    );
    let reconnects = |r: &Replica| r.log().matches("reconnecting in").count();
    assert!(
        replicas.iter().map(reconnects).sum::<usize>() > 0,
        "no replica saw the broker or PostgreSQL go"
    );
    eprintln!(
        "{expected} votes, {duplicates} duplicates absorbed; faults {faults:#?}; batches per replica {handled:?}; \
         the killed replica's last lines: {}",
        killed_log.lines().rev().take(2).collect::<Vec<_>>().join(" | ")
    );
    drop(gateways);
}

#[test]
fn a_gateway_dropping_the_oldest_votes_is_accounted_for_seq_by_seq() {
    const PRESSED: u64 = 400_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = Postgres::start();
    let pki = Pki::generate(dir.path());
    // Mosquitto drops QoS 1 messages queued for a client beyond `max_queued_messages` (1000 by
    // default) without a word: the gateway's backlog arrives far faster than PostgreSQL takes
    // it, so the queue must not be bounded by count (README § Cloud ingest; with the default,
    // this test's report shows the broker's drops as missing).
    let broker = Mosquitto::start(dir.path(), &pki, "max_queued_messages 0");
    let proxy = FaultProxy::start(broker.addr);
    let site = Site::new(
        dir.path(),
        "gw-full",
        "store-9",
        &proxy,
        &pki,
        "\n[journal]\nmax-disk-size = \"1 MiB\"\nwhen-full = \"drop-oldest\"\n",
    );
    let replicas: Vec<Replica> = (1..=3)
        .map(|n| Replica::new(dir.path(), &format!("ingest-{n}"), &pg, &broker, &pki))
        .collect();
    // An outage long enough to fill a 1 MiB journal several times over.
    let limits = Limits {
        max_disk_bytes: 1024 * 1024,
        when_full: WhenFull::DropOldest,
        ..Limits::default()
    };
    site.prefill(PRESSED, limits);
    let (daemon, addr) = start_gateway(&site.config);
    wait_for("the journal to drain", Duration::from_secs(120), || {
        status(addr)["journal"]["depth"] == 0
    });
    let journal_dropped = status(addr)["journal"]["dropped"].as_u64();
    drop(daemon);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, report) = loop {
        let (code, report) = report(&replicas[0].config);
        let g = gateway(&report, "gw-full");
        let accounted = g["received"].as_u64().unwrap_or(0) + g["dropped"].as_u64().unwrap_or(0);
        if accounted == PRESSED || Instant::now() > deadline {
            break (code, report);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let g = gateway(&report, "gw-full");
    assert_eq!(code, 0, "{report}");
    let received = g["received"].as_u64().expect("received");
    let dropped = g["dropped"].as_u64().expect("dropped");
    assert!(dropped > PRESSED / 2, "the journal did not drop: {g}");
    assert_eq!(received + dropped, PRESSED, "{g}");
    assert_eq!(
        (g["missing"].as_u64(), g["pending"].as_u64()),
        (Some(0), Some(0)),
        "{g}"
    );
    assert_eq!(g["contiguous_through"], PRESSED, "{g}");
    assert_eq!(count(&pg, "SELECT count(*) FROM votes"), received);
    if let Some(journal_dropped) = journal_dropped {
        assert_eq!(
            dropped, journal_dropped,
            "the ledger and the gateway's own count agree"
        );
    }
    eprintln!(
        "{PRESSED} pressed: {received} received, {dropped} dropped at the gateway, 0 missing"
    );
}

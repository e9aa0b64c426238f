//! The MQTT/TLS uplink against a real Mosquitto (TLS, client certificates required, generated per
//! test), reached through a fault proxy that cuts, stalls and black-holes the connection. A
//! subscriber plays cloud ingest. Nothing may be lost, redelivered votes keep their seq, and the
//! journal ends empty.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use votegate::journal::{Journal, Limits, WhenFull};
use votegate::model::Press;
use votegate::uplink::payload::WireVote;

use crate::display::start_gateway;
use crate::harness::http;
use crate::harness::mosquitto::Mosquitto;
use crate::harness::pki::Pki;
use crate::harness::proxy::{FaultProxy, Mode};
use crate::harness::pty::Line;
use crate::harness::subscriber::Subscriber;
use crate::harness::votes;
use crate::harness::{votegate_command, write_file, RunningChild};

/// Broker, proxy and subscriber.
pub(crate) struct Cloud {
    pub(crate) dir: tempfile::TempDir,
    pki: Pki,
    broker: Mosquitto,
    pub(crate) proxy: FaultProxy,
    pub(crate) subscriber: Subscriber,
    pub(crate) line: Line,
}

impl Cloud {
    pub(crate) fn start(broker_extra: &str) -> Cloud {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::generate(dir.path());
        let broker = Mosquitto::start(dir.path(), &pki, broker_extra);
        let proxy = FaultProxy::start(broker.addr);
        let subscriber = Subscriber::start(broker.addr, &pki, &broker.log);
        let line = Line::new(&dir.path().join("ttyUSB-entrance"));
        Cloud {
            dir,
            pki,
            broker,
            proxy,
            subscriber,
            line,
        }
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// A gateway config whose uplink goes through the proxy.
    fn config(&self, ca: &Path, cert: &Path, key: &Path, uplink_extra: &str) -> PathBuf {
        let text = format!(
            r#"gateway-id = "gw-uplink"
site = "store-7"
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
telemetry-interval = "2s"
{uplink_extra}
"#,
            data = self.data_dir().display(),
            port = self.line.gateway_path.display(),
            proxy_port = self.proxy.addr.port(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        );
        write_file(self.dir.path(), "votegate.toml", &text)
    }

    pub(crate) fn good_config(&self, uplink_extra: &str) -> PathBuf {
        self.config(
            &self.pki.ca,
            &self.pki.gateway_cert,
            &self.pki.gateway_key,
            uplink_extra,
        )
    }

    /// Puts `count` votes in the journal before the gateway starts (an outage's backlog).
    fn prefill(&self, count: u64) {
        let mut journal = Journal::open(&self.data_dir(), Limits::default()).expect("journal");
        let presses: Vec<Press> = votes::presses(count).collect();
        journal.append(presses).expect("append");
    }

    /// Every vote received, by seq; panics if one seq arrived with different contents.
    fn received(&self) -> HashMap<u64, WireVote> {
        let mut votes: HashMap<u64, WireVote> = HashMap::new();
        for batch in self.subscriber.batches() {
            assert_eq!(
                (batch.gateway_id.as_str(), batch.site.as_str()),
                ("gw-uplink", "store-7")
            );
            assert_eq!(batch.first_seq, batch.votes.first().expect("votes").seq);
            assert_eq!(batch.last_seq, batch.votes.last().expect("votes").seq);
            for vote in batch.votes {
                if let Some(earlier) = votes.get(&vote.seq) {
                    assert_eq!(
                        earlier, &vote,
                        "seq {} redelivered with other contents",
                        vote.seq
                    );
                }
                votes.insert(vote.seq, vote);
            }
        }
        votes
    }
}

pub(crate) fn status(addr: std::net::SocketAddr) -> serde_json::Value {
    http::get(addr, "/api/v1/status").json()
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(gateway: RunningChild) -> String {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    let (status, log) = gateway.wait(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway did not stop cleanly:\n{log}"
    );
    log
}

#[test]
fn every_vote_arrives_through_cuts_stalls_and_black_holes() {
    let cloud = Cloud::start("");
    cloud.prefill(500); // a backlog from an outage
    let (gateway, addr) = start_gateway(&cloud.good_config("max-batch-votes = 40"));
    let mut simulator = RunningChild::new(
        votegate_command()
            .args([
                "simulate",
                "--serial",
                cloud.line.terminal_path.to_str().expect("utf-8"),
            ])
            .args([
                "--terminal",
                "entrance",
                "--rate",
                "300",
                "--count",
                "90",
                "--first-term-seq",
                "1000",
            ])
            .args(["--retransmit-ms", "200"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("simulate"),
    );
    let faults = [
        (Duration::from_millis(1500), "cut"),
        (Duration::from_millis(2500), "stall"),
        (Duration::from_millis(4500), "pass"),
        (Duration::from_millis(5500), "black-hole"),
        (Duration::from_millis(7000), "pass"),
    ];
    let start = Instant::now();
    for (at, fault) in faults {
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        match fault {
            "cut" => cloud.proxy.cut(),
            "stall" => cloud.proxy.set_mode(Mode::Stall),
            "black-hole" => cloud.proxy.set_mode(Mode::BlackHole),
            "drop-acks" => cloud.proxy.set_mode(Mode::BlackHoleReplies),
            _ => cloud.proxy.set_mode(Mode::Pass),
        }
    }
    // The broker gets batches but its acks are lost: once one got through that way, cut. Those
    // votes must be sent again under the same seqs.
    // Start from a fresh connection that has shown it works (a batch acknowledged on it).
    let connections = status(addr)["uplink"]["connections"]
        .as_u64()
        .expect("connections");
    cloud.proxy.cut();
    wait_for("a fresh connection", Duration::from_secs(20), || {
        let uplink = status(addr)["uplink"].clone();
        uplink["state"] == "connected" && uplink["connections"].as_u64() > Some(connections)
    });
    let acked = status(addr)["uplink"]["votes_acked"].as_u64();
    wait_for(
        "a batch acknowledged on it",
        Duration::from_secs(20),
        || status(addr)["uplink"]["votes_acked"].as_u64() > acked,
    );
    cloud.proxy.set_mode(Mode::BlackHoleReplies);
    let before = cloud.subscriber.batches().len();
    wait_for("a batch whose ack is lost", Duration::from_secs(20), || {
        cloud.subscriber.batches().len() > before
    });
    cloud.proxy.cut();
    cloud.proxy.set_mode(Mode::Pass);
    wait_for("the simulator to finish", Duration::from_secs(60), || {
        simulator.has_exited()
    });
    let (pressed, _) = simulator.kill();
    wait_for("the journal to drain", Duration::from_secs(60), || {
        status(addr)["journal"]["depth"] == 0
    });

    let received = cloud.received();
    // The backlog, exactly as it was stored.
    for term_seq in 1..=500u64 {
        assert!(
            received.values().any(|v| v.term_seq == Some(term_seq)),
            "backlog vote {term_seq} lost"
        );
    }
    // Every vote the terminal saw acknowledged.
    let mut acked = 0;
    for line in pressed.lines() {
        let vote: serde_json::Value = serde_json::from_str(line).expect("json");
        let term_seq = vote["term_seq"].as_u64().expect("term_seq");
        let found: Vec<&WireVote> = received
            .values()
            .filter(|v| v.term_seq == Some(term_seq))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "term_seq {term_seq} arrived under {} seqs",
            found.len()
        );
        assert_eq!(
            u64::from(found[0].button),
            vote["button"].as_u64().expect("button")
        );
        acked += 1;
    }
    assert_eq!(acked, 90);
    assert_eq!(received.len(), 590, "votes nobody pressed arrived");

    let uplink = &status(addr)["uplink"];
    assert!(
        uplink["connections"].as_u64().expect("connections") >= 3,
        "the faults did not reconnect: {uplink}"
    );
    assert!(uplink["last_upload"].is_string());
    let messages = cloud.subscriber.messages();
    let status_topic = "votegate/store-7/gw-uplink/status";
    assert!(messages
        .iter()
        .any(|(t, p)| t == status_topic && p == b"online"));
    let telemetry = messages
        .iter()
        .find(|(t, _)| t == "votegate/store-7/gw-uplink/telemetry")
        .expect("telemetry");
    let telemetry: serde_json::Value =
        serde_json::from_slice(&telemetry.1).expect("telemetry is JSON");
    assert_eq!(telemetry["gateway_id"], "gw-uplink");
    assert!(telemetry["journal_depth"].is_u64() && telemetry["terminals_online"].is_u64());

    let log = stop(gateway);
    wait_for("the offline status", Duration::from_secs(5), || {
        cloud
            .subscriber
            .messages()
            .iter()
            .any(|(t, p)| t == status_topic && p == b"offline")
    });
    let duplicates = cloud
        .subscriber
        .batches()
        .iter()
        .map(|b| b.votes.len())
        .sum::<usize>()
        - received.len();
    assert!(
        duplicates > 0,
        "no vote was redelivered: the lost acks did not test redelivery"
    );
    eprintln!(
        "590 votes delivered ({duplicates} duplicates after faults), {} connections through the proxy",
        cloud.proxy.accepted()
    );
    assert!(log.contains("uplink connected"), "{log}");
}

#[test]
fn an_oversize_batch_is_split_until_the_broker_takes_it() {
    let cloud = Cloud::start("max_packet_size 1500");
    cloud.prefill(300);
    let (gateway, addr) =
        start_gateway(&cloud.good_config("max-payload-size = \"8 KiB\"\nmax-batch-votes = 1000"));
    wait_for("the journal to drain", Duration::from_secs(90), || {
        status(addr)["journal"]["depth"] == 0
    });
    assert_eq!(cloud.received().len(), 300);
    let log = stop(gateway);
    assert!(
        log.contains("lowering batches from 8192 to 4096 bytes"),
        "{log}"
    );
    assert!(
        log.contains("set uplink.max-payload-size below the broker's packet limit"),
        "{log}"
    );
}

fn check_output(config: &Path) -> String {
    let output = votegate_command()
        .args(["check", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("check");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_wrong_ca_fails_clearly_and_loses_nothing() {
    let cloud = Cloud::start("");
    cloud.prefill(20);
    let wrong = cloud.config(
        &cloud.pki.other_ca,
        &cloud.pki.gateway_cert,
        &cloud.pki.gateway_key,
        "",
    );
    let report = check_output(&wrong);
    let line = report
        .lines()
        .find(|l| l.contains(" uplink "))
        .expect("uplink line");
    assert!(line.starts_with("FAIL  uplink     TLS step failed: the broker's certificate was rejected: it is not signed by a CA in uplink.ca-file (or, without ca-file, by one this system trusts)"), "{report}");

    let (gateway, addr) = start_gateway(&wrong);
    wait_for("the error to show", Duration::from_secs(15), || {
        status(addr)["uplink"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate was rejected"))
    });
    assert_eq!(status(addr)["journal"]["depth"], 20);
    let log = stop(gateway);
    assert!(
        log.contains("uplink: the broker's certificate was rejected"),
        "{log}"
    );
    assert!(cloud.subscriber.batches().is_empty());

    let (gateway, addr) = start_gateway(&cloud.good_config(""));
    wait_for("the journal to drain", Duration::from_secs(30), || {
        status(addr)["journal"]["depth"] == 0
    });
    assert_eq!(cloud.received().len(), 20);
    stop(gateway);
    let report = check_output(&cloud.good_config(""));
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("ok    uplink     127.0.0.1:")
                && l.contains("TLS with our client certificate")),
        "{report}"
    );
}

#[test]
fn an_expired_client_certificate_fails_clearly_and_loses_nothing() {
    let cloud = Cloud::start("");
    cloud.prefill(20);
    let expired = cloud.config(
        &cloud.pki.ca,
        &cloud.pki.expired_cert,
        &cloud.pki.expired_key,
        "",
    );
    let report = check_output(&expired);
    let line = report
        .lines()
        .find(|l| l.contains(" uplink "))
        .expect("uplink line");
    assert!(
        line.contains("the broker refused our client certificate"),
        "{report}"
    );

    let (gateway, addr) = start_gateway(&expired);
    wait_for("the error to show", Duration::from_secs(15), || {
        status(addr)["uplink"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused our client certificate"))
    });
    assert_eq!(status(addr)["journal"]["depth"], 20);
    stop(gateway);
    assert!(cloud.subscriber.batches().is_empty());
    assert!(
        cloud.broker.log_text().contains("certificate"),
        "the broker logged no certificate problem"
    );

    let (gateway, addr) = start_gateway(&cloud.good_config(""));
    wait_for("the journal to drain", Duration::from_secs(30), || {
        status(addr)["journal"]["depth"] == 0
    });
    assert_eq!(cloud.received().len(), 20);
    stop(gateway);
}

#[test]
fn decode_prints_a_received_batch_as_json() {
    let cloud = Cloud::start("");
    cloud.prefill(3);
    let (gateway, addr) = start_gateway(&cloud.good_config(""));
    wait_for("the journal to drain", Duration::from_secs(30), || {
        status(addr)["journal"]["depth"] == 0
    });
    stop(gateway);
    let (_, payload) = cloud
        .subscriber
        .messages()
        .into_iter()
        .find(|(t, _)| t.ends_with("/votes"))
        .expect("a batch");
    let mut child = votegate_command()
        .arg("decode")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("decode");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&payload)
        .expect("write");
    let output = child.wait_with_output().expect("decode runs");
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON out");
    assert_eq!(json["format"], 2);
    assert_eq!(json["dropped"], serde_json::json!([]));
    assert_eq!(json["votes"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["votes"][0]["terminal"], "entrance");
    let garbage = votegate_command()
        .args(["decode", "/etc/hostname"])
        .output()
        .expect("decode");
    assert_eq!(garbage.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&garbage.stderr)
        .starts_with("votegate: /etc/hostname: not a votegate batch"));
}

#[test]
fn json_batches_and_the_last_will_on_sigkill() {
    let cloud = Cloud::start("");
    cloud.prefill(5);
    let (gateway, addr) = start_gateway(&cloud.good_config("format = \"json\""));
    wait_for("the journal to drain", Duration::from_secs(30), || {
        status(addr)["journal"]["depth"] == 0
    });
    // The broker acknowledges a batch before the subscriber has it.
    wait_for(
        "the subscriber to get the votes",
        Duration::from_secs(10),
        || cloud.received().len() == 5,
    );
    let (_, payload) = cloud
        .subscriber
        .messages()
        .into_iter()
        .find(|(t, _)| t.ends_with("/votes"))
        .expect("a batch");
    let json: serde_json::Value = serde_json::from_slice(&payload).expect("the payload is JSON");
    assert_eq!(json["format"], 2);
    assert_eq!(json["votes"][0]["terminal"], "entrance");
    assert_eq!(cloud.received().len(), 5);

    // A crash: the socket closes without DISCONNECT, so the broker publishes the will.
    gateway.kill();
    let status_topic = "votegate/store-7/gw-uplink/status";
    wait_for("the last will", Duration::from_secs(20), || {
        let messages = cloud.subscriber.messages();
        let statuses: Vec<&[u8]> = messages
            .iter()
            .filter(|(t, _)| t == status_topic)
            .map(|(_, p)| p.as_slice())
            .collect();
        statuses.last() == Some(&b"offline".as_slice())
    });
}

#[test]
fn every_seq_a_full_journal_dropped_is_reported_on_the_wire() {
    const PRESSED: u64 = 400_000;
    let cloud = Cloud::start("");
    let limits = Limits {
        max_disk_bytes: 1024 * 1024,
        when_full: WhenFull::DropOldest,
        ..Limits::default()
    };
    {
        // An outage long enough to fill a 1 MiB journal three times over.
        let mut journal = Journal::open(&cloud.data_dir(), limits).expect("journal");
        let presses: Vec<Press> = votes::presses(PRESSED).collect();
        for chunk in presses.chunks(4_000) {
            journal.append(chunk.to_vec()).expect("append");
        }
        let stats = journal.stats();
        assert!(stats.dropped > PRESSED / 2, "{stats:?}");
    }
    let config = cloud.good_config("\n[journal]\nmax-disk-size = \"1 MiB\"\n");
    let (gateway, addr) = start_gateway(&config);
    wait_for("the journal to drain", Duration::from_secs(60), || {
        status(addr)["journal"]["depth"] == 0
    });
    stop(gateway);

    let received = cloud.received();
    let mut reported = std::collections::BTreeSet::new();
    for batch in cloud.subscriber.batches() {
        assert_eq!(batch.format, 2);
        for range in batch.dropped {
            reported.extend(range.first_seq..=range.last_seq);
        }
    }
    assert!(!reported.is_empty());
    for seq in 1..=PRESSED {
        let got = received.contains_key(&seq);
        let dropped = reported.contains(&seq);
        assert!(
            got != dropped,
            "seq {seq}: received {got}, reported dropped {dropped}"
        );
    }
    eprintln!(
        "{} received, {} reported dropped",
        received.len(),
        reported.len()
    );
    // Reported and acknowledged: nothing left to report.
    let mut journal = Journal::open(&cloud.data_dir(), limits).expect("journal");
    assert_eq!(journal.unreported_drops().expect("drops"), []);
}

#[test]
fn a_v1_client_certificate_is_named_in_one_sentence_at_connect_time() {
    let cloud = Cloud::start("");
    let v1 = cloud.config(&cloud.pki.ca, &cloud.pki.v1_cert, &cloud.pki.v1_key, "");
    let (gateway, addr) = start_gateway(&v1);
    let error = || {
        status(addr)["uplink"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_for("the error to show", Duration::from_secs(15), || {
        !error().is_empty()
    });
    assert_eq!(
        error(),
        format!(
            "cannot use client certificate and key {}: it is an X.509 v1 certificate, made without extensions, which TLS refuses: sign it again with extensions (`openssl x509 -req … -extfile client.ext`, or `-copy_extensions copyall` with OpenSSL 3)",
            cloud.pki.v1_cert.display()
        )
    );
    stop(gateway);
}

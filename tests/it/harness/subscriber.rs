//! Cloud ingest, played by `mosquitto_sub`: subscribes to `votegate/#` over mutual TLS and records
//! every message with its topic.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use votegate::uplink::payload::{self, BatchPayload};

use super::pki::Pki;
use super::RunningChild;

/// A running subscriber.
pub struct Subscriber {
    process: RunningChild,
}

impl Subscriber {
    /// Subscribes (QoS 1) and waits for the SUBACK.
    pub fn start(broker: SocketAddr, pki: &Pki, broker_log: &std::path::Path) -> Subscriber {
        let process = RunningChild::new(
            // stdbuf: mosquitto_sub block-buffers a piped stdout.
            Command::new("stdbuf")
                .args(["-oL", "mosquitto_sub"])
                .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
                .arg("--cafile").arg(&pki.ca)
                .arg("--cert").arg(&pki.subscriber_cert)
                .arg("--key").arg(&pki.subscriber_key)
                .args(["-t", "votegate/#", "-q", "1", "-d", "-F", "MSG %t %x"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto_sub is missing: apt-get install mosquitto-clients (scripts/test does)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.stdout_so_far().contains("SUBACK") {
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub got no SUBACK: {}{}\nbroker log:\n{}",
                process.stdout_so_far(),
                process.stderr_so_far(),
                std::fs::read_to_string(broker_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Subscriber { process }
    }

    /// Every message so far: (topic, payload).
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.process
            .stdout_so_far()
            .lines()
            .filter_map(|line| line.strip_prefix("MSG "))
            .filter_map(|rest| {
                let (topic, hex) = rest.split_once(' ').unwrap_or((rest, ""));
                let bytes = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()?;
                Some((topic.to_string(), bytes))
            })
            .collect()
    }

    /// Every batch received on a `…/votes` topic, decoded.
    pub fn batches(&self) -> Vec<BatchPayload> {
        self.messages()
            .into_iter()
            .filter(|(topic, _)| topic.ends_with("/votes"))
            .map(|(_, bytes)| payload::decode(&bytes).expect("a valid batch"))
            .collect()
    }
}

//! Helpers shared by the benchmarks that talk to a Mosquitto over mutual TLS (uplink_drain,
//! site_compare): process usage from /proc, the subscriber that counts distinct votes, the
//! votes both sides carry, and the Mosquitto bridge they are compared with.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use votegate::clock::FakeClock;
use votegate::model::Vote;
use votegate::uplink::payload::{self, WireVote};

use crate::harness::pki::Pki;
use crate::harness::votes::presses;
use crate::harness::RunningChild;

/// A process's current resident set, in MiB.
pub fn rss_now(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Bytes a process has caused to be written to storage (`/proc/PID/io` write_bytes).
pub fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// (CPU seconds, peak RSS MiB) of a process.
pub fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (ticks / hz, hwm / 1024)
}

pub fn tls(pki: &Pki) -> TlsConfiguration {
    use rumqttc::tokio_rustls::rustls::{
        self, pki_types::pem::PemObject, pki_types::CertificateDer, pki_types::PrivateKeyDer,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&pki.subscriber_cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.subscriber_key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    TlsConfiguration::Rustls(Arc::new(config))
}

/// Counts distinct votes arriving at the broker, separately for votegate's batches (`votegate/#`)
/// and the bridge's single votes (`bridge/#`): both carry seqs 1…N.
pub fn subscribe(
    broker: std::net::SocketAddr,
    pki: &Pki,
    from_votegate: Arc<AtomicU64>,
    from_bridge: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let tls = tls(pki);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut options = MqttOptions::new("bench-subscriber", "127.0.0.1", broker.port());
            options
                .set_transport(Transport::tls_with_config(tls))
                .set_max_packet_size(1 << 24, 1 << 16)
                .set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = AsyncClient::new(options, 16);
            client
                .subscribe("votegate/#", QoS::AtMostOnce)
                .await
                .unwrap();
            client.subscribe("bridge/#", QoS::AtMostOnce).await.unwrap();
            let (mut votegate, mut bridge) = (HashSet::new(), HashSet::new());
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                        if publish.topic.ends_with("/votes") {
                            for vote in payload::decode(&publish.payload).expect("batch").votes {
                                votegate.insert(vote.seq);
                            }
                            from_votegate.store(votegate.len() as u64, Ordering::Relaxed);
                        } else if publish.topic.starts_with("bridge/") {
                            let vote: WireVote =
                                postcard::from_bytes(&publish.payload).expect("vote");
                            bridge.insert(vote.seq);
                            from_bridge.store(bridge.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(Err(err)) => panic!("subscriber: {err}"),
                    _ => {}
                }
            }
        });
    })
}

pub fn wait_until(counted: &AtomicU64, want: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    while counted.load(Ordering::Relaxed) < want {
        assert!(
            start.elapsed() < limit,
            "only {} of {want} arrived",
            counted.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A local Mosquitto with persistence, listening on a free port and bridged over mutual TLS
/// (gateway certificate) to `upstream` with QoS 1 for `bridge/#`: the site-side alternative to
/// votegate. Returns the config file and the local port.
pub fn write_bridge_config(dir: &Path, upstream: SocketAddr, pki: &Pki) -> (PathBuf, u16) {
    let local_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nallow_anonymous true\npersistence true\npersistence_location {dir}/\nmax_queued_messages 0\n\
             log_dest file {dir}/mosquitto.log\nlistener {local_port} 127.0.0.1\n\
             connection to-cloud\naddress 127.0.0.1:{upstream_port}\nbridge_cafile {ca}\nbridge_certfile {cert}\n\
             bridge_keyfile {key}\ncleansession false\nrestart_timeout 1\ntopic bridge/# out 1\n",
            dir = dir.display(),
            upstream_port = upstream.port(),
            ca = pki.ca.display(),
            cert = pki.gateway_cert.display(),
            key = pki.gateway_key.display(),
        ),
    )
    .unwrap();
    (conf, local_port)
}

/// Starts the bridge's Mosquitto and gives it half a second to listen.
pub fn start_bridge(conf: &Path) -> RunningChild {
    let local = RunningChild::new(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    local
}

/// Publishes `presses(votes)` to the bridge at `local_port`, each as one QoS 1 message
/// (`bridge/{gateway}/{seq % 16}`, a postcard `WireVote`), `inflight` at a time, and returns once
/// every one is acknowledged by a PubAck.
pub fn feed_bridge(local_port: u16, gateway: &str, inflight: u16, votes: u64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = format!("bridge/{gateway}");
    runtime.block_on(async move {
        let mut options = MqttOptions::new(format!("{gateway}-feeder"), "127.0.0.1", local_port);
        options
            .set_inflight(inflight)
            .set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let feeder = tokio::spawn(async move {
            let reading = votegate::clock::Clock::now(&FakeClock::new(1_795_000_000_000));
            for press in presses(votes) {
                let seq = press.term_seq.unwrap();
                let vote = WireVote::from_vote(&Vote::accept(seq, press), &reading);
                client
                    .publish(
                        format!("{topic}/{}", seq % 16),
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
}

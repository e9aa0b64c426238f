//! `/healthz`, `/api/v1/status`, `/metrics` and `votegate status` tell the truth, black box: a
//! broker whose certificate the gateway rejects is unhealthy at once; a broker that refuses
//! connections is a network fault, unhealthy only after `uplink.unhealthy-after`; a GPIO
//! terminal that cannot start (this machine is not a Raspberry Pi) is unhealthy at once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::display::start_gateway;
use crate::harness::http;
use crate::harness::mosquitto::Mosquitto;
use crate::harness::pki::Pki;
use crate::harness::{votegate_command, write_file, RunningChild};

fn config(dir: &Path, terminals: &str, uplink: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "votegate.toml",
        &format!(
            r#"gateway-id = "gw-health"
site = "store-9"
data-dir = "{}"
time-zone = "UTC"
listen = "127.0.0.1:0"

{terminals}

{uplink}
"#,
            dir.join("journal").display()
        ),
    )
}

const SIMULATED: &str = r#"[[terminal]]
id = "entrance"
kind = "simulated"
presses-per-minute = 30
"#;

/// `votegate status` against the daemon: exit code and output.
fn status_command(addr: SocketAddr) -> (Option<i32>, String) {
    let output = votegate_command()
        .args(["status", "--url", &format!("http://{addr}")])
        .output()
        .expect("votegate status");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Polls `/healthz` until it answers 503; returns the body and when.
fn wait_unhealthy(addr: SocketAddr, limit: Duration) -> (String, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        let health = http::get(addr, "/healthz");
        if health.status == 503 {
            return (health.body, Instant::now());
        }
        assert_eq!(health.status, 200, "{}", health.body);
        assert!(
            Instant::now() < deadline,
            "still healthy after {limit:?}: {}",
            health.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(gateway: RunningChild) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    let (status, log) = gateway.wait(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{log}");
}

#[test]
fn a_rejected_broker_certificate_is_unhealthy_within_10_s() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::generate(dir.path());
    let broker = Mosquitto::start(dir.path(), &pki, "");
    let uplink = format!(
        "[uplink]\nhost = \"127.0.0.1\"\nport = {}\nca-file = \"{}\"\nclient-cert = \"{}\"\nclient-key = \"{}\"\nbackoff-cap = \"1s\"\n",
        broker.addr.port(),
        pki.other_ca.display(),
        pki.gateway_cert.display(),
        pki.gateway_key.display()
    );
    let (gateway, addr) = start_gateway(&config(dir.path(), SIMULATED, &uplink));
    let started = Instant::now();
    let (body, at) = wait_unhealthy(addr, Duration::from_secs(10));
    assert!(
        body.lines().any(|l| l.starts_with(
            "uplink: cannot deliver: the broker's certificate was rejected: it is not signed by a CA in uplink.ca-file (or, without ca-file, by one this system trusts)"
        )),
        "{body}"
    );
    let (code, report) = status_command(addr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "unhealthy after {:?}, status after {:?}",
        at - started,
        started.elapsed()
    );
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("UNHEALTHY"), "{report}");
    assert!(
        report.contains("certificate was rejected: it is not signed by a CA in uplink.ca-file"),
        "{report}"
    );

    let status = http::get(addr, "/api/v1/status").json();
    assert_eq!(status["healthy"], false);
    assert_eq!(status["health"][0]["reason"], "uplink-rejected", "{status}");
    assert_eq!(status["uplink"]["last_error_fault"], "configuration");
    let metrics = http::get(addr, "/metrics").body;
    for line in [
        "votegate_healthy 0",
        "votegate_unhealthy_reasons{reason=\"uplink_rejected\"} 1",
        "votegate_unhealthy_reasons{reason=\"uplink_undelivered\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} in\n{metrics}");
    }
    stop(gateway);
}

#[test]
fn a_broker_refusing_connections_is_unhealthy_only_after_unhealthy_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A port that is certainly closed: bind it, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let uplink = format!(
        "[uplink]\nhost = \"127.0.0.1\"\nport = {port}\ntls = false\nbackoff-cap = \"500ms\"\nunhealthy-after = \"5s\"\n"
    );
    let (gateway, addr) = start_gateway(&config(dir.path(), SIMULATED, &uplink));
    let started = Instant::now();
    // The gateway rides out a short outage: healthy, though the broker is unreachable.
    while started.elapsed() < Duration::from_millis(3500) {
        let health = http::get(addr, "/healthz");
        assert_eq!(
            (health.status, health.body.as_str()),
            (200, "ok\n"),
            "after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = http::get(addr, "/api/v1/status").json();
    assert_eq!(status["uplink"]["last_error_fault"], "network", "{status}");
    let (code, _) = status_command(addr);
    assert_eq!(code, Some(0));

    let (body, at) = wait_unhealthy(addr, Duration::from_secs(10));
    let after = at - started;
    assert!(after >= Duration::from_secs(4), "unhealthy after {after:?}");
    assert!(
        body.starts_with("uplink: nothing delivered for ")
            && body.contains(&format!("cannot connect to the broker at 127.0.0.1:{port}")),
        "{body}"
    );
    let (code, report) = status_command(addr);
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("nothing delivered for"), "{report}");
    stop(gateway);
}

#[test]
fn a_gpio_terminal_that_cannot_start_is_unhealthy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let terminals = format!(
        "{SIMULATED}\n[[terminal]]\nid = \"door\"\nkind = \"gpio\"\npins = [5, 6, 13, 19]\n"
    );
    let (gateway, addr) = start_gateway(&config(dir.path(), &terminals, ""));
    let (body, _) = wait_unhealthy(addr, Duration::from_secs(10));
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(
        body.starts_with(
            "terminal door: not started: GPIO is unavailable on this machine: it is not a Raspberry Pi"
        ),
        "{body}"
    );
    let status = http::get(addr, "/api/v1/status").json();
    assert_eq!(status["terminals"]["door"]["source"]["state"], "failed");
    assert_eq!(status["terminals"]["entrance"]["online"], true);
    let (code, report) = status_command(addr);
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("door: not started: GPIO is unavailable"),
        "{report}"
    );
    stop(gateway);
}

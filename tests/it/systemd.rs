//! The systemd unit and the daemon's side of the notify protocol.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{repo_root, votegate_command, write_file, RunningChild};

/// `key → values` of one section of a unit file (a key may repeat).
fn unit_section(section: &str) -> HashMap<String, Vec<String>> {
    let text =
        std::fs::read_to_string(repo_root().join("systemd/votegate.service")).expect("unit file");
    let mut current = String::new();
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_string();
        } else if current == section {
            let (key, value) = line.split_once('=').expect("key=value");
            keys.entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    keys
}

#[test]
fn the_unit_is_a_hardened_notify_service_with_a_watchdog() {
    let service = unit_section("Service");
    let one = |key: &str| {
        service
            .get(key)
            .and_then(|v| v.last())
            .cloned()
            .unwrap_or_else(|| panic!("[Service] lacks {key}="))
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("WatchdogSec"), "30s");
    let files: usize = one("LimitNOFILE").parse().expect("a number");
    assert!(
        files >= 4 * votegate::config::DEFAULT_MAX_CONNECTIONS,
        "LimitNOFILE={files} leaves too little room above display.max-connections"
    );
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("User"), "votegate");
    assert_eq!(one("StateDirectory"), "votegate");
    assert_eq!(one("ConfigurationDirectory"), "votegate");
    // The groups come from the user's memberships (postinst: dialout, and gpio where it exists):
    // SupplementaryGroups=gpio would fail every start on a system without a gpio group.
    assert!(
        !service.contains_key("SupplementaryGroups"),
        "SupplementaryGroups= fails the start when a group is missing"
    );
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/votegate run --config /etc/votegate/votegate.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(
        one("ExecStartPre"),
        "/usr/bin/votegate check --offline --config /etc/votegate/votegate.toml",
        "never the broker probe before starting"
    );
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictNamespaces", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("DevicePolicy", "closed"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert_eq!(one("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
    let filters = &service["SystemCallFilter"];
    assert!(
        filters.contains(&"@system-service".to_string())
            && filters.contains(&"adjtimex".to_string()),
        "{filters:?}"
    );
    let devices = &service["DeviceAllow"];
    for device in [
        "char-ttyUSB rw",
        "char-ttyACM rw",
        "char-ttyAMA rw",
        "char-ttyS rw",
        "char-ttySC rw",
        "char-gpiochip rw",
    ] {
        assert!(
            devices.contains(&device.to_string()),
            "serial/GPIO must stay reachable: {devices:?}"
        );
    }
    // ProtectClock would block adjtimex (the clock would look unsynchronised forever) and
    // ProcSubset=pid would hide /proc/sys/kernel/random/boot_id.
    assert!(!service.contains_key("ProtectClock") && !service.contains_key("ProcSubset"));
    assert_eq!(unit_section("Install")["WantedBy"], ["multi-user.target"]);
}

#[test]
fn systemd_rates_the_unit_at_most_2_5_exposed() {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo_root().join("systemd/votegate.service"))
        .output()
        .expect("systemd-analyze is missing: apt-get install systemd (scripts/test does)");
    let text = String::from_utf8_lossy(&output.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for votegate.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(exposure <= 2.5, "exposure {exposure}");
}

#[test]
fn the_daemon_notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let config = write_file(
        dir.path(),
        "votegate.toml",
        &format!(
            "gateway-id = \"gw-notify\"\nsite = \"s\"\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[terminal]]\nid = \"a\"\nkind = \"simulated\"\npresses-per-minute = 60\n",
            dir.path().join("journal").display()
        ),
    );
    let gateway = RunningChild::new(
        votegate_command()
            .args(["run", "--config", config.to_str().expect("utf-8")])
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "600000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate run"),
    );
    let mut buffer = [0u8; 512];
    let mut receive = || {
        let n = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    let ready = receive();
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    assert!(ready.contains("terminals online"), "{ready:?}");
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let message = receive();
        if message.starts_with("STATUS=") {
            continue; // the status line follows changes (the terminal coming online)
        }
        assert_eq!(message, "WATCHDOG=1");
        pings += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "watchdog pings every 0.3 s expected"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    let mut last = receive();
    while last == "WATCHDOG=1" || last.starts_with("STATUS=") {
        last = receive();
    }
    assert_eq!(last, "STOPPING=1");
    let (status, log) = gateway.wait(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{log}");
}

#[test]
fn the_offline_check_needs_neither_network_nor_hardware() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_file(
        dir.path(),
        "votegate.toml",
        &format!(
            "gateway-id = \"gw\"\nsite = \"s\"\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[[terminal]]\nid = \"a\"\nkind = \"serial\"\n\
             port = \"/dev/serial/by-id/unplugged\"\n\n[uplink]\nhost = \"broker.invalid\"\n",
            dir.path().join("journal").display()
        ),
    );
    let output = votegate_command()
        .args([
            "check",
            "--offline",
            "--config",
            config.to_str().expect("utf-8"),
        ])
        .output()
        .expect("check");
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{report}");
    let probes: Vec<&str> = report
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(probes[..3], ["config", "data-dir", "listen"], "{report}");
    assert!(
        !report
            .lines()
            .any(|l| l.contains(" serial ") || l.contains(" uplink ") || l.contains(" clock ")),
        "{report}"
    );
    assert!(report.ends_with("all 3 checks passed\n"), "{report}");
}

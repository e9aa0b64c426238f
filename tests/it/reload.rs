//! SIGHUP reloads the config without a restart, black box: a terminal added (and a port's
//! settings changed) while terminals press throughout, with every acknowledged vote counted
//! exactly once and the same process running; a broken file, or one that changes what cannot
//! change at runtime, is refused and logged while the gateway runs on; SIGUSR1/SIGUSR2 are
//! ignored; systemd hears RELOADING=1 … READY=1.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use votegate::journal::{Journal, Limits};

use crate::display::{start_gateway, start_gateway_with_env};
use crate::harness::http;
use crate::harness::pty::Line;
use crate::harness::{votegate_command, write_file, RunningChild};

fn signal(child: &RunningChild, signal: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.pid() as i32, signal) };
}

/// Waits for the `n`th stderr line containing `needle` (1-based).
fn wait_for_nth(child: &RunningChild, needle: &str, n: usize, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = child.stderr_so_far();
        if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(n - 1) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {n}. {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn simulator(line: &Line, terminal: &str, count: u64) -> RunningChild {
    RunningChild::new(
        votegate_command()
            .args([
                "simulate",
                "--serial",
                line.terminal_path.to_str().expect("utf-8"),
            ])
            .args(["--terminal", terminal, "--rate", "600"])
            .args(["--count", &count.to_string(), "--retransmit-ms", "200"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate simulate"),
    )
}

fn base_config(dir: &Path, entrance: &Path) -> String {
    format!(
        r#"gateway-id = "gw-reload"
site = "test-store"
data-dir = "{}"
time-zone = "UTC"
listen = "127.0.0.1:0"

[filter]
min-interval = "0s"

[[terminal]]
id = "entrance"
kind = "serial"
port = "{}"
"#,
        dir.join("journal").display(),
        entrance.display()
    )
}

#[test]
fn sighup_adds_a_terminal_without_losing_or_doubling_a_vote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let entrance = Line::new(&dir.path().join("ttyUSB-entrance"));
    let exit = Line::new(&dir.path().join("ttyUSB-exit"));
    let base = base_config(dir.path(), &entrance.gateway_path);
    let config = write_file(dir.path(), "votegate.toml", &base);
    let (gateway, addr) = start_gateway(&config);
    let pid = gateway.pid();
    let mut pressing = vec![simulator(&entrance, "entrance", 150)];
    std::thread::sleep(Duration::from_secs(2));

    // While entrance presses: add `exit`, and change entrance's port settings (its task
    // restarts mid-stream).
    write_file(
        dir.path(),
        "votegate.toml",
        &format!(
            "{base}\n[[serial-port]]\npath = \"{}\"\noffline-after = \"2m\"\n\n\
             [[terminal]]\nid = \"exit\"\nkind = \"serial\"\nport = \"{}\"\n",
            entrance.gateway_path.display(),
            exit.gateway_path.display()
        ),
    );
    signal(&gateway, libc::SIGHUP);
    let reloaded = wait_for_nth(&gateway, "config reloaded", 1, Duration::from_secs(10));
    assert!(
        reloaded.contains("stopped serial port") && reloaded.contains("started serial port"),
        "{reloaded}"
    );
    let status = http::get(addr, "/api/v1/status").json();
    assert!(status["terminals"]["exit"].is_object(), "{status}");
    assert_eq!(status["terminals"]["exit"]["kind"], "serial");
    pressing.push(simulator(&exit, "exit", 60));

    // The same file again changes nothing; entrance and exit press on.
    std::thread::sleep(Duration::from_secs(1));
    signal(&gateway, libc::SIGHUP);
    let again = wait_for_nth(&gateway, "config reloaded", 2, Duration::from_secs(10));
    assert!(again.ends_with("nothing changed"), "{again}");

    let deadline = Instant::now() + Duration::from_secs(60);
    while pressing.iter_mut().any(|s| !s.has_exited()) {
        assert!(Instant::now() < deadline, "the simulators did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(gateway.pid(), pid);
    let mut acknowledged: HashMap<(String, u64), u64> = HashMap::new();
    let mut per_terminal: HashMap<String, u64> = HashMap::new();
    for simulator in pressing {
        let (report, _) = simulator.kill();
        for line in report.lines() {
            let vote: serde_json::Value = serde_json::from_str(line).expect("json");
            let terminal = vote["terminal"].as_str().expect("terminal").to_string();
            let term_seq = vote["term_seq"].as_u64().expect("term_seq");
            assert!(
                acknowledged
                    .insert(
                        (terminal.clone(), term_seq),
                        vote["button"].as_u64().expect("button")
                    )
                    .is_none(),
                "{terminal} {term_seq} acknowledged twice"
            );
            *per_terminal.entry(terminal).or_default() += 1;
        }
    }
    assert_eq!(per_terminal.get("entrance"), Some(&150));
    assert_eq!(per_terminal.get("exit"), Some(&60));

    // The tallies count each acknowledged vote once (counted, outside hours or filtered: the
    // added terminal is judged with its own min-interval from the reload on).
    let tallies = http::get(addr, "/api/v1/tallies").json();
    for (terminal, acks) in &per_terminal {
        let windows = &tallies["terminals"][terminal.as_str()];
        let counted = windows["today"]["total"].as_u64().expect("total")
            + windows["today_outside_hours"]["total"]
                .as_u64()
                .expect("outside")
            + windows["filtered_today"].as_u64().expect("filtered");
        assert_eq!(counted, *acks, "{terminal}: {windows}");
    }
    let status = http::get(addr, "/api/v1/status").json();
    assert_eq!(status["journal"]["accepted"], 210, "{status}");

    signal(&gateway, libc::SIGTERM);
    let (code, log) = gateway.wait(Duration::from_secs(5));
    assert!(code.is_some_and(|c| c.success()), "{log}");
    let mut journal =
        Journal::open(&dir.path().join("journal"), Limits::default()).expect("journal");
    let stored = journal.read_after(0, usize::MAX).expect("read");
    let mut seen: HashMap<(String, u64), u64> = HashMap::new();
    for vote in &stored {
        let key = (vote.terminal.to_string(), vote.term_seq.expect("term_seq"));
        assert!(
            seen.insert(key.clone(), u64::from(vote.button.number()))
                .is_none(),
            "{key:?} stored twice"
        );
    }
    assert_eq!(
        seen, acknowledged,
        "the journal and the acknowledgements differ"
    );
    eprintln!(
        "210 votes acknowledged and counted once across two reloads; duplicates recognised: {}",
        status["journal"]["duplicates"]
    );
}

#[test]
fn a_broken_or_immovable_config_is_refused_and_the_gateway_runs_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let good = format!(
        "gateway-id = \"gw-reload\"\nsite = \"s\"\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[terminal]]\nid = \"entrance\"\nkind = \"simulated\"\npresses-per-minute = 60\n",
        dir.path().join("journal").display()
    );
    let config = write_file(dir.path(), "votegate.toml", &good);
    let (gateway, addr) = start_gateway_with_env(&config, &[("NOTIFY_SOCKET", &socket_path)]);
    let mut buffer = [0u8; 1024];
    let mut receive = || loop {
        let n = socket.recv(&mut buffer).expect("a notification");
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if !message.starts_with("STATUS=") {
            return message;
        }
    };
    assert!(receive().starts_with("READY=1"));

    // An unknown key: refused with file, line and key; still running on the old config.
    write_file(
        dir.path(),
        "votegate.toml",
        &format!("{good}colour = \"blue\"\n"),
    );
    signal(&gateway, libc::SIGHUP);
    let refused = wait_for_nth(&gateway, "reload refused", 1, Duration::from_secs(10));
    assert!(
        refused.contains("ERROR")
            && refused.contains(&format!(
                "{}, line 10: unknown key `terminal.colour`",
                config.display()
            )),
        "{refused}"
    );
    let reloading = receive();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    let usec: u64 = reloading
        .rsplit('=')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("MONOTONIC_USEC");
    assert!(usec > 0);
    assert!(receive().starts_with("READY=1\nSTATUS="));

    // A different gateway-id: refused as a whole, naming the key and both values.
    write_file(
        dir.path(),
        "votegate.toml",
        &good
            .replace("gw-reload", "gw-other")
            .replace("presses-per-minute = 60", "presses-per-minute = 6"),
    );
    signal(&gateway, libc::SIGHUP);
    let refused = wait_for_nth(&gateway, "reload refused", 2, Duration::from_secs(10));
    assert!(
        refused.contains(
            "`gateway-id` cannot change while votegate runs (running: \"gw-reload\", file: \"gw-other\")"
        ) && refused.contains("nothing applied"),
        "{refused}"
    );

    // SIGUSR1 and SIGUSR2 are no reason to stop.
    signal(&gateway, libc::SIGUSR1);
    signal(&gateway, libc::SIGUSR2);
    wait_for_nth(
        &gateway,
        "SIGUSR2 received: ignored",
        1,
        Duration::from_secs(5),
    );

    let health = http::get(addr, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let status = http::get(addr, "/api/v1/status").json();
    assert_eq!(status["gateway_id"], "gw-reload");
    assert!(!gateway.stderr_so_far().contains("config reloaded"));
    signal(&gateway, libc::SIGTERM);
    let (code, log) = gateway.wait(Duration::from_secs(5));
    assert!(code.is_some_and(|c| c.success()), "{log}");
}

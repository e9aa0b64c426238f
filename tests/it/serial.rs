//! Serial terminals end to end over real kernel pseudo-terminals: `votegate simulate` plays four
//! terminals (two point-to-point, two on one RS-485-style bus) against `votegate run`, while the
//! test injects garbage, unplugs an adapter and kills the gateway with SIGKILL. Every vote a
//! simulator saw acknowledged must be in the journal exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use votegate::journal::{Journal, Limits};

use crate::harness::pty::Line;
use crate::harness::{seed, votegate_command, write_file, RunningChild};

const VOTES_PER_SIMULATOR: u64 = 60;

fn gateway_config(data_dir: &Path, entrance: &Path, exit: &Path, bus: &Path) -> String {
    format!(
        r#"gateway-id = "gw-serial"
site = "test-store"
data-dir = "{}"
time-zone = "UTC"
log-level = "debug"
# Port 0: never the machine's own 8080 (the test failed whenever something else had it).
listen = "127.0.0.1:0"

[filter]
min-interval = "0s"

[[terminal]]
id = "entrance"
kind = "serial"
port = "{}"

[[terminal]]
id = "exit"
kind = "serial"
port = "{}"

[[serial-port]]
path = "{}"
mode = "bus"
poll-interval = "20ms"
reply-timeout = "40ms"

[[terminal]]
id = "gate-1"
kind = "serial"
port = "{}"
address = 1

[[terminal]]
id = "gate-2"
kind = "serial"
port = "{}"
address = 2
"#,
        data_dir.display(),
        entrance.display(),
        exit.display(),
        bus.display(),
        bus.display(),
        bus.display()
    )
}

fn start_gateway(config: &Path) -> RunningChild {
    RunningChild::new(
        votegate_command()
            .args(["run", "--config", config.to_str().expect("utf-8")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate run"),
    )
}

fn start_simulator(line: &Line, terminals: &[&str], rate: &str) -> RunningChild {
    let mut command = votegate_command();
    command.args([
        "simulate",
        "--serial",
        line.terminal_path.to_str().expect("utf-8"),
    ]);
    for terminal in terminals {
        command.args(["--terminal", terminal]);
    }
    command.args([
        "--rate",
        rate,
        "--count",
        &VOTES_PER_SIMULATOR.to_string(),
        "--retransmit-ms",
        "200",
    ]);
    RunningChild::new(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate simulate"),
    )
}

#[test]
fn every_acknowledged_vote_is_journaled_once_through_garbage_unplugging_and_sigkill() {
    let mut rng = fastrand::Rng::with_seed(seed("serial"));
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("journal");
    let lines = Arc::new([
        Line::new(&dir.path().join("ttyUSB-entrance")),
        Line::new(&dir.path().join("ttyUSB-exit")),
        Line::new(&dir.path().join("ttyRS485")),
    ]);
    let config = write_file(
        dir.path(),
        "votegate.toml",
        &gateway_config(
            &data_dir,
            &lines[0].gateway_path,
            &lines[1].gateway_path,
            &lines[2].gateway_path,
        ),
    );
    let mut gateway = start_gateway(&config);
    let mut simulators = vec![
        start_simulator(&lines[0], &["entrance"], "600"),
        start_simulator(&lines[1], &["exit"], "600"),
        start_simulator(&lines[2], &["gate-1@1", "gate-2@2"], "300"),
    ];

    // Garbage in both directions on every line, all along.
    let stop_noise = Arc::new(AtomicBool::new(false));
    let noise = {
        let (lines, stop) = (lines.clone(), stop_noise.clone());
        let mut rng = fastrand::Rng::with_seed(rng.u64(..));
        std::thread::spawn(move || {
            let mut injected = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(rng.u64(50..150)));
                let mut bytes: Vec<u8> = (0..rng.usize(1..24)).map(|_| rng.u8(..)).collect();
                if rng.bool() {
                    bytes.push(0); // end the garbage as a (bad) frame
                }
                lines[rng.usize(..lines.len())].inject(rng.bool(), bytes);
                injected += 1;
            }
            injected
        })
    };

    let mut gateway_logs = String::new();
    std::thread::sleep(Duration::from_millis(1500));
    lines[0].unplug();
    std::thread::sleep(Duration::from_millis(600));
    lines[0].replug();
    std::thread::sleep(Duration::from_millis(1000));
    let (_, log) = gateway.kill(); // SIGKILL, mid-stream
    gateway_logs.push_str(&log);
    std::thread::sleep(Duration::from_millis(400));
    gateway = start_gateway(&config);

    let deadline = Instant::now() + Duration::from_secs(90);
    while simulators.iter_mut().any(|s| !s.has_exited()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_noise.store(true, Ordering::Relaxed);
    let injections = noise.join().expect("noise thread");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    let (status, log) = gateway.wait(Duration::from_secs(5));
    gateway_logs.push_str(&log);
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway did not stop cleanly:\n{log}"
    );

    let mut acknowledged: HashMap<(String, u64), u8> = HashMap::new();
    for (i, simulator) in simulators.into_iter().enumerate() {
        let (report, stderr) = simulator.kill();
        for line in report.lines() {
            let vote: serde_json::Value =
                serde_json::from_str(line).expect("simulate prints JSON lines");
            let key = (
                vote["terminal"].as_str().expect("terminal").to_string(),
                vote["term_seq"].as_u64().expect("term_seq"),
            );
            let button = vote["button"].as_u64().expect("button") as u8;
            assert!(
                acknowledged.insert(key.clone(), button).is_none(),
                "{key:?} acknowledged twice"
            );
        }
        let want = VOTES_PER_SIMULATOR as usize * (i + 1);
        assert_eq!(
            acknowledged.len(),
            want,
            "simulator {i} did not finish:\n{stderr}\ngateway:\n{gateway_logs}"
        );
    }

    let mut journal = Journal::open(&data_dir, Limits::default()).expect("journal");
    let stored = journal.read_after(0, usize::MAX).expect("read");
    let mut seen: HashMap<(String, u64), u8> = HashMap::new();
    for vote in &stored {
        let key = (
            vote.terminal.to_string(),
            vote.term_seq.expect("serial votes have a term_seq"),
        );
        assert!(
            seen.insert(key.clone(), vote.button.number()).is_none(),
            "{key:?} stored twice"
        );
    }
    for (key, button) in &acknowledged {
        assert_eq!(
            seen.get(key),
            Some(button),
            "acknowledged vote {key:?} missing or changed"
        );
    }
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "the journal holds votes nobody pressed"
    );

    let discarded = gateway_logs.matches("discarded bytes").count();
    let lost = gateway_logs.matches("serial port lost").count();
    let stats: Vec<_> = Arc::try_unwrap(lines)
        .ok()
        .expect("lines")
        .into_iter()
        .map(Line::stop)
        .collect();
    eprintln!(
        "{} votes acknowledged once each; {injections} garbage injections, {discarded} discarded by the gateway, \
         {lost} port losses; lines: {stats:?}",
        acknowledged.len()
    );
    assert!(discarded > 0, "no garbage reached the gateway");
    assert!(lost >= 1, "the unplugged adapter was not noticed");
}

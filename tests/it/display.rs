//! The local HTTP API, black box: `votegate run` with one serial terminal whose presses are typed
//! into `votegate simulate --stdin`, so every count is known.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use votegate::clock::CLOCK_OVERRIDE_ENV;
use votegate::journal::{Journal, Limits};

use crate::harness::http::{self, EventStream};
use crate::harness::pty::Line;
use crate::harness::{votegate_command, write_file, RunningChild};

/// A gateway with one serial terminal `entrance` and a simulator to press its buttons.
pub struct Site {
    /// The temp folder (config, journal, line).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The gateway's clock override (`VOTEGATE_CLOCK_OVERRIDE`), synchronised and exact at
    /// first: see [`Site::set_clock_offset`].
    clock: PathBuf,
    /// The running gateway.
    pub gateway: Option<RunningChild>,
    /// Its HTTP address.
    pub addr: SocketAddr,
    simulator: RunningChild,
    _line: Line,
}

pub fn config_text(data_dir: &Path, port: &Path, max_screens: usize) -> String {
    format!(
        r#"gateway-id = "gw-display"
site = "test-store"
data-dir = "{}"
time-zone = "Europe/Berlin"
listen = "127.0.0.1:0"

[display]
title = "How was your visit today?"
max-screens = {max_screens}

[filter]
min-interval = "0s"

[[terminal]]
id = "entrance"
kind = "serial"
port = "{}"
"#,
        data_dir.display(),
        port.display()
    )
}

/// Starts `votegate run` and returns it with the address it listens on.
pub fn start_gateway(config: &Path) -> (RunningChild, SocketAddr) {
    start_gateway_with_env(config, &[])
}

/// [`start_gateway`] with extra environment variables.
pub fn start_gateway_with_env(config: &Path, env: &[(&str, &Path)]) -> (RunningChild, SocketAddr) {
    let mut command = votegate_command();
    for (key, value) in env {
        command.env(key, value);
    }
    let gateway = RunningChild::new(
        command
            .args(["run", "--config", config.to_str().expect("utf-8")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate run"),
    );
    let addr = crate::harness::http_addr(&gateway);
    (gateway, addr)
}

/// `votegate simulate` as terminal `terminal` on `path`, pressing the buttons written to its
/// stdin (retransmitting every 200 ms until acknowledged).
pub fn stdin_simulator(path: &Path, terminal: &str) -> RunningChild {
    RunningChild::new(
        votegate_command()
            .args(["simulate", "--serial", path.to_str().expect("utf-8")])
            .args(["--terminal", terminal, "--stdin", "--retransmit-ms", "200"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("votegate simulate"),
    )
}

impl Site {
    /// A running site.
    pub fn start(max_screens: usize) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let line = Line::new(&dir.path().join("ttyUSB-entrance"));
        let config = write_file(
            dir.path(),
            "votegate.toml",
            &config_text(&dir.path().join("journal"), &line.gateway_path, max_screens),
        );
        let clock = write_file(dir.path(), "clock", "synced=1 offset_ms=0");
        let (gateway, addr) = start_gateway_with_env(&config, &[(CLOCK_OVERRIDE_ENV, &clock)]);
        let simulator = stdin_simulator(&line.terminal_path, "entrance");
        Site {
            dir,
            config,
            clock,
            gateway: Some(gateway),
            addr,
            simulator,
            _line: line,
        }
    }

    /// Presses buttons on the terminal and waits until the site's total reaches `total`.
    pub fn press(&mut self, buttons: &[u8], total: u64) {
        let stdin = self.simulator.stdin().expect("piped stdin");
        for button in buttons {
            writeln!(stdin, "{button}").expect("press");
        }
        stdin.flush().expect("flush");
        self.wait_total(total);
    }

    /// Waits until today's site total is `total`.
    pub fn wait_total(&self, total: u64) {
        self.wait_tallies(&format!("today's total {total}"), |tallies| {
            tallies["site"]["today"]["total"] == total
        });
    }

    /// Waits until `/api/v1/tallies` satisfies `condition`, and returns it.
    pub fn wait_tallies(
        &self,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let tallies = http::get(self.addr, "/api/v1/tallies").json();
            if condition(&tallies) {
                return tallies;
            }
            assert!(
                Instant::now() < deadline,
                "never got {what}: {tallies}\ngateway's stderr:\n{}\nterminal's stderr:\n{}",
                self.gateway
                    .as_ref()
                    .map(RunningChild::stderr_so_far)
                    .unwrap_or_default(),
                self.simulator.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets the gateway's wall clock `offset_ms` from the system's (read at every reading).
    pub fn set_clock_offset(&self, offset_ms: i64) {
        std::fs::write(&self.clock, format!("synced=1 offset_ms={offset_ms}"))
            .expect("clock override");
    }

    /// Stops the gateway with SIGTERM; it must exit 0 within 5 s.
    pub fn stop_gateway(&mut self) -> String {
        let gateway = self.gateway.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
        let (status, log) = gateway.wait(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.success()),
            "gateway did not stop cleanly:\n{log}"
        );
        log
    }

    /// Starts the gateway again on the same config.
    pub fn restart_gateway(&mut self) {
        let clock = [(CLOCK_OVERRIDE_ENV, self.clock.as_path())];
        let (gateway, addr) = start_gateway_with_env(&self.config, &clock);
        self.gateway = Some(gateway);
        self.addr = addr;
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.kill();
        }
    }
}

#[test]
fn every_endpoint_answers_as_the_contract_says() {
    let mut site = Site::start(8);
    let addr = site.addr;

    let page = http::get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(page.body.contains("How was your visit today?"));

    let mut stream = EventStream::open(addr, "/api/v1/events", None);
    assert_eq!(stream.status, 200);
    let reset = stream.next().expect("first event");
    assert_eq!(reset.event, "reset");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&reset.data).expect("json")["site"]["today"]
            ["total"],
        0
    );

    site.press(&[4, 4, 1], 3);
    let votes: Vec<_> = (0..3).map(|_| stream.next().expect("vote event")).collect();
    let ids: Vec<u64> = votes
        .iter()
        .map(|e| e.id.as_deref().expect("id").parse().expect("seq"))
        .collect();
    assert!(votes.iter().all(|e| e.event == "vote"), "{votes:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let last: serde_json::Value = serde_json::from_str(&votes[2].data).expect("json");
    assert_eq!(last["vote"]["button"], 1);
    assert_eq!(last["vote"]["terminal"], "entrance");
    assert_eq!(last["tallies"]["site"]["today"]["total"], 3);

    // A screen that saw only the first vote gets exactly the two it missed, the tallies as they
    // are now (it may have missed a roll too), then live events.
    let mut again = EventStream::open(addr, "/api/v1/events", Some(&ids[0].to_string()));
    let replayed: Vec<String> = (0..2)
        .map(|_| again.next().expect("replay").id.expect("id"))
        .collect();
    assert_eq!(replayed, [ids[1].to_string(), ids[2].to_string()]);
    let now = again.next().expect("the tallies after the replay");
    assert_eq!((now.event.as_str(), now.id.as_deref()), ("tallies", None));
    let now: serde_json::Value = serde_json::from_str(&now.data).expect("json");
    assert_eq!(now["site"]["today"]["total"], 3);
    site.press(&[3], 4);
    let live = again.next().expect("live event");
    assert_eq!(live.event, "vote");
    assert!(live.id.expect("id").parse::<u64>().expect("seq") > ids[2]);

    let tallies = http::get(addr, "/api/v1/tallies");
    assert_eq!(tallies.status, 200);
    let tallies = tallies.json();
    let today = &tallies["terminals"]["entrance"]["today"];
    assert_eq!(
        (
            today["very_unhappy"].as_u64(),
            today["happy"].as_u64(),
            today["very_happy"].as_u64()
        ),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(today["total"], 4);
    assert!((today["positive_pct"].as_f64().expect("score") - 75.0).abs() < 1e-9);
    // Σ(button − 1) / (3 · counted) × 100 = (3 + 3 + 0 + 2) / 12 × 100
    assert!((today["happy_index"].as_f64().expect("score") - 800.0 / 12.0).abs() < 1e-9);
    assert_eq!(tallies["site"]["last_15m"]["total"], 4);
    assert_eq!(tallies["time_zone"], "Europe/Berlin");

    let status = http::get(addr, "/api/v1/status").json();
    assert_eq!(status["journal"]["depth"], 4);
    assert_eq!(status["journal"]["accepted"], 4);
    assert_eq!(status["terminals"]["entrance"]["online"], true);
    assert_eq!(status["terminals"]["entrance"]["firmware"], "sim-1.0");
    assert_eq!(status["uplink"]["state"], "not-configured");
    assert!(status["sources"]["frames"].as_u64().expect("frames") >= 5);

    let health = http::get(addr, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let metrics = http::get(addr, "/metrics");
    assert!(metrics
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    for line in [
        "votegate_votes_accepted_total 4",
        "votegate_journal_depth 4",
        "votegate_terminals_online 1",
        "votegate_votes_today{terminal=\"entrance\",button=\"4\"} 2",
        "votegate_screens_connected 2",
    ] {
        assert!(
            metrics.body.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            metrics.body
        );
    }

    let cors = http::request(
        addr,
        "GET",
        "/api/v1/tallies",
        &[("Origin", "http://screen.local:3000")],
    );
    assert_eq!(cors.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        http::request(addr, "POST", "/api/v1/tallies", &[]).status,
        405
    );
    assert_eq!(http::get(addr, "/api/v2/nothing").status, 404);
}

#[test]
fn todays_counts_survive_a_restart_and_the_uplink_deleting_every_vote() {
    let mut site = Site::start(8);
    site.press(&[3, 3, 2, 4], 4);
    let before = http::get(site.addr, "/api/v1/tallies").json();
    site.stop_gateway();

    // Everything was forwarded: the uplink deleted every vote.
    {
        let mut journal =
            Journal::open(&site.dir.path().join("journal"), Limits::default()).expect("journal");
        let last = journal.stats().next_seq - 1;
        assert_eq!(journal.ack_through(last), Ok(4));
        journal.sync().expect("sync");
        assert_eq!(journal.stats().depth, 0);
    }

    site.restart_gateway();
    let after = http::get(site.addr, "/api/v1/tallies").json();
    assert_eq!(after["site"]["today"], before["site"]["today"]);
    assert_eq!(
        after["terminals"]["entrance"]["last_60m"],
        before["terminals"]["entrance"]["last_60m"]
    );
    assert_eq!(
        http::get(site.addr, "/api/v1/status").json()["journal"]["depth"],
        0
    );
    // And it keeps counting.
    site.press(&[1], 5);
}

/// The counts of every hour of `list` (`hours` or `hours_last_week`), summed.
fn hours_total(list: &serde_json::Value) -> u64 {
    list.as_array()
        .map(|hours| {
            hours
                .iter()
                .flat_map(|hour| hour.as_array().cloned().unwrap_or_default())
                .filter_map(|count| count.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn hours_and_last_weeks_hours_survive_a_restart_and_the_uplink_deleting_every_vote() {
    const WEEK_MS: i64 = 7 * 86_400_000;
    let mut site = Site::start(8);
    // A week ago (the gateway's clock set back): two presses, "today" as the gateway sees it.
    site.set_clock_offset(-WEEK_MS);
    site.press(&[1, 2], 2);
    // Now: three more. The journal rolls last week's minutes up into quarter-hours.
    site.set_clock_offset(0);
    site.press(&[4, 4, 3], 3);
    let before = site.wait_tallies("last week's two presses", |tallies| {
        hours_total(&tallies["site"]["hours_last_week"]) == 2
    });
    assert_eq!(hours_total(&before["site"]["hours"]), 3, "{before}");
    assert_eq!(
        hours_total(&before["terminals"]["entrance"]["hours_last_week"]),
        2
    );
    site.stop_gateway();

    // Everything was forwarded: the uplink deleted every vote.
    {
        let mut journal =
            Journal::open(&site.dir.path().join("journal"), Limits::default()).expect("journal");
        let last = journal.stats().next_seq - 1;
        assert_eq!(journal.ack_through(last), Ok(5));
        journal.sync().expect("sync");
        assert_eq!(journal.stats().depth, 0);
    }

    site.restart_gateway();
    let after = http::get(site.addr, "/api/v1/tallies").json();
    assert_eq!(after["hour_axes"], before["hour_axes"]);
    let pairs = [
        ("site", &after["site"], &before["site"]),
        (
            "entrance",
            &after["terminals"]["entrance"],
            &before["terminals"]["entrance"],
        ),
    ];
    for (name, now, then) in pairs {
        assert_eq!(now["hours"], then["hours"], "{name}'s hours");
        assert_eq!(
            now["hours_last_week"], then["hours_last_week"],
            "{name}'s hours last week"
        );
    }
}

#[test]
fn screens_are_bounded_and_event_streams_end_on_shutdown() {
    let mut site = Site::start(2);
    let mut first = EventStream::open(site.addr, "/api/v1/events", None);
    let mut second = EventStream::open(site.addr, "/api/v1/events", None);
    assert_eq!(first.next().map(|e| e.event).as_deref(), Some("reset"));
    assert_eq!(second.next().map(|e| e.event).as_deref(), Some("reset"));
    let third = http::get(site.addr, "/api/v1/events");
    assert_eq!(third.status, 503);
    assert!(third.body.contains("max-screens = 2"), "{}", third.body);

    let stopping = Instant::now();
    site.stop_gateway();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    for (name, stream) in [("first", &mut first), ("second", &mut second)] {
        let events = stream
            .read_to_end()
            .unwrap_or_else(|err| panic!("the {name} stream must end with the daemon: {err}"));
        // Only a roll that changed a count sends `tallies`; none is expected, none is wrong.
        assert!(
            events.iter().all(|event| event.event == "tallies"),
            "{name}: {events:?}"
        );
    }
}

#[test]
fn a_last_event_id_ahead_of_the_gateway_gets_a_reset() {
    let mut site = Site::start(8);
    site.press(&[4, 2], 2);
    // A screen that followed another gateway (or this one before its data folder was wiped).
    let mut stream = EventStream::open(site.addr, "/api/v1/events", Some("90000"));
    assert_eq!(stream.status, 200);
    let first = stream.next().expect("a first event");
    assert_eq!(first.event, "reset", "{first:?}");
    let tallies: serde_json::Value = serde_json::from_str(&first.data).expect("json");
    assert_eq!(tallies["site"]["today"]["total"], 2);
    // From then on it follows this gateway's votes.
    site.press(&[3], 3);
    let vote = stream.next().expect("the vote");
    assert_eq!(vote.event, "vote");
    assert_eq!(vote.id.as_deref(), Some("3"));
}

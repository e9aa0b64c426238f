//! The soak: the whole gateway, black box, under the faults of a real site at once.
//!
//! Eight serial terminals (`votegate simulate` over kernel ptys: four point-to-point, four on one
//! RS-485-style bus), two GPIO terminals on the simulated header, a Mosquitto with mutual TLS
//! behind the fault proxy and a subscriber recording every batch. The journal lives on the
//! power-cut filesystem of the journal tests (FUSE: it forgets every write not made durable).
//! While the terminals press, the broker connection is cut every few seconds and black-holed for
//! long stretches, and the gateway is killed with SIGKILL at random moments and restarted; every
//! third kill is a power cut (unsynced pages lost) before the restart. From 55 % of the run to 65 %
//! (longer, up to 85 %, until a press has met it) the journal's disk is full: serial votes go unacknowledged and are sent again, GPIO presses
//! are lost, and the journal must count exactly those in its `dropped` counter. The gateway starts with an
//! unsynchronised clock 10 minutes slow, in an outage; its clock syncs (through the clock
//! override seam, `VOTEGATE_CLOCK_OVERRIDE`) before the outage ends, so the votes pressed
//! before must reach the cloud re-stamped with the right time. At the end every vote a
//! terminal saw acknowledged (a serial ack, a GPIO LED) must have reached the subscriber, no two
//! different votes may share an id, and today's tallies must equal the counted votes.
//!
//! `VOTEGATE_SOAK_SECS` sets the length of the fault phase (default 90: the short form that
//! `scripts/test` runs); `scripts/soak` runs the long form.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use votegate::uplink::payload::WireVote;

use crate::display::start_gateway_with_env;
use crate::harness::mosquitto::Mosquitto;
use crate::harness::pki::Pki;
use crate::harness::powercut_fs::PowerCutFs;
use crate::harness::proxy::{FaultProxy, Mode};
use crate::harness::pty::Line;
use crate::harness::subscriber::Subscriber;
use crate::harness::{http, seed, votegate_command, write_file, RunningChild};

const POINT_TERMINALS: [&str; 4] = ["entrance", "exit", "checkout-1", "checkout-2"];
const BUS_TERMINALS: [(&str, u8); 4] = [("gate-1", 1), ("gate-2", 2), ("gate-3", 3), ("gate-4", 4)];
/// `(terminal, a button pin, its LED pin)` of the GPIO terminals (pull-up, active low).
const GPIO_TERMINALS: [(&str, [u8; 4], u8); 2] = [
    ("door-a", [5, 6, 13, 19], 26),
    ("door-b", [17, 27, 22, 23], 24),
];

fn soak_duration() -> Duration {
    let secs = std::env::var("VOTEGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    Duration::from_secs(secs)
}

struct Site {
    /// The journal's disk; declared first so that it is unmounted before the folder goes.
    disk: PowerCutFs,
    dir: tempfile::TempDir,
    _broker: Mosquitto,
    proxy: FaultProxy,
    subscriber: Subscriber,
    point_lines: Vec<Line>,
    bus_line: Line,
    config: PathBuf,
}

impl Site {
    fn start() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let mountpoint = dir.path().join("disk");
        std::fs::create_dir_all(&mountpoint).expect("mountpoint");
        let disk = PowerCutFs::mount(&mountpoint).unwrap_or_else(|err| {
            panic!("cannot mount the power-cut filesystem (needs /dev/fuse; scripts/test installs fuse3): {err}")
        });
        let pki = Pki::generate(dir.path());
        let broker = Mosquitto::start(dir.path(), &pki, "");
        let proxy = FaultProxy::start(broker.addr);
        let subscriber = Subscriber::start(broker.addr, &pki, &broker.log);
        let point_lines: Vec<Line> = POINT_TERMINALS
            .iter()
            .map(|name| Line::new(&dir.path().join(format!("ttyUSB-{name}"))))
            .collect();
        let bus_line = Line::new(&dir.path().join("ttyRS485"));
        let mut text = format!(
            r#"gateway-id = "gw-soak"
site = "soak-store"
data-dir = "{data}"
time-zone = "UTC"
listen = "127.0.0.1:0"

[filter]
min-interval = "0s"

[gpio]
backend = "simulated"
socket = "{socket}"

[uplink]
host = "127.0.0.1"
port = {proxy_port}
ca-file = "{ca}"
client-cert = "{cert}"
client-key = "{key}"
keepalive = "5s"
backoff-cap = "2s"
max-batch-age = "200ms"
max-batch-votes = 50

[[serial-port]]
path = "{bus}"
mode = "bus"
poll-interval = "20ms"
reply-timeout = "40ms"
"#,
            data = mountpoint.join("journal").display(),
            socket = dir.path().join("gpio.sock").display(),
            proxy_port = proxy.addr.port(),
            ca = pki.ca.display(),
            cert = pki.gateway_cert.display(),
            key = pki.gateway_key.display(),
            bus = bus_line.gateway_path.display(),
        );
        for (name, line) in POINT_TERMINALS.iter().zip(&point_lines) {
            text.push_str(&format!(
                "\n[[terminal]]\nid = \"{name}\"\nkind = \"serial\"\nport = \"{}\"\n",
                line.gateway_path.display()
            ));
        }
        for (name, address) in BUS_TERMINALS {
            text.push_str(&format!(
                "\n[[terminal]]\nid = \"{name}\"\nkind = \"serial\"\nport = \"{}\"\naddress = {address}\n",
                bus_line.gateway_path.display()
            ));
        }
        for (name, pins, led) in GPIO_TERMINALS {
            text.push_str(&format!(
                "\n[[terminal]]\nid = \"{name}\"\nkind = \"gpio\"\npins = {pins:?}\nled-pin = {led}\nled-blink = \"1x50ms\"\n"
            ));
        }
        let config = write_file(dir.path(), "votegate.toml", &text);
        Site {
            disk,
            dir,
            _broker: broker,
            proxy,
            subscriber,
            point_lines,
            bus_line,
            config,
        }
    }

    fn simulator(&self, line: &Line, terminals: &[String], first_term_seq: u32) -> RunningChild {
        let mut command = votegate_command();
        command
            .args(["simulate", "--serial"])
            .arg(&line.terminal_path);
        for terminal in terminals {
            command.args(["--terminal", terminal]);
        }
        RunningChild::new(
            command
                .args(["--rate", "120", "--retransmit-ms", "300"])
                .args(["--first-term-seq", &first_term_seq.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("votegate simulate"),
        )
    }
}

/// Presses the GPIO terminals' buttons through the simulated header, reconnecting after every
/// restart, and counts the presses whose LED lit (acknowledged).
fn press_gpio(
    socket: PathBuf,
    seed: u64,
    stop: Arc<AtomicBool>,
    lit: Arc<Mutex<HashMap<String, u64>>>,
    disk_full: Arc<AtomicBool>,
    lost_while_full: Arc<AtomicU64>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = UnixStream::connect(&socket) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        let (sender, leds) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stream = stream;
        while !stop.load(Ordering::Relaxed) {
            let (terminal, pins, led) = GPIO_TERMINALS[rng.usize(..GPIO_TERMINALS.len())];
            let pin = pins[rng.usize(..4)];
            let full = disk_full.load(Ordering::SeqCst);
            let command = format!("edge {pin} 0\nwait 1\nedge {pin} 1\nwait 2\nedge {pin} 0\nwait 120\nedge {pin} 1\nwait 150\n");
            if stream.write_all(command.as_bytes()).is_err() {
                break;
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            let expected = format!("led {led} 1");
            let mut acknowledged = false;
            let mut disconnected = false;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match leds.recv_timeout(left) {
                    Ok(line) if line == expected => {
                        acknowledged = true;
                        break;
                    }
                    Ok(_) => {} // another LED going off, or `error` while the daemon restarts
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if acknowledged {
                *lit.lock()
                    .expect("lit")
                    .entry(terminal.to_string())
                    .or_default() += 1;
            } else if full && !disconnected {
                lost_while_full.fetch_add(1, Ordering::SeqCst);
            }
            if disconnected {
                break;
            }
            std::thread::sleep(Duration::from_millis(rng.u64(100..400)));
        }
    }
}

fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    std::panic::catch_unwind(|| http::get(addr, "/api/v1/status").json()).ok()
}

/// `(terminal, term_seq)` of every vote a simulator printed as acknowledged.
fn acknowledged(simulator_stdout: &str) -> Vec<(String, u64)> {
    simulator_stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|ack| {
            (
                ack["terminal"].as_str().expect("terminal").to_string(),
                ack["term_seq"].as_u64().expect("term_seq"),
            )
        })
        .collect()
}

#[test]
fn every_acknowledged_vote_reaches_the_cloud_and_the_screen_through_a_site_full_of_faults() {
    let mut rng = fastrand::Rng::with_seed(seed("soak"));
    let mut site = Site::start();
    // The Pi boots in an outage with an unsynchronised clock, 10 minutes slow.
    let clock_file = site.dir.path().join("clock");
    std::fs::write(&clock_file, "synced=0 offset_ms=-600000").expect("clock file");
    let clock_env = [(votegate::clock::CLOCK_OVERRIDE_ENV, clock_file.as_path())];
    site.proxy.set_mode(Mode::BlackHole);
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
    };
    let started_wall_ms = wall_ms();
    let (mut gateway, mut addr) = start_gateway_with_env(&site.config, &clock_env);
    let mut simulators: Vec<RunningChild> = site
        .point_lines
        .iter()
        .zip(POINT_TERMINALS)
        .map(|(line, name)| site.simulator(line, &[name.to_string()], 1))
        .collect();
    let bus: Vec<String> = BUS_TERMINALS
        .iter()
        .map(|(n, a)| format!("{n}@{a}"))
        .collect();
    simulators.push(site.simulator(&site.bus_line, &bus, 1));
    let stop_gpio = Arc::new(AtomicBool::new(false));
    let lit: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let disk_full = Arc::new(AtomicBool::new(false));
    let lost_while_full = Arc::new(AtomicU64::new(0));
    let presser = {
        let (socket, stop, lit) = (
            site.dir.path().join("gpio.sock"),
            stop_gpio.clone(),
            lit.clone(),
        );
        let (full, lost) = (disk_full.clone(), lost_while_full.clone());
        let seed = rng.u64(..);
        std::thread::spawn(move || press_gpio(socket, seed, stop, lit, full, lost))
    };

    // Faults: a cut every 2–5 s; a long black hole (an eighth of the run) every quarter; a
    // SIGKILL and restart every 8–20 s; every third kill is a power cut.
    let duration = soak_duration();
    let started = Instant::now();
    let outage = duration / 8;
    let mut next_cut = Instant::now() + Duration::from_millis(rng.u64(2_000..5_000));
    let mut next_kill = Instant::now() + Duration::from_millis(rng.u64(8_000..20_000));
    let mut next_outage = Instant::now() + duration / 4;
    // The first outage, from the start: the clock syncs at 15 % of the run, the link returns at 20 %.
    let mut outage_ends: Option<Instant> = Some(Instant::now() + duration / 5);
    let mut sync_at = Some(Instant::now() + duration * 3 / 20);
    let mut synced_wall_ms = u64::MAX;
    // The full disk: the presser is told 1 s before the disk fills and 1 s after it is freed, so
    // that every press it counts as lost met a full disk and every press that met one is counted.
    // Every write fails while it is full (a filesystem that allocates on overwrite, or a card that
    // stopped taking writes: on ext4, overwriting the journal's preallocated log still works and
    // the journal takes votes until a checkpoint must grow a file); the disk stays full past 65 %
    // of the run until a press has met it, at the latest until 85 %.
    let full_from = started + duration * 11 / 20;
    let mut full_until = started + duration * 13 / 20;
    let full_deadline = started + duration * 17 / 20;
    let (mut filled_at, mut full_secs) = (started, 0.0);
    let mut full_phase = 0; // 0 before, 1 flagged, 2 full, 3 freed, 4 done
    let kills = AtomicU64::new(0);
    let mut cuts = 0u64;
    let mut outages = 1u64; // the first one, from the start
    let mut power_cuts = 0u64;
    let mut pages_lost = 0usize;
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if sync_at.is_some_and(|at| now >= at) {
            std::fs::write(&clock_file, "synced=1 offset_ms=0").expect("clock file");
            synced_wall_ms = wall_ms();
            sync_at = None;
        }
        if now >= next_cut {
            site.proxy.cut();
            cuts += 1;
            next_cut = now + Duration::from_millis(rng.u64(2_000..5_000));
        }
        if outage_ends.is_none() && now >= next_outage {
            site.proxy.set_mode(Mode::BlackHole);
            outages += 1;
            outage_ends = Some(now + outage);
            next_outage = now + duration / 4;
        }
        if outage_ends.is_some_and(|end| now >= end) {
            site.proxy.set_mode(Mode::Pass);
            outage_ends = None;
        }
        let second = Duration::from_secs(1);
        if full_phase == 0 && now >= full_from {
            disk_full.store(true, Ordering::SeqCst);
            full_phase = 1;
        } else if full_phase == 1 && now >= full_from + second {
            site.disk.refuse_writes();
            filled_at = now;
            full_phase = 2;
        } else if full_phase == 2
            && now >= full_until
            && (lost_while_full.load(Ordering::SeqCst) > 0 || now >= full_deadline)
        {
            site.disk.free();
            full_secs = now.duration_since(filled_at).as_secs_f64();
            full_until = now;
            full_phase = 3;
        } else if full_phase == 3 && now >= full_until + second {
            disk_full.store(false, Ordering::SeqCst);
            full_phase = 4;
        }
        // No kill near the full disk, so that a press without its LED there met the full disk.
        if full_phase < 4 && now + Duration::from_secs(3) >= full_from {
            let freed = if full_phase <= 2 {
                full_until.max(now)
            } else {
                full_until
            };
            next_kill = next_kill.max(freed + Duration::from_secs(6));
        }
        if now >= next_kill {
            let _ = gateway.kill();
            if kills.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
                // A power cut: half of them lose every unsynced page, half keep a random part.
                let keep = if power_cuts % 2 == 0 { 0.0 } else { 0.5 };
                let report = site.disk.cut(keep, &mut rng).expect("power cut");
                pages_lost += report.pages_lost;
                power_cuts += 1;
            }
            (gateway, addr) = start_gateway_with_env(&site.config, &clock_env);
            next_kill = Instant::now() + Duration::from_millis(rng.u64(8_000..20_000));
        }
    }
    site.proxy.set_mode(Mode::Pass);

    // Quiesce: terminals stop, their last retransmissions are answered, the journal drains.
    stop_gpio.store(true, Ordering::Relaxed);
    presser.join().expect("GPIO presser");
    std::thread::sleep(Duration::from_secs(2));
    let mut serial_acks: Vec<(String, u64)> = Vec::new();
    for simulator in simulators {
        let (stdout, _) = simulator.kill();
        serial_acks.extend(acknowledged(&stdout));
    }
    let drained = Instant::now();
    loop {
        if status(addr).is_some_and(|s| s["journal"]["depth"] == 0) {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(120),
            "the journal did not drain:\n{}",
            gateway.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let tallies = http::get(addr, "/api/v1/tallies").json();
    let final_status = status(addr).expect("status");
    let log = gateway.kill().1;

    // Every vote received, by seq; a seq redelivered must carry the same vote.
    let mut by_seq: BTreeMap<u64, WireVote> = BTreeMap::new();
    let mut batches = 0;
    for batch in site.subscriber.batches() {
        batches += 1;
        assert_eq!(
            (batch.gateway_id.as_str(), batch.site.as_str()),
            ("gw-soak", "soak-store")
        );
        for vote in batch.votes {
            if let Some(earlier) = by_seq.get(&vote.seq) {
                assert_eq!(earlier, &vote, "two different votes share seq {}", vote.seq);
            }
            by_seq.insert(vote.seq, vote);
        }
    }
    // A retransmitted serial vote is one vote: one seq per (terminal, term_seq).
    let mut seq_of: HashMap<(String, u64), u64> = HashMap::new();
    for vote in by_seq.values() {
        if let Some(term_seq) = vote.term_seq {
            if let Some(other) = seq_of.insert((vote.terminal.clone(), term_seq), vote.seq) {
                panic!(
                    "{} term_seq {term_seq} stored twice, as seq {other} and {}",
                    vote.terminal, vote.seq
                );
            }
        }
    }
    // Every serial vote a terminal saw acknowledged reached the cloud.
    let unique_acks: HashSet<(String, u64)> = serial_acks.iter().cloned().collect();
    for ack in &unique_acks {
        assert!(
            seq_of.contains_key(ack),
            "acknowledged vote {ack:?} never reached the cloud\n{log}"
        );
    }
    // Every GPIO press whose LED lit reached the cloud (a press may also be stored without its
    // LED being seen, when the daemon died right after the fsync).
    let lit = lit.lock().expect("lit").clone();
    for (terminal, _, _) in GPIO_TERMINALS {
        let received = by_seq.values().filter(|v| v.terminal == terminal).count() as u64;
        let thanked = lit.get(terminal).copied().unwrap_or(0);
        assert!(thanked > 0, "no press on {terminal} was ever acknowledged");
        assert!(
            received >= thanked,
            "{terminal}: {thanked} LEDs lit but only {received} votes arrived"
        );
    }
    // The votes pressed before the clock synced were held by the outage and sent after it: each
    // carries clock_synced=false, restamped=true and a time from the real clock (not 10 min slow).
    let unsynced: Vec<&WireVote> = by_seq.values().filter(|v| !v.clock_synced).collect();
    assert!(
        !unsynced.is_empty(),
        "no vote was pressed before the clock synced"
    );
    for vote in &unsynced {
        assert!(
            vote.restamped,
            "seq {} was stamped unsynchronised and never re-stamped",
            vote.seq
        );
        assert!(
            vote.ts_ms + 1_000 >= started_wall_ms && vote.ts_ms <= synced_wall_ms + 1_000,
            "seq {} re-stamped to {} outside the unsynchronised phase [{started_wall_ms}, {synced_wall_ms}]",
            vote.seq,
            vote.ts_ms
        );
    }
    assert!(by_seq
        .values()
        .filter(|v| v.clock_synced)
        .all(|v| !v.restamped));
    // The presses lost to the full disk (GPIO: nobody sends them again) are exactly the ones the
    // journal counted as dropped; serial votes were held by their terminals and all arrived.
    assert_eq!(full_phase, 4, "the disk-full phase did not complete");
    let dropped = final_status["journal"]["dropped"]
        .as_u64()
        .expect("dropped");
    let presses_lost = lost_while_full.load(Ordering::SeqCst);
    assert_eq!(
        dropped, presses_lost,
        "the journal's dropped counter vs the GPIO presses lost while the disk was full"
    );
    assert!(presses_lost > 0, "no press met the full disk");
    // The screen counts exactly the counted votes (all of today's, min-interval 0).
    let counted = by_seq.values().filter(|v| !v.filtered).count() as u64;
    assert_eq!(
        tallies["site"]["today"]["total"].as_u64(),
        Some(counted),
        "{tallies:#}"
    );

    eprintln!(
        "soak {:?}: {} kills ({power_cuts} of them power cuts, {pages_lost} unsynced pages lost), {cuts} cuts, {outages} outages, {} votes re-stamped after the clock synced, the disk full for {full_secs:.0} s, {presses_lost} GPIO presses lost there, {dropped} counted as dropped; {} serial votes acknowledged, GPIO LEDs {:?}; \
         {} votes received in {batches} batches, {} on the screen",
        duration,
        kills.load(Ordering::Relaxed),
        unsynced.len(),
        unique_acks.len(),
        lit,
        by_seq.len(),
        counted
    );
    assert!(
        kills.load(Ordering::Relaxed) >= 2 && cuts >= 5 && outages >= 1,
        "the faults did not happen"
    );
}

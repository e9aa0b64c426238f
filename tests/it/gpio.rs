//! GPIO terminals end to end: `votegate run` with the simulated header (the only simulated part
//! of the suite: a real header needs a Pi). The test plays bouncy presses, a chord and a stuck
//! button through the header's control socket, watches the LED and the HTTP status, and finally
//! kills the gateway with SIGKILL the moment a LED lights: the vote it thanked for must be in
//! the journal.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use votegate::journal::{Journal, Limits};

use crate::display::start_gateway;
use crate::harness::{http, seed, write_file, RunningChild};

const DOOR_LED: u8 = 26;
const TILL_LED: u8 = 24;

fn config_text(dir: &Path) -> String {
    format!(
        r#"gateway-id = "gw-gpio"
site = "test-store"
data-dir = "{}"
time-zone = "UTC"
listen = "127.0.0.1:0"
log-level = "debug"

[filter]
min-interval = "0s"

[gpio]
backend = "simulated"
socket = "{}"

[[terminal]]
id = "door"
kind = "gpio"
pins = [5, 6, 13, 19]
debounce = "20ms"
led-pin = {DOOR_LED}
led-blink = "1x100ms"

[[terminal]]
id = "till"
kind = "gpio"
pins = [20, 21, 22, 23]
pull = "down"
debounce = "20ms"
stuck-after = "2s"
led-pin = {TILL_LED}
led-blink = "2x50ms"
"#,
        dir.join("journal").display(),
        dir.join("gpio.sock").display()
    )
}

/// The simulated header's control socket, with a thread collecting `led PIN 1` lines.
struct Panel {
    socket: UnixStream,
    lit: mpsc::Receiver<u8>,
    rng: fastrand::Rng,
}

impl Panel {
    fn connect(path: &Path, seed: u64) -> Panel {
        let deadline = Instant::now() + Duration::from_secs(10);
        let socket = loop {
            match UnixStream::connect(path) {
                Ok(socket) => break socket,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("cannot connect to {}: {err}", path.display()),
            }
        };
        let reader = socket.try_clone().expect("clone");
        let (sender, lit) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["led", pin, "1"] => {
                        let _ = sender.send(pin.parse().expect("pin"));
                    }
                    ["led", _, "0"] => {}
                    _ => panic!("unexpected line from the simulated header: {line}"),
                }
            }
        });
        Panel {
            socket,
            lit,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn send(&mut self, commands: &[String]) {
        let text: String = commands.iter().map(|c| format!("{c}\n")).collect();
        self.socket.write_all(text.as_bytes()).expect("write");
    }

    /// A bounce train of 3–7 edges ending at `level`, spaced 0.2–3 ms, like a real contact.
    fn bounce(&mut self, pin: u8, level: u8) -> Vec<String> {
        let flips = self.rng.usize(1..=3) * 2;
        let mut commands = Vec::new();
        for i in 0..flips {
            let raw = if i % 2 == 0 { level } else { 1 - level };
            commands.push(format!("edge {pin} {raw}"));
            commands.push(format!("wait {:.1}", self.rng.f64() * 2.8 + 0.2));
        }
        commands.push(format!("edge {pin} {level}"));
        commands
    }

    /// A bouncy press held 60–200 ms, then 100 ms idle before the panel takes the next
    /// command (a release shorter than the debounce would be a bounce, not two presses);
    /// `active` is the level a pressed button reads.
    fn press(&mut self, pin: u8, active: u8) {
        let mut commands = self.bounce(pin, active);
        commands.push(format!("wait {}", self.rng.u32(60..200)));
        commands.extend(self.bounce(pin, 1 - active));
        commands.push("wait 100".into());
        self.send(&commands);
    }

    fn expect_led(&self, pin: u8, gateway: &RunningChild) {
        match self.lit.recv_timeout(Duration::from_secs(5)) {
            Ok(lit) => assert_eq!(
                lit,
                pin,
                "the wrong LED lit; log:\n{}",
                gateway.stderr_so_far()
            ),
            Err(_) => panic!(
                "LED {pin} did not light within 5 s; log:\n{}",
                gateway.stderr_so_far()
            ),
        }
    }

    fn expect_no_led(&self, within: Duration) {
        if let Ok(pin) = self.lit.recv_timeout(within) {
            panic!("LED {pin} lit, but nothing should have counted");
        }
    }
}

fn status(addr: std::net::SocketAddr) -> serde_json::Value {
    http::get(addr, "/api/v1/status").json()
}

#[test]
fn simulated_pins_drive_the_daemon_into_the_journal_and_the_led_follows_the_durable_reply() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_file(dir.path(), "votegate.toml", &config_text(dir.path()));
    let (gateway, addr) = start_gateway(&config);
    for terminal in ["door", "till"] {
        let reading = format!("GPIO terminal reading terminal={terminal}");
        gateway
            .wait_for_stderr(&reading, Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "{terminal} never claimed its pins:\n{}",
                    gateway.stderr_so_far()
                )
            });
    }
    let mut panel = Panel::connect(&dir.path().join("gpio.sock"), seed("gpio"));

    // Bouncy presses on both terminals: each counts once and lights its own LED. The door's
    // buttons pull up (pressed = 0), the till's pull down (pressed = 1).
    let door_presses = [5, 13, 19, 19, 19, 6];
    for pin in door_presses {
        panel.press(pin, 0);
        panel.expect_led(DOOR_LED, &gateway);
    }
    for pin in [21, 21, 23] {
        panel.press(pin, 1);
        panel.expect_led(TILL_LED, &gateway);
        panel.expect_led(TILL_LED, &gateway); // 2x50ms: two flashes
    }

    // Two buttons together on the door: nothing counts, no LED.
    panel.send(&[
        "edge 6 0".into(),
        "wait 15".into(),
        "edge 13 0".into(),
        "wait 300".into(),
        "edge 6 1".into(),
        "edge 13 1".into(),
    ]);
    panel.expect_no_led(Duration::from_millis(600));

    // A till button held down: it counts once, then goes stuck after 2 s; the others still count.
    panel.send(&["edge 22 1".into()]);
    panel.expect_led(TILL_LED, &gateway);
    panel.expect_led(TILL_LED, &gateway);
    // Stuck 2 s after it went down (stamped up to 250 ms ahead by the simulated header).
    std::thread::sleep(Duration::from_millis(2_000));
    let deadline = Instant::now() + Duration::from_secs(3);
    let stuck = loop {
        let stuck = status(addr);
        if stuck["sources"]["gpio_stuck"] == 1 || Instant::now() > deadline {
            break stuck;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        stuck["terminals"]["till"]["stuck_buttons"],
        serde_json::json!([3]),
        "{stuck:#}"
    );
    assert_eq!(stuck["sources"]["gpio_stuck"], 1);
    assert_eq!(stuck["sources"]["gpio_chords"], 1);
    panel.press(20, 1);
    panel.expect_led(TILL_LED, &gateway);
    panel.expect_led(TILL_LED, &gateway);
    panel.send(&["edge 22 0".into()]);
    // The simulated header may stamp the release up to 250 ms ahead; it settles 20 ms later.
    let deadline = Instant::now() + Duration::from_secs(3);
    let released = loop {
        let released = status(addr);
        if released["terminals"]["till"].get("stuck_buttons").is_none() || Instant::now() > deadline
        {
            break released;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        released["terminals"]["till"].get("stuck_buttons").is_none(),
        "{released:#}"
    );
    let metrics = http::get(addr, "/metrics").body;
    assert!(metrics.contains("votegate_gpio_stuck_total 1"), "{metrics}");

    // The moment the LED thanks for a press, the vote is durable: SIGKILL right then.
    panel.press(13, 0);
    panel.expect_led(DOOR_LED, &gateway);
    let (_, log) = gateway.kill();

    let mut journal =
        Journal::open(&dir.path().join("journal"), Limits::default()).expect("journal");
    let stored = journal.read_after(0, usize::MAX).expect("read");
    let buttons = |terminal: &str| -> Vec<u8> {
        stored
            .iter()
            .filter(|vote| vote.terminal.as_str() == terminal)
            .map(|vote| vote.button.number())
            .collect()
    };
    assert_eq!(buttons("door"), [1, 3, 4, 4, 4, 2, 3], "log:\n{log}");
    assert_eq!(buttons("till"), [2, 2, 4, 3, 1], "log:\n{log}");
}

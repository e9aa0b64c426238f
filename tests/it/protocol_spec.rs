//! hardware/PROTOCOL.md is the wire specification: every example in it is decoded here and must
//! mean what its `meaning:` line says, and its `raw:` line must be the frame before COBS.

use votegate::sources::serial::frame::{self, Frame, Message, NackReason};

use crate::harness::repo_root;

fn bytes(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad hex byte {b:?}")))
        .collect()
}

/// The frame in the spec's `meaning:` syntax.
fn meaning(frame: &Frame) -> String {
    let what = match &frame.message {
        Message::Hello(hello) => format!(
            "hello hardware_id={} firmware={} protocol={}",
            hello
                .hardware_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            hello.firmware,
            hello.protocol
        ),
        Message::Vote(vote) => format!(
            "vote term_seq={} button={} age_ms={}",
            vote.term_seq, vote.button, vote.age_ms
        ),
        Message::Status(status) => format!(
            "status battery_mv={} flags={:#04x} queued={}",
            status.battery_mv, status.flags, status.queued
        ),
        Message::Welcome { protocol } => format!("welcome protocol={protocol}"),
        Message::Ack { term_seq } => format!("ack term_seq={term_seq}"),
        Message::Nack { term_seq, reason } => {
            let code = match reason {
                NackReason::InvalidButton => 1,
                NackReason::Other(code) => *code,
            };
            format!("nack term_seq={term_seq} reason={code}")
        }
        Message::Poll => "poll".to_string(),
        Message::Feedback {
            pattern,
            duration_ms,
        } => format!("feedback pattern={pattern} duration_ms={duration_ms}"),
    };
    format!("address={} {what}", frame.address)
}

#[test]
fn every_example_in_the_protocol_spec_decodes_to_what_it_says() {
    let spec = std::fs::read_to_string(repo_root().join("hardware/PROTOCOL.md")).expect("spec");
    let field = |line: &str, name: &str| {
        line.trim()
            .strip_prefix(name)
            .map(|rest| rest.trim().to_string())
    };
    let lines: Vec<&str> = spec.lines().collect();
    let mut checked = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(raw) = field(line, "raw:") else {
            continue;
        };
        let wire = lines
            .get(i + 1)
            .and_then(|l| field(l, "wire:"))
            .expect("wire: after raw:");
        let said = lines
            .get(i + 2)
            .and_then(|l| field(l, "meaning:"))
            .expect("meaning: after wire:");
        let wire = bytes(&wire);
        assert_eq!(
            wire.last(),
            Some(&0),
            "{said}: a frame ends with its delimiter"
        );
        let encoded = &wire[..wire.len() - 1];
        assert!(!encoded.contains(&0), "{said}: 0x00 inside a frame");
        assert_eq!(
            frame::cobs_decode(encoded),
            Some(bytes(&raw)),
            "{said}: raw is not the COBS-decoded wire"
        );
        let decoded = frame::decode(encoded).unwrap_or_else(|e| panic!("{said}: {e}"));
        assert_eq!(meaning(&decoded), said);
        assert_eq!(
            frame::encode(&decoded),
            wire,
            "{said}: encoding differs from the spec"
        );
        checked.push(decoded);
    }
    assert!(checked.len() >= 14, "only {} examples found", checked.len());
    // Every message type has an example.
    for name in [
        "hello", "vote", "status", "welcome", "ack", "nack", "poll", "feedback",
    ] {
        assert!(
            checked
                .iter()
                .any(|f| meaning(f).split_whitespace().nth(1) == Some(name)),
            "no example of {name}"
        );
    }
}

#[test]
fn the_specs_crc_and_varint_examples_hold() {
    assert_eq!(frame::crc16(b"123456789"), 0x29B1);
    assert_eq!(
        frame::cobs_encode(&[0x11, 0x22, 0x00, 0x33]),
        [0x03, 0x11, 0x22, 0x02, 0x33]
    );
    for (value, hex) in [
        (0u32, "00"),
        (127, "7f"),
        (128, "80 01"),
        (300, "ac 02"),
        (90_000, "90 bf 05"),
    ] {
        assert_eq!(
            postcard::to_stdvec(&value).expect("varint"),
            bytes(hex),
            "{value}"
        );
    }
}

// The behaviour rules of the spec, one test each: the terminal's (checked on the reference
// terminal `votegate simulate` plays, and on the spec's own algorithm) and the gateway's
// (checked black box, frame by frame, against `votegate run`).

/// § 4 term_seq: the saved-value rule as the spec now states it never reuses a number across
/// reboots; the rule it stated before ("make sure a value ≥ n is saved … continue from the saved
/// value") did.
#[test]
fn the_saved_term_seq_rule_never_reuses_a_number_across_reboots() {
    /// Returns the numbers used by `presses` presses with reboots before the given presses.
    fn run(
        reboots: &[usize],
        presses: usize,
        before_use: impl Fn(u32, &mut u32),
        after_reboot: impl Fn(u32) -> u32,
    ) -> Vec<u32> {
        let mut saved = 1u32; // a fresh terminal: nothing used, every number below 1
        let mut next = 1u32;
        let mut used = Vec::new();
        for press in 0..presses {
            if reboots.contains(&press) {
                next = after_reboot(saved);
            }
            before_use(next, &mut saved);
            used.push(next);
            next += 1;
        }
        used
    }
    let mut rng = fastrand::Rng::with_seed(crate::harness::seed("term_seq"));
    for _ in 0..200 {
        let presses = rng.usize(1..300);
        let reboots: Vec<usize> = (0..rng.usize(0..10))
            .map(|_| rng.usize(0..presses))
            .collect();
        // Now: every used number stays below `saved`; a reboot continues from `saved`.
        let used = run(
            &reboots,
            presses,
            |n, saved| {
                if n >= *saved {
                    *saved = n + 16;
                }
            },
            |saved| saved,
        );
        let distinct: std::collections::HashSet<_> = used.iter().collect();
        assert_eq!(
            distinct.len(),
            used.len(),
            "reused: {used:?} (reboots {reboots:?})"
        );
    }
    // Before: "before using number n, make sure a value ≥ n is saved (…); after a reboot
    // continue from the saved value". A terminal that keeps a value ≥ n saved may use n when it
    // equals the saved value, and after a reboot it continues from that very number.
    let old_rule = |n: u32, saved: &mut u32| {
        if *saved < n {
            *saved = n + 16;
        }
    };
    assert_eq!(run(&[1], 2, old_rule, |saved| saved), [1, 1]);
    let used = run(&[18], 19, old_rule, |saved| saved);
    assert_eq!(&used[16..], [17, 18, 18], "18 used twice");
}

/// § 5.1.1: hello every 1000 ms + 0–250 ms until welcomed (point-to-point).
#[tokio::test(start_paused = true)]
async fn a_terminal_repeats_its_hello_every_1000_to_1250_ms_until_welcomed() {
    use tokio::time::Instant;
    use votegate::sources::serial::emulator::{EmulatedTerminal, RETRANSMIT};
    let mut terminal = EmulatedTerminal::new("door", 0, 1, RETRANSMIT);
    let start = Instant::now();
    let mut hellos = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(frame) = terminal.due(Instant::now()) {
            assert!(matches!(frame.message, Message::Hello(_)), "{frame:?}");
            hellos.push(start.elapsed());
        }
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    for gap in hellos.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            (Duration::from_millis(1000)..=Duration::from_millis(1251)).contains(&gap),
            "{gap:?}"
        );
    }
    assert!(hellos.len() >= 15, "{hellos:?}");
    terminal.receive(&Message::Welcome { protocol: 1 });
    assert_eq!(terminal.due(Instant::now()), None, "no more hellos");
}

use std::path::Path;
use std::time::Duration;

use votegate::sources::serial::frame::{Hello, VoteMessage};

use crate::display::start_gateway;
use crate::harness::http;
use crate::harness::pty::Line;
use crate::harness::terminal::RawTerminal;
use crate::harness::{write_file, RunningChild};

const ANSWER: Duration = Duration::from_secs(2);

/// A gateway with one terminal `door` on a point-to-point line, or on a bus at address 5.
fn gateway(dir: &Path, line: &Line, bus: bool) -> (RunningChild, std::net::SocketAddr) {
    let port = line.gateway_path.display();
    let (port_table, address) = if bus {
        (
            // Polls 500 ms apart: a late answer arrives well before the next poll, whatever the
            // load on the test machine.
            format!(
                "[[serial-port]]\npath = \"{port}\"\nmode = \"bus\"\npoll-interval = \"500ms\"\n"
            ),
            "address = 5\n",
        )
    } else {
        (String::new(), "")
    };
    let config = write_file(
        dir,
        "votegate.toml",
        &format!(
            "gateway-id = \"gw-spec\"\nsite = \"s\"\ndata-dir = \"{}\"\ntime-zone = \"UTC\"\n\
             listen = \"127.0.0.1:0\"\nlog-level = \"debug\"\n\n[filter]\nmin-interval = \"0s\"\n\n\
             {port_table}\n[[terminal]]\nid = \"door\"\nkind = \"serial\"\nport = \"{port}\"\n{address}",
            dir.join("journal").display()
        ),
    );
    let (gateway, addr) = start_gateway(&config);
    // The port drops what it received before it was opened: talk only once it is.
    if gateway
        .wait_for_stderr("serial port open", Duration::from_secs(10))
        .is_none()
    {
        panic!("the port did not open:\n{}", gateway.stderr_so_far());
    }
    (gateway, addr)
}

fn vote(address: u8, term_seq: u32, button: u8) -> Frame {
    Frame {
        address,
        message: Message::Vote(VoteMessage {
            term_seq,
            button,
            age_ms: 0,
        }),
    }
}

fn hello(firmware: &str) -> Frame {
    Frame {
        address: 0,
        message: Message::Hello(Hello {
            hardware_id: [1, 2, 3, 4, 5, 6, 7, 8],
            firmware: firmware.to_string(),
            protocol: 1,
        }),
    }
}

fn status(addr: std::net::SocketAddr) -> serde_json::Value {
    http::get(addr, "/api/v1/status").json()
}

fn stop(gateway: RunningChild) -> String {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    let (code, log) = gateway.wait(Duration::from_secs(5));
    assert!(code.is_some_and(|c| c.success()), "{log}");
    log
}

/// § 5.1.8 and § 5.2.6: no hello needed, before the first vote or after a gateway restart.
#[test]
fn a_terminal_need_not_say_hello_again_after_the_gateway_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let line = Line::new(&dir.path().join("ttyUSB-door"));
    let (gateway_1, _) = gateway(dir.path(), &line, false);
    let mut terminal = RawTerminal::open(&line.terminal_path);
    terminal.send(&vote(0, 1, 4));
    assert_eq!(
        terminal.expect(ANSWER).message,
        Message::Ack { term_seq: 1 }
    );
    stop(gateway_1);
    let (gateway_2, addr) = gateway(dir.path(), &line, false);
    terminal.send(&vote(0, 2, 3));
    assert_eq!(
        terminal.expect(ANSWER).message,
        Message::Ack { term_seq: 2 }
    );
    assert_eq!(status(addr)["journal"]["depth"], 2);
    stop(gateway_2);
}

/// § 4 firmware: a 17-byte firmware string is cut to 16 bytes and welcomed.
#[test]
fn a_firmware_string_over_16_bytes_is_cut_and_the_terminal_welcomed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let line = Line::new(&dir.path().join("ttyUSB-door"));
    let (gateway, addr) = gateway(dir.path(), &line, false);
    let mut terminal = RawTerminal::open(&line.terminal_path);
    terminal.send(&hello("1.4.2-beta+build7")); // 17 bytes
    assert_eq!(
        terminal.expect(ANSWER).message,
        Message::Welcome { protocol: 1 }
    );
    assert_eq!(
        status(addr)["terminals"]["door"]["firmware"],
        "1.4.2-beta+build"
    );
    let log = stop(gateway);
    assert!(
        log.contains("firmware string is 17 bytes, over the protocol's 16"),
        "{log}"
    );
}

/// § 4 term_seq: 0 is accepted (and deduplicated) like any number; after 2³² − 1 comes 1; a
/// button outside 1–4 is nacked.
#[test]
fn term_seq_zero_and_wraparound_are_accepted_and_bad_buttons_nacked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let line = Line::new(&dir.path().join("ttyUSB-door"));
    let (gateway, addr) = gateway(dir.path(), &line, false);
    let mut terminal = RawTerminal::open(&line.terminal_path);
    for term_seq in [0, 0, u32::MAX, 1] {
        terminal.send(&vote(0, term_seq, 2));
        assert_eq!(terminal.expect(ANSWER).message, Message::Ack { term_seq });
    }
    terminal.send(&vote(0, 2, 7));
    assert_eq!(
        terminal.expect(ANSWER).message,
        Message::Nack {
            term_seq: 2,
            reason: NackReason::InvalidButton
        }
    );
    let journal = &status(addr)["journal"];
    assert_eq!(
        (&journal["accepted"], &journal["duplicates"]),
        (&serde_json::json!(3), &serde_json::json!(1)),
        "{journal}"
    );
    stop(gateway);
}

/// § 2 and § 5.4: discarded frames get no answer, are counted where the spec says, and logged.
#[test]
fn discarded_frames_are_counted_and_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let line = Line::new(&dir.path().join("ttyUSB-door"));
    let (gateway, addr) = gateway(dir.path(), &line, false);
    let mut terminal = RawTerminal::open(&line.terminal_path);
    let mut bad_crc = frame::encode(&vote(0, 9, 1));
    let last = bad_crc.len() - 2;
    bad_crc[last] ^= 0x01;
    terminal.send_raw(&bad_crc);
    // A u16 (battery_mv) written with 4 varint bytes: over its type.
    let raw = [1u8, 0, 0x03, 0x80, 0x80, 0x80, 0x01, 0, 0];
    let mut raw = raw.to_vec();
    let crc = frame::crc16(&raw);
    raw.extend(crc.to_be_bytes());
    let mut wire = frame::cobs_encode(&raw);
    wire.push(0);
    terminal.send_raw(&wire);
    // Valid frames that make no sense here: another address, a gateway's message.
    terminal.send(&vote(3, 10, 1));
    terminal.send(&Frame {
        address: 0,
        message: Message::Welcome { protocol: 1 },
    });
    terminal.expect_silence(Duration::from_millis(500));
    let sources = &status(addr)["sources"];
    assert_eq!(
        (&sources["frame_errors"], &sources["unexpected_frames"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "{sources}"
    );
    let metrics = http::get(addr, "/metrics").body;
    assert!(metrics
        .lines()
        .any(|l| l == "votegate_serial_unexpected_frames_total 2"));
    let log = stop(gateway);
    assert!(log.contains("discarded bytes: CRC mismatch"), "{log}");
    assert!(
        log.contains("discarded an unexpected frame from address 3"),
        "{log}"
    );
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("frame(s) discarded on this port"))
        .count();
    assert_eq!(warnings, 1, "one warning a minute at most:\n{log}");
}

/// § 5.3: an answer after the 30 ms reply timeout is discarded, even when it arrives before
/// the terminal's next poll; the terminal's answer to that poll is used.
#[test]
fn a_bus_answer_after_the_reply_timeout_is_discarded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let line = Line::new(&dir.path().join("ttyRS485"));
    let (gateway, addr) = gateway(dir.path(), &line, true);
    let mut terminal = RawTerminal::open(&line.terminal_path);
    let poll = terminal.expect(ANSWER);
    assert_eq!((poll.address, &poll.message), (5, &Message::Poll));
    std::thread::sleep(Duration::from_millis(60)); // twice the reply timeout
    terminal.send(&vote(5, 77, 1));
    // The next poll is answered at once, with another vote.
    let poll = terminal.expect(ANSWER);
    assert_eq!((poll.address, &poll.message), (5, &Message::Poll));
    terminal.send(&vote(5, 78, 4));
    let answer = terminal.expect(ANSWER);
    assert_eq!(answer.message, Message::Ack { term_seq: 78 });
    let status = status(addr);
    assert_eq!(
        status["journal"]["accepted"], 1,
        "the late vote 77 was stored"
    );
    assert_eq!(status["sources"]["unexpected_frames"], 1);
    let log = stop(gateway);
    assert!(
        log.contains("discarded a late answer from address 5"),
        "{log}"
    );
}

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

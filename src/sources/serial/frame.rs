//! The wire format of hardware/PROTOCOL.md: framing, integrity check and messages. Pure: bytes in,
//! frames out, no I/O, so the same code serves the gateway, `votegate simulate` and the fuzzer.
//!
//! A frame on the wire is `COBS(header ‖ payload ‖ crc) ‖ 0x00`, where the header is
//! `version (1) ‖ address (1) ‖ type (1)`, the payload is the message's postcard encoding and the
//! crc is CRC-16/CCITT-FALSE of header and payload, big-endian.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks (the first header byte).
pub const PROTOCOL_VERSION: u8 = 1;
/// The address of a point-to-point terminal (one terminal per serial port).
pub const POINT_ADDRESS: u8 = 0;
/// Highest bus address.
pub const MAX_BUS_ADDRESS: u8 = 247;
/// Longest frame before COBS: header, payload and CRC.
pub const MAX_FRAME_LEN: usize = 64;
/// Longest firmware version string in a hello; the gateway keeps the first 16 bytes of a
/// longer one.
pub const MAX_FIRMWARE_LEN: usize = 16;
/// Longest encoded frame (COBS adds one byte per 254, plus one), without the delimiter.
const MAX_ENCODED_LEN: usize = MAX_FRAME_LEN + MAX_FRAME_LEN / 254 + 1;
const HEADER_LEN: usize = 3;
const CRC_LEN: usize = 2;

/// `flags` bit of a status: the case was opened or the terminal moved.
pub const FLAG_TAMPER: u8 = 0x01;
/// `flags` bit of a status: a button reads pressed for longer than the terminal's stuck limit.
pub const FLAG_BUTTON_STUCK: u8 = 0x02;
/// `flags` bit of a status: the battery is low.
pub const FLAG_LOW_BATTERY: u8 = 0x04;
/// `flags` bit of a status: the terminal's vote queue overflowed and it lost votes.
pub const FLAG_QUEUE_OVERFLOW: u8 = 0x08;

/// Message type codes (the third header byte).
mod code {
    pub const HELLO: u8 = 0x01;
    pub const VOTE: u8 = 0x02;
    pub const STATUS: u8 = 0x03;
    pub const WELCOME: u8 = 0x81;
    pub const ACK: u8 = 0x82;
    pub const NACK: u8 = 0x83;
    pub const POLL: u8 = 0x84;
    pub const FEEDBACK: u8 = 0x85;
}

/// Terminal → gateway, first message after power-up; repeated until a `Welcome` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// A unique id burnt into the terminal (e.g. the MCU's serial number), 8 raw bytes.
    pub hardware_id: [u8; 8],
    /// Firmware version, free text of at most 16 bytes, e.g. `1.4.2`.
    pub firmware: String,
    /// Highest protocol version the terminal speaks.
    pub protocol: u8,
}

/// Terminal → gateway: one button press, repeated until an `Ack` or `Nack` answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteMessage {
    /// The terminal's own number for this vote: increases by one per press and is never reused,
    /// also across terminal reboots (kept in flash).
    pub term_seq: u32,
    /// 1 = very unhappy, 2 = unhappy, 3 = happy, 4 = very happy.
    pub button: u8,
    /// How long ago the button was pressed, in ms (0 for a vote sent at once).
    pub age_ms: u32,
}

/// Terminal → gateway: health, every 60 s in point mode, or as the answer to a poll with nothing
/// else to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// Battery voltage in mV; 0 when mains-powered or unknown.
    pub battery_mv: u16,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Votes waiting in the terminal's queue.
    pub queued: u16,
}

/// Why the gateway refused a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackReason {
    /// The button number is not 1 to 4.
    InvalidButton,
    /// A reason code this build does not know.
    Other(u8),
}

impl NackReason {
    fn code(self) -> u8 {
        match self {
            NackReason::InvalidButton => 1,
            NackReason::Other(code) => code,
        }
    }

    fn from_code(code: u8) -> NackReason {
        match code {
            1 => NackReason::InvalidButton,
            other => NackReason::Other(other),
        }
    }
}

/// Every message of the protocol, both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Terminal → gateway (0x01).
    Hello(Hello),
    /// Terminal → gateway (0x02).
    Vote(VoteMessage),
    /// Terminal → gateway (0x03).
    Status(StatusMessage),
    /// Gateway → terminal (0x81): answers a hello.
    Welcome {
        /// The protocol version the gateway will speak.
        protocol: u8,
    },
    /// Gateway → terminal (0x82): the vote is durable at the gateway; forget it.
    Ack {
        /// The vote's term_seq.
        term_seq: u32,
    },
    /// Gateway → terminal (0x83): the vote is refused for good; forget it.
    Nack {
        /// The vote's term_seq.
        term_seq: u32,
        /// Why.
        reason: NackReason,
    },
    /// Gateway → terminal (0x84), bus mode: the addressed terminal may send one frame now.
    Poll,
    /// Gateway → terminal (0x85): show a light pattern.
    Feedback {
        /// 0 = off, 1 = thank you, 2 = identify (installer), 3 = fault.
        pattern: u8,
        /// How long, in ms.
        duration_ms: u16,
    },
}

impl Message {
    /// Whether terminals send this message (as opposed to the gateway).
    pub fn from_terminal(&self) -> bool {
        matches!(
            self,
            Message::Hello(_) | Message::Vote(_) | Message::Status(_)
        )
    }

    fn code(&self) -> u8 {
        match self {
            Message::Hello(_) => code::HELLO,
            Message::Vote(_) => code::VOTE,
            Message::Status(_) => code::STATUS,
            Message::Welcome { .. } => code::WELCOME,
            Message::Ack { .. } => code::ACK,
            Message::Nack { .. } => code::NACK,
            Message::Poll => code::POLL,
            Message::Feedback { .. } => code::FEEDBACK,
        }
    }

    fn payload(&self) -> Vec<u8> {
        let encoded = match self {
            Message::Hello(hello) => postcard::to_stdvec(hello),
            Message::Vote(vote) => postcard::to_stdvec(vote),
            Message::Status(status) => postcard::to_stdvec(status),
            Message::Welcome { protocol } => postcard::to_stdvec(protocol),
            Message::Ack { term_seq } => postcard::to_stdvec(term_seq),
            Message::Nack { term_seq, reason } => postcard::to_stdvec(&(term_seq, reason.code())),
            Message::Poll => Ok(Vec::new()),
            Message::Feedback {
                pattern,
                duration_ms,
            } => postcard::to_stdvec(&(pattern, duration_ms)),
        };
        // Plain integers, byte arrays and strings always serialise.
        encoded.unwrap_or_default()
    }

    fn decode(code: u8, payload: &[u8]) -> Result<Message, FrameError> {
        let message = match code {
            // A firmware string over its 16 bytes still decodes (the frame's 64 bytes bound it):
            // the gateway keeps its first 16 bytes and welcomes the terminal (PROTOCOL.md § 4).
            code::HELLO => Message::Hello(exact(payload)?),
            code::VOTE => Message::Vote(exact(payload)?),
            code::STATUS => Message::Status(exact(payload)?),
            code::WELCOME => Message::Welcome {
                protocol: exact(payload)?,
            },
            code::ACK => Message::Ack {
                term_seq: exact(payload)?,
            },
            code::NACK => {
                let (term_seq, reason): (u32, u8) = exact(payload)?;
                Message::Nack {
                    term_seq,
                    reason: NackReason::from_code(reason),
                }
            }
            code::POLL => {
                if !payload.is_empty() {
                    return Err(FrameError::Payload("poll carries no payload".into()));
                }
                Message::Poll
            }
            code::FEEDBACK => {
                let (pattern, duration_ms) = exact(payload)?;
                Message::Feedback {
                    pattern,
                    duration_ms,
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        Ok(message)
    }
}

/// Decodes a postcard payload that must be consumed entirely.
fn exact<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    let (value, rest) =
        postcard::take_from_bytes(payload).map_err(|err| FrameError::Payload(err.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Payload(format!(
            "{} bytes after the payload",
            rest.len()
        )));
    }
    Ok(value)
}

/// One frame: who it is for (gateway → terminal) or from (terminal → gateway), and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// 0 point-to-point, 1–247 on a bus.
    pub address: u8,
    /// The message.
    pub message: Message,
}

/// Why received bytes were not a frame. Each is counted; the decoder resynchronises at the next
/// 0x00.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More than a maximal frame's bytes arrived without a delimiter (noise, wrong baud rate).
    #[error("no frame delimiter within {MAX_ENCODED_LEN} bytes")]
    TooLong,
    /// The bytes are not valid COBS.
    #[error("invalid COBS encoding")]
    Cobs,
    /// Shorter than a header and a CRC.
    #[error("frame of {0} bytes is too short")]
    TooShort(usize),
    /// The CRC does not match (corrupted on the line).
    #[error("CRC mismatch: frame says {found:#06x}, content gives {computed:#06x}")]
    Crc {
        /// The CRC in the frame.
        found: u16,
        /// The CRC of the received content.
        computed: u16,
    },
    /// A protocol version this build does not speak.
    #[error("protocol version {0} is not supported (this gateway speaks version 1)")]
    Version(u8),
    /// An unknown message type code.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The payload does not decode as the message type says.
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// Encodes a frame for the wire, delimiter included.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut raw = vec![PROTOCOL_VERSION, frame.address, frame.message.code()];
    raw.extend(frame.message.payload());
    let crc = crc16(&raw);
    raw.extend(crc.to_be_bytes());
    let mut wire = cobs_encode(&raw);
    wire.push(0);
    wire
}

/// Decodes one frame's bytes (between delimiters, without them).
pub fn decode(encoded: &[u8]) -> Result<Frame, FrameError> {
    if encoded.len() > MAX_ENCODED_LEN {
        return Err(FrameError::TooLong);
    }
    let raw = cobs_decode(encoded).ok_or(FrameError::Cobs)?;
    if raw.len() < HEADER_LEN + CRC_LEN {
        return Err(FrameError::TooShort(raw.len()));
    }
    let (content, crc) = raw.split_at(raw.len() - CRC_LEN);
    let found = u16::from_be_bytes([crc[0], crc[1]]);
    let computed = crc16(content);
    if found != computed {
        return Err(FrameError::Crc { found, computed });
    }
    let (version, address, code) = (content[0], content[1], content[2]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    Ok(Frame {
        address,
        message: Message::decode(code, &content[HEADER_LEN..])?,
    })
}

/// Splits a byte stream into frames. Feed it whatever the port returns; it keeps partial frames
/// between calls, skips empty frames (a lone 0x00 is a legal resync) and turns everything else
/// that is not a frame into one [`FrameError`] per delimiter.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Vec<u8>,
    overflowed: bool,
}

impl Decoder {
    /// A decoder with nothing pending.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Feeds bytes; appends each complete frame (or error) to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<Frame, FrameError>>) {
        for &byte in bytes {
            if byte != 0 {
                if self.pending.len() < MAX_ENCODED_LEN {
                    self.pending.push(byte);
                } else {
                    self.overflowed = true;
                }
                continue;
            }
            if self.overflowed {
                out.push(Err(FrameError::TooLong));
            } else if !self.pending.is_empty() {
                out.push(decode(&self.pending));
            }
            self.pending.clear();
            self.overflowed = false;
        }
    }

    /// Bytes waiting for a delimiter.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// CRC-16/CCITT-FALSE: polynomial 0x1021, initial 0xFFFF, no reflection, no final XOR.
/// Check value: `crc16(b"123456789") == 0x29B1`.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Consistent Overhead Byte Stuffing: the output has no 0x00.
pub fn cobs_encode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 254 + 2);
    let mut code_index = 0;
    out.push(0); // placeholder for the first code byte
    let mut code: u8 = 1;
    for &byte in raw {
        if byte == 0 {
            out[code_index] = code;
            code_index = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(byte);
            code += 1;
            if code == 0xFF {
                out[code_index] = code;
                code_index = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_index] = code;
    out
}

/// Reverses [`cobs_encode`]; `None` if the input is not valid COBS.
pub fn cobs_decode(encoded: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut index = 0;
    while index < encoded.len() {
        let code = encoded[index];
        if code == 0 {
            return None;
        }
        let block_end = index + usize::from(code);
        if block_end > encoded.len() {
            return None;
        }
        let block = &encoded[index + 1..block_end];
        if block.contains(&0) {
            return None;
        }
        out.extend_from_slice(block);
        index = block_end;
        if code != 0xFF && index < encoded.len() {
            out.push(0);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn crc_matches_the_published_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn cobs_matches_the_papers_examples() {
        assert_eq!(cobs_encode(&[0x00]), [0x01, 0x01]);
        assert_eq!(cobs_encode(&[0x00, 0x00]), [0x01, 0x01, 0x01]);
        assert_eq!(
            cobs_encode(&[0x11, 0x22, 0x00, 0x33]),
            [0x03, 0x11, 0x22, 0x02, 0x33]
        );
        assert_eq!(
            cobs_encode(&[0x11, 0x00, 0x00, 0x00]),
            [0x02, 0x11, 0x01, 0x01, 0x01]
        );
        let run: Vec<u8> = (1..=254).collect();
        let encoded = cobs_encode(&run);
        assert_eq!(encoded[0], 0xFF);
        assert_eq!(encoded.len(), 256);
        assert_eq!(cobs_decode(&encoded), Some(run));
    }

    #[test]
    fn a_vote_frame_has_the_documented_bytes() {
        let frame = Frame {
            address: 0,
            message: Message::Vote(VoteMessage {
                term_seq: 300,
                button: 4,
                age_ms: 0,
            }),
        };
        // raw: 01 00 02 | ac 02 04 00 | crc; see hardware/PROTOCOL.md
        let raw = [0x01, 0x00, 0x02, 0xac, 0x02, 0x04, 0x00];
        let crc = crc16(&raw);
        let mut expected = cobs_encode(&[&raw[..], &crc.to_be_bytes()].concat());
        expected.push(0);
        assert_eq!(hex(&encode(&frame)), hex(&expected));
        assert_eq!(decode(&expected[..expected.len() - 1]), Ok(frame));
    }

    #[test]
    fn the_decoder_skips_garbage_and_resyncs() {
        let vote = Frame {
            address: 0,
            message: Message::Vote(VoteMessage {
                term_seq: 7,
                button: 2,
                age_ms: 1500,
            }),
        };
        let mut stream = vec![0x13, 0x37, 0x00]; // noise, then a delimiter
        stream.push(0x00); // an empty frame: a legal resync
        stream.extend(encode(&vote));
        let mut corrupted = encode(&vote);
        corrupted[3] ^= 0x40; // a flipped bit on the line
        stream.extend(&corrupted);
        stream.extend(vec![0x55; 200]); // a long run without delimiter
        stream.push(0);
        stream.extend(encode(&vote));
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        // Byte by byte, as a slow port would deliver it.
        for chunk in stream.chunks(1) {
            decoder.feed(chunk, &mut out);
        }
        assert_eq!(out.len(), 5, "{out:?}");
        assert!(out[0].is_err());
        assert_eq!(out[1], Ok(vote.clone()));
        assert!(matches!(
            out[2],
            Err(FrameError::Crc { .. }) | Err(FrameError::Cobs)
        ));
        assert_eq!(out[3], Err(FrameError::TooLong));
        assert_eq!(out[4], Ok(vote));
        assert_eq!(decoder.pending_len(), 0);
    }

    #[test]
    fn wrong_version_unknown_type_and_trailing_bytes_are_errors() {
        let wire = |raw: &[u8]| {
            let crc = crc16(raw);
            cobs_encode(&[raw, &crc.to_be_bytes()].concat())
        };
        assert_eq!(
            decode(&wire(&[2, 0, 0x02, 1, 1, 0])),
            Err(FrameError::Version(2))
        );
        assert_eq!(
            decode(&wire(&[1, 0, 0x42])),
            Err(FrameError::UnknownType(0x42))
        );
        assert!(matches!(
            decode(&wire(&[1, 0, 0x02, 1, 1, 0, 9])),
            Err(FrameError::Payload(_))
        ));
        assert!(matches!(
            decode(&wire(&[1, 0, 0x84, 5])),
            Err(FrameError::Payload(_))
        ));
        assert_eq!(decode(&wire(&[1, 0])), Err(FrameError::TooShort(4)));
    }

    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<[u8; 8]>(), "[a-z0-9.+-]{0,16}", any::<u8>()).prop_map(
                |(hardware_id, firmware, protocol)| {
                    Message::Hello(Hello {
                        hardware_id,
                        firmware,
                        protocol,
                    })
                }
            ),
            (any::<u32>(), any::<u8>(), any::<u32>()).prop_map(|(term_seq, button, age_ms)| {
                Message::Vote(VoteMessage {
                    term_seq,
                    button,
                    age_ms,
                })
            }),
            (any::<u16>(), any::<u8>(), any::<u16>()).prop_map(|(battery_mv, flags, queued)| {
                Message::Status(StatusMessage {
                    battery_mv,
                    flags,
                    queued,
                })
            }),
            any::<u8>().prop_map(|protocol| Message::Welcome { protocol }),
            any::<u32>().prop_map(|term_seq| Message::Ack { term_seq }),
            (any::<u32>(), any::<u8>()).prop_map(|(term_seq, reason)| Message::Nack {
                term_seq,
                reason: NackReason::from_code(reason),
            }),
            Just(Message::Poll),
            (any::<u8>(), any::<u16>()).prop_map(|(pattern, duration_ms)| Message::Feedback {
                pattern,
                duration_ms
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips_through_the_wire(address in any::<u8>(), message in any_message()) {
            let frame = Frame { address, message };
            let wire = encode(&frame);
            prop_assert!(wire.len() <= MAX_ENCODED_LEN + 1);
            prop_assert_eq!(wire.iter().filter(|b| **b == 0).count(), 1);
            let mut out = Vec::new();
            Decoder::new().feed(&wire, &mut out);
            prop_assert_eq!(out, vec![Ok(frame)]);
        }

        #[test]
        fn cobs_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
            let encoded = cobs_encode(&raw);
            prop_assert!(!encoded.contains(&0));
            prop_assert_eq!(cobs_decode(&encoded), Some(raw));
        }

        #[test]
        fn the_decoder_never_panics_and_recovers(noise in proptest::collection::vec(any::<u8>(), 0..300)) {
            let frame = Frame { address: 3, message: Message::Ack { term_seq: 99 } };
            let mut decoder = Decoder::new();
            let mut out = Vec::new();
            decoder.feed(&noise, &mut out);
            out.clear();
            // After one delimiter any garbage is flushed and the next frame decodes.
            decoder.feed(&[0], &mut out);
            out.clear();
            decoder.feed(&encode(&frame), &mut out);
            prop_assert_eq!(out, vec![Ok(frame)]);
        }
    }
}

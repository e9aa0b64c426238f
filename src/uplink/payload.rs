//! The batch payload cloud ingest receives on `{prefix}/votes` (README § MQTT payload describes it
//! byte by byte). One schema, two encodings: postcard (compact, the default) and JSON. Pure.

use serde::{Deserialize, Serialize};

use crate::clock::{restamp, ClockReading};
use crate::model::Vote;

/// The payload format version: the first field of every batch. Version 2 added `dropped`;
/// version 1 batches (without it) still decode.
pub const FORMAT_VERSION: u8 = 2;
const FORMAT_V1: u8 = 1;

/// Seqs the gateway dropped to make room (`drop-oldest`): they will never arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedRange {
    /// The first dropped seq.
    pub first_seq: u64,
    /// The last dropped seq (inclusive).
    pub last_seq: u64,
}

/// A batch of votes, as published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPayload {
    /// [`FORMAT_VERSION`].
    pub format: u8,
    /// The gateway: with `seq`, the vote's global id.
    pub gateway_id: String,
    /// The site.
    pub site: String,
    /// Identifies the batch: its first seq. A batch sent again after a reconnect may hold more or
    /// fewer votes, but never different votes under the same seq.
    pub batch_id: u64,
    /// Lowest seq in the batch.
    pub first_seq: u64,
    /// Highest seq in the batch.
    pub last_seq: u64,
    /// The votes, by increasing seq.
    pub votes: Vec<WireVote>,
    /// Seq ranges the gateway dropped and had not yet reported (oldest first); a range may be
    /// reported again until a batch carrying it is acknowledged. Empty in version 1.
    #[serde(default)]
    pub dropped: Vec<DroppedRange>,
}

/// Version 1 of [`BatchPayload`] (postcard is positional: it lacks the last field).
#[derive(Deserialize)]
struct BatchPayloadV1 {
    format: u8,
    gateway_id: String,
    site: String,
    batch_id: u64,
    first_seq: u64,
    last_seq: u64,
    votes: Vec<WireVote>,
}

impl From<BatchPayloadV1> for BatchPayload {
    fn from(v1: BatchPayloadV1) -> BatchPayload {
        BatchPayload {
            format: v1.format,
            gateway_id: v1.gateway_id,
            site: v1.site,
            batch_id: v1.batch_id,
            first_seq: v1.first_seq,
            last_seq: v1.last_seq,
            votes: v1.votes,
            dropped: Vec::new(),
        }
    }
}

/// One vote in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVote {
    /// Gateway-wide number, never reused.
    pub seq: u64,
    /// The terminal's configured id.
    pub terminal: String,
    /// 1 = very unhappy … 4 = very happy.
    pub button: u8,
    /// UTC wall clock of the press, ms.
    pub ts_ms: u64,
    /// False when the clock was not NTP-synchronised at the press.
    pub clock_synced: bool,
    /// True when `ts_ms` was recomputed from monotonic time after the clock was synchronised
    /// (same boot); `clock_synced` still says it was not at the press.
    pub restamped: bool,
    /// True when the anti-abuse rule suppressed it (not counted locally).
    pub filtered: bool,
    /// The terminal's own number, for serial terminals.
    pub term_seq: Option<u64>,
}

impl WireVote {
    /// The wire form of a stored vote, re-stamped when the clock now allows it.
    pub fn from_vote(vote: &Vote, now: &ClockReading) -> WireVote {
        let restamped = restamp(&vote.press_time(), now);
        WireVote {
            seq: vote.seq,
            terminal: vote.terminal.to_string(),
            button: vote.button.number(),
            ts_ms: restamped.unwrap_or(vote.ts_ms),
            clock_synced: vote.clock_synced,
            restamped: restamped.is_some(),
            filtered: vote.filtered,
            term_seq: vote.term_seq,
        }
    }
}

/// How batches are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    /// postcard: compact binary.
    Postcard,
    /// JSON: readable.
    Json,
}

impl PayloadFormat {
    /// The encoded size of one vote inside a batch (including a JSON comma).
    pub fn vote_size(self, vote: &WireVote) -> usize {
        match self {
            PayloadFormat::Postcard => postcard::to_stdvec(vote).map(|b| b.len()).unwrap_or(0),
            PayloadFormat::Json => serde_json::to_vec(vote).map(|b| b.len() + 1).unwrap_or(0),
        }
    }
}

/// Why bytes are not a batch.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not valid postcard or JSON of the schema.
    #[error("not a votegate batch: {0}")]
    Malformed(String),
    /// A format version this build does not know.
    #[error("batch format version {0} is unknown to this build (this build reads versions 1 and {FORMAT_VERSION})")]
    UnknownVersion(u8),
}

/// Encodes a batch.
pub fn encode(batch: &BatchPayload, format: PayloadFormat) -> Vec<u8> {
    match format {
        PayloadFormat::Postcard => postcard::to_stdvec(batch).unwrap_or_default(),
        PayloadFormat::Json => serde_json::to_vec(batch).unwrap_or_default(),
    }
}

/// Decodes a batch in either encoding (JSON starts with `{`).
pub fn decode(bytes: &[u8]) -> Result<BatchPayload, PayloadError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let batch: BatchPayload = if first == Some(b'{') {
        serde_json::from_slice(bytes).map_err(|e| PayloadError::Malformed(e.to_string()))?
    } else {
        let malformed = |e: postcard::Error| {
            PayloadError::Malformed(format!(
                "{e} (postcard batches start with format version 1 or {FORMAT_VERSION}, JSON ones with '{{')"
            ))
        };
        let (batch, rest) = match first {
            Some(FORMAT_V1) => {
                let (v1, rest): (BatchPayloadV1, _) =
                    postcard::take_from_bytes(bytes).map_err(malformed)?;
                (BatchPayload::from(v1), rest)
            }
            Some(FORMAT_VERSION) => postcard::take_from_bytes(bytes).map_err(malformed)?,
            // A later version's byte; anything else (text, other binary) is not a batch at all.
            Some(version @ 3..=31) => return Err(PayloadError::UnknownVersion(version)),
            Some(byte) => {
                return Err(PayloadError::Malformed(format!(
                    "it starts with byte 0x{byte:02x}; postcard batches start with format version 1 or {FORMAT_VERSION}, JSON ones with '{{'"
                )))
            }
            None => return Err(PayloadError::Malformed("no bytes".into())),
        };
        if !rest.is_empty() {
            return Err(PayloadError::Malformed(format!(
                "{} bytes after the batch",
                rest.len()
            )));
        }
        batch
    };
    if ![FORMAT_V1, FORMAT_VERSION].contains(&batch.format) {
        return Err(PayloadError::UnknownVersion(batch.format));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> BatchPayload {
        BatchPayload {
            format: FORMAT_VERSION,
            gateway_id: "gw-1".into(),
            site: "store-042".into(),
            batch_id: 7,
            first_seq: 7,
            last_seq: 8,
            votes: vec![
                WireVote {
                    seq: 7,
                    terminal: "entrance".into(),
                    button: 4,
                    ts_ms: 1_795_000_000_000,
                    clock_synced: true,
                    restamped: false,
                    filtered: false,
                    term_seq: Some(300),
                },
                WireVote {
                    seq: 8,
                    terminal: "exit".into(),
                    button: 1,
                    ts_ms: 1_795_000_001_000,
                    clock_synced: false,
                    restamped: true,
                    filtered: true,
                    term_seq: None,
                },
            ],
            dropped: vec![DroppedRange {
                first_seq: 3,
                last_seq: 5,
            }],
        }
    }

    #[test]
    fn both_encodings_round_trip_to_the_same_batch() {
        for format in [PayloadFormat::Postcard, PayloadFormat::Json] {
            assert_eq!(decode(&encode(&batch(), format)).expect("decodes"), batch());
        }
    }

    #[test]
    fn the_postcard_layout_is_pinned() {
        // README § MQTT payload explains these bytes; changing them is a format change.
        let hex: String = encode(&batch(), PayloadFormat::Postcard)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "020467772d310973746f72652d303432070708020708656e7472616e63650480bcd9f29e3401000001ac0208046578697401e8c3d9f29e3400010100010305"
        );
    }

    #[test]
    fn version_1_batches_still_decode_without_dropped_ranges() {
        let v1_hex = "010467772d310973746f72652d303432070708020708656e7472616e63650480bcd9f29e3401000001ac0208046578697401e8c3d9f29e3400010100";
        let bytes: Vec<u8> = (0..v1_hex.len() / 2)
            .map(|i| u8::from_str_radix(&v1_hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let decoded = decode(&bytes).expect("a version 1 batch");
        let expected = BatchPayload {
            format: 1,
            dropped: Vec::new(),
            ..batch()
        };
        assert_eq!(decoded, expected);
        let json = br#"{"format":1,"gateway_id":"gw-1","site":"s","batch_id":1,"first_seq":1,"last_seq":1,"votes":[]}"#;
        assert_eq!(decode(json).expect("JSON version 1").dropped, []);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let mut bytes = encode(&batch(), PayloadFormat::Postcard);
        bytes[0] = 3;
        assert!(matches!(
            decode(&bytes),
            Err(PayloadError::UnknownVersion(3))
        ));
        assert!(matches!(
            decode(b"sandbox\n"),
            Err(PayloadError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"{\"format\":9}"),
            Err(PayloadError::Malformed(_))
        ));
        assert!(matches!(
            decode(&[1, 200, 200]),
            Err(PayloadError::Malformed(_))
        ));
    }
}

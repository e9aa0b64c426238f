//! The plain data that flows through the pipeline: presses in, votes out.
//!
//! Nothing here does I/O. A [`Press`] is what a source saw; a [`Vote`] is a press the journal
//! accepted and numbered. Field names follow CONTRACT.md § Vote.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Gateway-wide vote number: strictly increasing, never reused, also across restarts and crashes.
pub type Seq = u64;

/// A serial terminal's own sequence number for a vote; the journal deduplicates on
/// `(terminal, term_seq)`.
pub type TermSeq = u64;

/// Longest terminal, gateway or site id we accept: they appear in URLs, MQTT topics and metrics.
pub const MAX_ID_LEN: usize = 64;

/// One of the four buttons of a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[repr(u8)]
pub enum Button {
    /// Button 1, the red face.
    VeryUnhappy = 1,
    /// Button 2.
    Unhappy = 2,
    /// Button 3.
    Happy = 3,
    /// Button 4, the green face.
    VeryHappy = 4,
}

impl Button {
    /// All buttons, in wire order (1 to 4).
    pub const ALL: [Button; 4] = [
        Button::VeryUnhappy,
        Button::Unhappy,
        Button::Happy,
        Button::VeryHappy,
    ];

    /// The wire value, 1 to 4.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// Zero-based index, handy for `[u64; 4]` count arrays.
    pub fn index(self) -> usize {
        usize::from(self.number() - 1)
    }
}

/// A button number outside 1..=4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("button {0} does not exist (buttons are numbered 1 to 4)")]
pub struct InvalidButton(pub u8);

impl TryFrom<u8> for Button {
    type Error = InvalidButton;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(Button::VeryUnhappy),
            2 => Ok(Button::Unhappy),
            3 => Ok(Button::Happy),
            4 => Ok(Button::VeryHappy),
            other => Err(InvalidButton(other)),
        }
    }
}

impl From<Button> for u8 {
    fn from(button: Button) -> u8 {
        button.number()
    }
}

/// Why an id (terminal, gateway, site) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The id is empty.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("is {0} characters long, at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    /// The id holds a character outside `A-Z a-z 0-9 . _ -`.
    #[error("contains {0:?}; use only letters, digits, '.', '_' and '-'")]
    BadChar(char),
}

/// Checks the shared id rule: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, so that ids are safe
/// in URLs, MQTT topics and Prometheus labels without escaping.
pub fn validate_id(id: &str) -> Result<(), InvalidId> {
    if id.is_empty() {
        return Err(InvalidId::Empty);
    }
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(InvalidId::TooLong(len));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(bad) => Err(InvalidId::BadChar(bad)),
        None => Ok(()),
    }
}

/// A terminal's configured id, e.g. `entrance`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TerminalId(Arc<str>);

impl TerminalId {
    /// Validates and wraps an id (see [`validate_id`]).
    pub fn new(id: &str) -> Result<Self, InvalidId> {
        validate_id(id)?;
        Ok(TerminalId(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TerminalId {
    type Error = InvalidId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        TerminalId::new(&value)
    }
}

impl From<TerminalId> for String {
    fn from(id: TerminalId) -> String {
        id.0.to_string()
    }
}

impl fmt::Display for TerminalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TerminalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): monotonic times are comparable
/// only between two readings with the same boot id.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BootId(pub [u8; 16]);

impl BootId {
    /// Parses the kernel's textual form, `483e74e2-45bd-4ce7-9a4a-a5f6f418fe4f`.
    pub fn parse(text: &str) -> Option<BootId> {
        let hex: Vec<u8> = text.trim().bytes().filter(|b| *b != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(BootId(bytes))
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootId({self})")
    }
}

/// When a press happened, as the gateway's clocks saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PressTime {
    /// UTC wall clock, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Whether the wall clock was NTP-synchronised at that moment.
    pub clock_synced: bool,
    /// The boot during which `mono_ms` was read.
    pub boot_id: BootId,
    /// Milliseconds since boot (CLOCK_BOOTTIME), for re-stamping once the clock is synchronised.
    pub mono_ms: u64,
}

/// A button press on its way from a source to the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Press {
    /// Which terminal it came from.
    pub terminal: TerminalId,
    /// Which button.
    pub button: Button,
    /// The terminal's own sequence number (serial terminals), used for deduplication.
    pub term_seq: Option<TermSeq>,
    /// When it was pressed.
    pub at: PressTime,
    /// True when the anti-abuse filter suppressed it: kept and forwarded, not counted.
    pub filtered: bool,
}

/// An accepted press: durable in the journal and numbered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Gateway-wide number; `(gateway_id, seq)` is the vote's global id.
    pub seq: Seq,
    /// The terminal's configured id.
    pub terminal: TerminalId,
    /// 1 = very unhappy … 4 = very happy.
    pub button: Button,
    /// UTC wall clock of the press, milliseconds.
    pub ts_ms: u64,
    /// False when the clock was not NTP-synchronised at the press.
    pub clock_synced: bool,
    /// True when the anti-abuse rule suppressed it (not counted in tallies).
    pub filtered: bool,
    /// The terminal's own sequence number, for serial terminals.
    pub term_seq: Option<TermSeq>,
    /// Boot id of the press's monotonic time.
    pub boot_id: BootId,
    /// Monotonic milliseconds since boot at the press.
    pub mono_ms: u64,
}

impl Vote {
    /// Numbers an accepted press.
    pub fn accept(seq: Seq, press: Press) -> Vote {
        Vote {
            seq,
            terminal: press.terminal,
            button: press.button,
            ts_ms: press.at.ts_ms,
            clock_synced: press.at.clock_synced,
            filtered: press.filtered,
            term_seq: press.term_seq,
            boot_id: press.at.boot_id,
            mono_ms: press.at.mono_ms,
        }
    }

    /// The time fields of the vote.
    pub fn press_time(&self) -> PressTime {
        PressTime {
            ts_ms: self.ts_ms,
            clock_synced: self.clock_synced,
            boot_id: self.boot_id,
            mono_ms: self.mono_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_round_trip_through_their_wire_numbers() {
        for button in Button::ALL {
            assert_eq!(Button::try_from(button.number()), Ok(button));
        }
        assert_eq!(Button::try_from(0), Err(InvalidButton(0)));
        assert_eq!(Button::try_from(5), Err(InvalidButton(5)));
        assert_eq!(Button::VeryHappy.index(), 3);
    }

    #[test]
    fn ids_are_limited_to_url_and_topic_safe_characters() {
        assert!(TerminalId::new("entrance-2.left_side").is_ok());
        assert_eq!(TerminalId::new(""), Err(InvalidId::Empty));
        assert_eq!(TerminalId::new("a/b"), Err(InvalidId::BadChar('/')));
        assert_eq!(TerminalId::new("with space"), Err(InvalidId::BadChar(' ')));
        assert_eq!(
            TerminalId::new(&"x".repeat(65)),
            Err(InvalidId::TooLong(65))
        );
        assert!(TerminalId::new(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn boot_id_parses_the_kernel_format_and_prints_it_back() {
        let text = "483e74e2-45bd-4ce7-9a4a-a5f6f418fe4f";
        let id = BootId::parse(text).expect("valid boot id");
        assert_eq!(id.to_string(), text);
        assert_eq!(BootId::parse("not-a-uuid"), None);
        assert_eq!(BootId::parse("483e74e2-45bd-4ce7-9a4a-a5f6f418fe4"), None);
    }
}

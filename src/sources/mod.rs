//! Where presses come from, and the hand-off to the journal.
//!
//! Every source (one task per terminal or port) turns what it reads into a [`PressEvent`] and
//! calls [`Intake::submit`], which stamps the time and waits for the journal's durable reply (the
//! journal applies the anti-abuse filter, after deduplication). Only after that reply may a
//! source acknowledge the press to the terminal (serial ack, GPIO LED).

pub mod gpio;
pub mod registry;
pub mod serial;
pub mod simulated;

use std::sync::Arc;

use crate::clock::Clock;
use crate::journal::{JournalError, JournalHandle, Outcome};
use crate::model::{Button, Press, TermSeq, TerminalId};

/// A press as a source reads it, before it is stamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PressEvent {
    /// The terminal.
    pub terminal: TerminalId,
    /// The button.
    pub button: Button,
    /// The terminal's own sequence number, if it has one (serial terminals).
    pub term_seq: Option<TermSeq>,
    /// How long ago it was pressed (a terminal's queued votes), in ms; 0 for live presses.
    pub age_ms: u64,
}

/// The hand-off from sources to the journal, shared by all source tasks.
pub struct Intake {
    journal: JournalHandle,
    clock: Arc<dyn Clock>,
}

impl Intake {
    /// An intake writing to `journal`.
    pub fn new(journal: JournalHandle, clock: Arc<dyn Clock>) -> Intake {
        Intake { journal, clock }
    }

    /// Stamps and journals a press; returns once the outcome is durable. The journal decides
    /// whether it is filtered.
    pub async fn submit(&self, event: PressEvent) -> Result<Outcome, JournalError> {
        let press = Press {
            terminal: event.terminal,
            button: event.button,
            term_seq: event.term_seq,
            at: self.clock.now().press_time(event.age_ms),
            filtered: false,
        };
        self.journal.append(press).await
    }
}

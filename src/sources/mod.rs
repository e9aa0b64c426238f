//! Where presses come from, and the hand-off to the journal.
//!
//! Every source (one task per terminal or port) turns what it reads into a [`PressEvent`] and
//! calls [`Intake::submit`], which stamps the time, applies the anti-abuse [`filter`], and waits
//! for the journal's durable reply. Only after that reply may a source acknowledge the press to
//! the terminal (serial ack, GPIO LED).

pub mod filter;
pub mod gpio;
pub mod registry;
pub mod serial;
pub mod simulated;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::Clock;
use crate::config::{TerminalConfig, DEFAULT_MIN_INTERVAL};
use crate::journal::{JournalError, JournalHandle, Outcome};
use crate::model::{Button, Press, TermSeq, TerminalId};
use filter::PressFilter;

/// A press as a source reads it, before it is stamped and filtered.
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
    filter: Mutex<PressFilter>,
}

impl Intake {
    /// An intake for the configured terminals (each with its filter interval) writing to
    /// `journal`.
    pub fn new(
        journal: JournalHandle,
        clock: Arc<dyn Clock>,
        terminals: &[TerminalConfig],
    ) -> Intake {
        let intervals: HashMap<TerminalId, std::time::Duration> = terminals
            .iter()
            .map(|t| (t.id.clone(), t.min_interval))
            .collect();
        Intake {
            journal,
            clock,
            filter: Mutex::new(PressFilter::new(DEFAULT_MIN_INTERVAL, intervals)),
        }
    }

    /// Stamps, filters and journals a press; returns once the outcome is durable.
    pub async fn submit(&self, event: PressEvent) -> Result<Outcome, JournalError> {
        let at = self.clock.now().press_time(event.age_ms);
        let filtered = self
            .filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_filtered(&event.terminal, &at);
        let press = Press {
            terminal: event.terminal,
            button: event.button,
            term_seq: event.term_seq,
            at,
            filtered,
        };
        self.journal.append(press).await
    }
}

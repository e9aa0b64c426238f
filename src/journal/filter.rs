//! The anti-abuse press filter. Pure: time is passed in.
//!
//! A press that comes within `min-interval` of the previous *counted* press on the same terminal
//! is still journaled and forwarded, but marked `filtered` so the tallies leave it out. One
//! person hammering a button thus counts once per interval, while a queue of customers (who take
//! longer than two seconds each to reach the terminal) all count. Filtered presses do not extend
//! the interval, so a long hammering session counts once per interval, not once in total.
//!
//! The journal decides, in its single writer, after deduplication: a retransmission is answered
//! from the duplicate window and never reaches the filter, and a press is remembered as counted
//! only once its commit is durable ([`PressFilter::remember`]). A press refused (a full journal)
//! or lost to a storage error is thus not counted, and its retransmission is judged afresh. The
//! state is in memory: the first press after a restart always counts.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::{BootId, PressTime, TerminalId};

/// Per-terminal memory of the last counted press.
#[derive(Clone, Debug, Default)]
pub struct PressFilter {
    default_interval: Duration,
    intervals: HashMap<TerminalId, Duration>,
    last_counted: Counted,
}

/// The last counted press of each terminal: `(boot, monotonic ms)`.
pub type Counted = HashMap<TerminalId, (BootId, u64)>;

impl PressFilter {
    /// A filter with `default_interval` for terminals not listed in `intervals`.
    pub fn new(
        default_interval: Duration,
        intervals: HashMap<TerminalId, Duration>,
    ) -> PressFilter {
        PressFilter {
            default_interval,
            intervals,
            last_counted: HashMap::new(),
        }
    }

    /// Takes new intervals (a reload), keeping what was counted.
    pub fn set_intervals(
        &mut self,
        default_interval: Duration,
        intervals: HashMap<TerminalId, Duration>,
    ) {
        self.default_interval = default_interval;
        self.intervals = intervals;
    }

    /// Whether a press is filtered, given the presses counted so far and those `pending` in the
    /// current commit. A press that counts is added to `pending`.
    pub fn judge(&self, pending: &mut Counted, terminal: &TerminalId, at: &PressTime) -> bool {
        let interval = self
            .intervals
            .get(terminal)
            .copied()
            .unwrap_or(self.default_interval);
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let last = pending
            .get(terminal)
            .or_else(|| self.last_counted.get(terminal));
        if let Some((boot, last_ms)) = last {
            // Monotonic times compare only within one boot.
            if *boot == at.boot_id && at.mono_ms.abs_diff(*last_ms) < interval_ms {
                return true;
            }
        }
        let newest = match last {
            Some((boot, last_ms)) if *boot == at.boot_id => at.mono_ms.max(*last_ms),
            _ => at.mono_ms,
        };
        pending.insert(terminal.clone(), (at.boot_id, newest));
        false
    }

    /// Remembers the presses a durable commit counted.
    pub fn remember(&mut self, counted: Counted) {
        self.last_counted.extend(counted);
    }

    /// Judges one press and remembers it at once (a commit of one).
    pub fn is_filtered(&mut self, terminal: &TerminalId, at: &PressTime) -> bool {
        let mut pending = Counted::new();
        let filtered = self.judge(&mut pending, terminal, at);
        self.remember(pending);
        filtered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(mono_ms: u64) -> PressTime {
        PressTime {
            ts_ms: 1_795_000_000_000 + mono_ms,
            clock_synced: true,
            boot_id: BootId([1; 16]),
            mono_ms,
        }
    }

    fn id(name: &str) -> TerminalId {
        TerminalId::new(name).expect("valid id")
    }

    #[test]
    fn hammering_counts_once_per_interval() {
        let mut filter = PressFilter::new(Duration::from_secs(2), HashMap::new());
        let exit = id("exit");
        let verdicts: Vec<bool> = [0, 300, 900, 1_999, 2_000, 2_100, 4_100]
            .iter()
            .map(|ms| filter.is_filtered(&exit, &at(*ms)))
            .collect();
        assert_eq!(verdicts, [false, true, true, true, false, true, false]);
    }

    #[test]
    fn terminals_are_filtered_independently_with_their_own_interval() {
        let intervals = HashMap::from([(id("fast"), Duration::from_millis(100))]);
        let mut filter = PressFilter::new(Duration::from_secs(2), intervals);
        assert!(!filter.is_filtered(&id("fast"), &at(0)));
        assert!(!filter.is_filtered(&id("slow"), &at(50)));
        assert!(!filter.is_filtered(&id("fast"), &at(150)));
        assert!(filter.is_filtered(&id("slow"), &at(150)));
    }

    #[test]
    fn a_zero_interval_filters_nothing() {
        let mut filter = PressFilter::new(Duration::ZERO, HashMap::new());
        assert!(!filter.is_filtered(&id("a"), &at(5)));
        assert!(!filter.is_filtered(&id("a"), &at(5)));
    }

    #[test]
    fn a_press_judged_but_not_made_durable_is_not_remembered() {
        let mut filter = PressFilter::new(Duration::from_secs(2), HashMap::new());
        let mut refused = Counted::new();
        assert!(!filter.judge(&mut refused, &id("a"), &at(0)));
        // The commit failed: nothing remembered, the retransmission counts.
        assert!(!filter.is_filtered(&id("a"), &at(10)));
        // Two presses in one commit: the second is judged against the first.
        let mut pending = Counted::new();
        assert!(!filter.judge(&mut pending, &id("b"), &at(0)));
        assert!(filter.judge(&mut pending, &id("b"), &at(500)));
    }

    #[test]
    fn a_new_boot_starts_afresh() {
        let mut filter = PressFilter::new(Duration::from_secs(2), HashMap::new());
        assert!(!filter.is_filtered(&id("a"), &at(10_000)));
        let mut after_reboot = at(10_500);
        after_reboot.boot_id = BootId([2; 16]);
        assert!(!filter.is_filtered(&id("a"), &after_reboot));
    }
}

//! The anti-abuse press filter. Pure: time is passed in.
//!
//! A press that comes within `min-interval` of the previous *counted* press on the same terminal
//! is still journaled and forwarded, but marked `filtered` so the tallies leave it out. One
//! person hammering a button thus counts once per interval, while a queue of customers (who take
//! longer than two seconds each to reach the terminal) all count. Filtered presses do not extend
//! the interval, so a long hammering session counts once per interval, not once in total.
//! The state is in memory: the first press after a restart always counts.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::{BootId, PressTime, TerminalId};

/// Per-terminal memory of the last counted press.
#[derive(Debug)]
pub struct PressFilter {
    default_interval: Duration,
    intervals: HashMap<TerminalId, Duration>,
    last_counted: HashMap<TerminalId, (BootId, u64)>,
}

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

    /// Decides whether a press is filtered, and remembers it if it counts.
    pub fn is_filtered(&mut self, terminal: &TerminalId, at: &PressTime) -> bool {
        let interval = self
            .intervals
            .get(terminal)
            .copied()
            .unwrap_or(self.default_interval);
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if let Some((boot, last_ms)) = self.last_counted.get(terminal) {
            // Monotonic times compare only within one boot.
            if *boot == at.boot_id && at.mono_ms.abs_diff(*last_ms) < interval_ms {
                return true;
            }
        }
        let newest = match self.last_counted.get(terminal) {
            Some((boot, last_ms)) if *boot == at.boot_id => at.mono_ms.max(*last_ms),
            _ => at.mono_ms,
        };
        self.last_counted
            .insert(terminal.clone(), (at.boot_id, newest));
        false
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
    fn a_new_boot_starts_afresh() {
        let mut filter = PressFilter::new(Duration::from_secs(2), HashMap::new());
        assert!(!filter.is_filtered(&id("a"), &at(10_000)));
        let mut after_reboot = at(10_500);
        after_reboot.boot_id = BootId([2; 16]);
        assert!(!filter.is_filtered(&id("a"), &after_reboot));
    }
}

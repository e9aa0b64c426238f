//! Edges → presses, for one GPIO terminal: pure logic over timestamps, no I/O, no clock.
//!
//! The rules (README § GPIO terminals documents them for installers):
//!
//! - **Debounce**: a button's level counts only once it has been stable for `debounce`; every
//!   edge restarts that wait, so a bounce train of any length settles to one change.
//! - **Hold**: a button counts once when it settles down; holding it counts nothing more.
//! - **Together**: when a second button settles down within `chord_window` of the first, neither
//!   counts (a hand across the panel says nothing about the visit) and both are reported as a
//!   chord. A button that settles down later while another is still held is ignored. Either way
//!   the ignored buttons count again only after they are released.
//! - **Stuck**: a button down longer than `stuck_after` is reported stuck and ignored until it
//!   is released; a stuck button does not block the others.
//!
//! Times are [`Duration`]s in the edges' own time base (CLOCK_MONOTONIC for rppal). The caller
//! feeds edges with [`Presses::on_edge`], calls [`Presses::tick`] at [`Presses::next_deadline`],
//! and acts on the returned [`Signal`]s.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::Button;

/// The timing of one terminal's buttons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PressTiming {
    /// How long a level must be stable to count.
    pub debounce: Duration,
    /// Two buttons settling down closer than this are a chord.
    pub chord_window: Duration,
    /// A button down this long is stuck.
    pub stuck_after: Duration,
}

/// What a terminal's buttons did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A press to count; `down_at` is when the button went down (its first edge of the train).
    Press {
        /// The button.
        button: Button,
        /// When it went down.
        down_at: Duration,
    },
    /// Buttons pressed together: none counted.
    Chord(Vec<Button>),
    /// Pressed while another button was held: not counted.
    Ignored(Button),
    /// Down longer than `stuck_after`: ignored until released.
    Stuck(Button),
    /// A stuck button was released and counts again.
    Released(Button),
}

/// A button's debounced state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Up,
    /// Down and settled at `settled_at`; counted unless another button settles within the chord
    /// window.
    Pending {
        down_at: Duration,
        settled_at: Duration,
    },
    /// Down and counted.
    Counted {
        down_at: Duration,
    },
    /// Down and not counted (chord, or another button was held).
    Ignored {
        down_at: Duration,
    },
    /// Down too long.
    Stuck,
}

impl Settled {
    fn is_down(self) -> bool {
        self != Settled::Up
    }

    fn down_at(self) -> Option<Duration> {
        match self {
            Settled::Pending { down_at, .. }
            | Settled::Counted { down_at }
            | Settled::Ignored { down_at } => Some(down_at),
            Settled::Up | Settled::Stuck => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ButtonState {
    /// The raw level: true while the button reads as pressed.
    raw_down: bool,
    /// When the raw level last changed.
    raw_since: Duration,
    /// The first edge of the current bounce train: the press time.
    train_start: Duration,
    settled: Settled,
}

/// The edge → press state machine of one terminal (four buttons).
#[derive(Debug)]
pub struct Presses {
    timing: PressTiming,
    buttons: [ButtonState; 4],
}

impl Presses {
    /// All buttons up, as of `now`.
    pub fn new(timing: PressTiming, now: Duration) -> Presses {
        let up = ButtonState {
            raw_down: false,
            raw_since: now,
            train_start: now,
            settled: Settled::Up,
        };
        Presses {
            timing,
            buttons: [up; 4],
        }
    }

    /// `button` reads down as reading starts (wiring fault, or a button held during a restart):
    /// it does not count, and goes stuck if it stays down.
    pub fn start_down(&mut self, button: Button, now: Duration) {
        self.buttons[button.index()] = ButtonState {
            raw_down: true,
            raw_since: now,
            train_start: now,
            settled: Settled::Ignored { down_at: now },
        };
    }

    /// A raw edge: `button` now reads `down` (or up) since `at`.
    pub fn on_edge(&mut self, button: Button, down: bool, at: Duration) -> Vec<Signal> {
        let mut signals = self.tick(at);
        let debounce = self.timing.debounce;
        let state = &mut self.buttons[button.index()];
        if state.raw_down != down {
            let departs = down != state.settled.is_down();
            // A departure soon after a bounce back continues the same train.
            if departs && at.saturating_sub(state.raw_since) >= debounce {
                state.train_start = at;
            }
            state.raw_down = down;
            state.raw_since = at;
        }
        // A level that is already settled needs no wait (a bounce back to it cancels the change).
        signals.extend(self.tick(at));
        signals
    }

    /// Applies everything due at or before `now`, in time order.
    pub fn tick(&mut self, now: Duration) -> Vec<Signal> {
        let mut signals = Vec::new();
        while let Some((index, due)) = self.earliest_due() {
            if due > now {
                break;
            }
            self.step(index, due, &mut signals);
        }
        signals
    }

    /// When [`Presses::tick`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.earliest_due().map(|(_, due)| due)
    }

    /// The buttons that are stuck now.
    pub fn stuck(&self) -> Vec<Button> {
        Button::ALL
            .into_iter()
            .filter(|b| self.buttons[b.index()].settled == Settled::Stuck)
            .collect()
    }

    fn earliest_due(&self) -> Option<(usize, Duration)> {
        (0..4)
            .filter_map(|index| self.due(index).map(|due| (index, due)))
            .min_by_key(|&(index, due)| (due, index))
    }

    /// When button `index` next changes state by itself.
    fn due(&self, index: usize) -> Option<Duration> {
        let state = self.buttons[index];
        let timing = self.timing;
        let settle =
            (state.raw_down != state.settled.is_down()).then(|| state.raw_since + timing.debounce);
        let decide = match state.settled {
            Settled::Pending { settled_at, .. } => Some(settled_at + timing.chord_window),
            _ => None,
        };
        let stuck = state
            .settled
            .down_at()
            .map(|down| down + timing.stuck_after);
        [settle, decide, stuck].into_iter().flatten().min()
    }

    /// Applies button `index`'s change due at `at`.
    fn step(&mut self, index: usize, at: Duration, signals: &mut Vec<Signal>) {
        let button = Button::ALL[index];
        let state = self.buttons[index];
        let timing = self.timing;
        if state.raw_down != state.settled.is_down() && state.raw_since + timing.debounce == at {
            if state.raw_down {
                self.settle_down(index, state.train_start, at, signals);
            } else {
                match state.settled {
                    Settled::Pending { down_at, .. } => {
                        signals.push(Signal::Press { button, down_at })
                    }
                    Settled::Stuck => signals.push(Signal::Released(button)),
                    _ => {}
                }
                self.buttons[index].settled = Settled::Up;
            }
            return;
        }
        if let Some(down_at) = state.settled.down_at() {
            if down_at + timing.stuck_after <= at {
                self.buttons[index].settled = Settled::Stuck;
                signals.push(Signal::Stuck(button));
                return;
            }
        }
        if let Settled::Pending { down_at, .. } = state.settled {
            self.buttons[index].settled = Settled::Counted { down_at };
            signals.push(Signal::Press { button, down_at });
        }
    }

    fn settle_down(
        &mut self,
        index: usize,
        down_at: Duration,
        at: Duration,
        signals: &mut Vec<Signal>,
    ) {
        let others = (0..4).filter(|&other| other != index);
        let pending: Vec<usize> = others
            .clone()
            .filter(|&other| matches!(self.buttons[other].settled, Settled::Pending { .. }))
            .collect();
        let held = others.clone().any(|other| {
            matches!(
                self.buttons[other].settled,
                Settled::Counted { .. } | Settled::Ignored { .. }
            )
        });
        if !pending.is_empty() {
            let mut chord: Vec<Button> = Vec::with_capacity(pending.len() + 1);
            for other in pending {
                if let Some(other_down) = self.buttons[other].settled.down_at() {
                    self.buttons[other].settled = Settled::Ignored {
                        down_at: other_down,
                    };
                }
                chord.push(Button::ALL[other]);
            }
            chord.push(Button::ALL[index]);
            chord.sort();
            self.buttons[index].settled = Settled::Ignored { down_at };
            signals.push(Signal::Chord(chord));
        } else if held {
            self.buttons[index].settled = Settled::Ignored { down_at };
            signals.push(Signal::Ignored(Button::ALL[index]));
        } else {
            self.buttons[index].settled = Settled::Pending {
                down_at,
                settled_at: at,
            };
        }
    }
}

/// Counts the edges the kernel dropped, from the per-line sequence numbers rppal reports
/// (a line's events are numbered 1, 2, 3, …; a jump means events were lost, typically when
/// the reader fell behind a very noisy line).
#[derive(Debug, Default)]
pub struct SeqGaps {
    last: HashMap<u8, u32>,
    /// Events missing so far.
    pub missed: u64,
}

impl SeqGaps {
    /// Records event `seq` on `pin`; returns how many events were missed just before it.
    pub fn record(&mut self, pin: u8, seq: u32) -> u64 {
        let missed = match self.last.insert(pin, seq) {
            Some(last) if seq > last => u64::from(seq - last - 1),
            _ => 0,
        };
        self.missed += missed;
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Button::{Happy, Unhappy, VeryHappy, VeryUnhappy};

    const TIMING: PressTiming = PressTiming {
        debounce: Duration::from_millis(20),
        chord_window: Duration::from_millis(50),
        stuck_after: Duration::from_secs(10),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Plays `(ms, button, down)` edges, then ticks to `end_ms`; returns the signals with the
    /// time they were emitted (the edge's or the tick's time).
    fn play(edges: &[(u64, Button, bool)], end_ms: u64) -> Vec<Signal> {
        let mut presses = Presses::new(TIMING, ms(0));
        let mut signals = Vec::new();
        for &(at, button, down) in edges {
            signals.extend(presses.on_edge(button, down, ms(at)));
        }
        // Tick as a real loop would: at each deadline.
        while let Some(deadline) = presses.next_deadline() {
            if deadline > ms(end_ms) {
                break;
            }
            signals.extend(presses.tick(deadline));
        }
        signals
    }

    fn press(button: Button, down_at: u64) -> Signal {
        Signal::Press {
            button,
            down_at: ms(down_at),
        }
    }

    /// A press with a bounce train on both edges, as a real contact makes.
    fn bouncy_press(button: Button, start: u64, hold: u64) -> Vec<(u64, Button, bool)> {
        let mut edges = Vec::new();
        for (i, offset) in [0, 1, 2, 4, 5, 9].into_iter().enumerate() {
            edges.push((start + offset, button, i % 2 == 0));
        }
        edges.push((start + 12, button, true));
        let release = start + hold;
        for (i, offset) in [0, 1, 3, 4, 8].into_iter().enumerate() {
            edges.push((release + offset, button, i % 2 == 1));
        }
        edges.push((release + 10, button, false));
        edges
    }

    #[test]
    fn a_clean_press_counts_once_after_the_chord_window() {
        let mut presses = Presses::new(TIMING, ms(0));
        assert!(presses.on_edge(Happy, true, ms(100)).is_empty());
        assert_eq!(
            presses.next_deadline(),
            Some(ms(120)),
            "settles after debounce"
        );
        assert!(
            presses.tick(ms(120)).is_empty(),
            "settled, waiting for a chord"
        );
        assert_eq!(presses.next_deadline(), Some(ms(170)));
        assert_eq!(presses.tick(ms(170)), vec![press(Happy, 100)]);
        assert!(presses.on_edge(Happy, false, ms(400)).is_empty());
        assert!(presses.tick(ms(420)).is_empty(), "a release says nothing");
        assert_eq!(presses.next_deadline(), None);
    }

    #[test]
    fn a_bounce_train_gives_one_press() {
        let edges = bouncy_press(VeryHappy, 1_000, 300);
        assert!(edges.len() > 10);
        assert_eq!(play(&edges, 5_000), vec![press(VeryHappy, 1_000)]);
    }

    #[test]
    fn spikes_shorter_than_the_debounce_are_not_presses() {
        let edges = [
            (100, Unhappy, true),
            (115, Unhappy, false),
            (500, Unhappy, true),
            (519, Unhappy, false),
        ];
        assert!(play(&edges, 2_000).is_empty());
    }

    #[test]
    fn a_quick_tap_counts_when_it_is_released_inside_the_chord_window() {
        // Down 25 ms: settles at 120, released (settled) at 145, before the window ends at 170.
        let edges = [(100, Happy, true), (125, Happy, false)];
        assert_eq!(play(&edges, 1_000), vec![press(Happy, 100)]);
    }

    #[test]
    fn a_held_button_counts_once() {
        let edges = [(100, Happy, true), (9_000, Happy, false)];
        assert_eq!(play(&edges, 20_000), vec![press(Happy, 100)]);
    }

    #[test]
    fn repeated_presses_each_count() {
        let mut edges = bouncy_press(Happy, 100, 200);
        edges.extend(bouncy_press(Happy, 600, 200));
        edges.extend(bouncy_press(Unhappy, 1_100, 200));
        assert_eq!(
            play(&edges, 5_000),
            vec![press(Happy, 100), press(Happy, 600), press(Unhappy, 1_100)]
        );
    }

    #[test]
    fn buttons_pressed_together_count_nothing() {
        let edges = [
            (100, Happy, true),
            (130, VeryHappy, true),
            (400, Happy, false),
            (410, VeryHappy, false),
        ];
        assert_eq!(
            play(&edges, 2_000),
            vec![Signal::Chord(vec![Happy, VeryHappy])]
        );
    }

    #[test]
    fn three_buttons_together_are_one_chord_of_the_first_two_then_ignored() {
        let edges = [
            (100, VeryUnhappy, true),
            (110, Unhappy, true),
            (120, Happy, true),
            (400, VeryUnhappy, false),
            (400, Unhappy, false),
            (400, Happy, false),
        ];
        assert_eq!(
            play(&edges, 2_000),
            vec![
                Signal::Chord(vec![VeryUnhappy, Unhappy]),
                Signal::Ignored(Happy)
            ]
        );
    }

    #[test]
    fn a_second_button_while_the_first_is_held_is_ignored() {
        let edges = [
            (100, Happy, true),
            (300, Unhappy, true),
            (500, Unhappy, false),
            (600, Happy, false),
            // Afterwards both count again.
            (1_000, Unhappy, true),
            (1_200, Unhappy, false),
        ];
        assert_eq!(
            play(&edges, 3_000),
            vec![
                press(Happy, 100),
                Signal::Ignored(Unhappy),
                press(Unhappy, 1_000)
            ]
        );
    }

    #[test]
    fn a_button_held_too_long_is_stuck_and_ignored_until_released() {
        let mut presses = Presses::new(TIMING, ms(0));
        assert!(presses.on_edge(Happy, true, ms(100)).is_empty());
        assert_eq!(presses.tick(ms(170)), vec![press(Happy, 100)]);
        assert_eq!(presses.next_deadline(), Some(ms(10_100)));
        assert_eq!(presses.tick(ms(10_100)), vec![Signal::Stuck(Happy)]);
        assert_eq!(presses.stuck(), vec![Happy]);
        // Bounces while stuck count nothing.
        let mut signals = presses.on_edge(Happy, false, ms(11_000));
        signals.extend(presses.on_edge(Happy, true, ms(11_005)));
        signals.extend(presses.tick(ms(12_000)));
        assert!(signals.is_empty());
        // Other buttons still work while one is stuck.
        let mut signals = presses.on_edge(Unhappy, true, ms(12_000));
        signals.extend(presses.on_edge(Unhappy, false, ms(12_200)));
        signals.extend(presses.tick(ms(13_000)));
        assert_eq!(signals, vec![press(Unhappy, 12_000)]);
        // Released: reported, and the button counts again.
        assert!(presses.on_edge(Happy, false, ms(20_000)).is_empty());
        assert_eq!(presses.tick(ms(20_020)), vec![Signal::Released(Happy)]);
        assert!(presses.stuck().is_empty());
        let mut signals = presses.on_edge(Happy, true, ms(21_000));
        signals.extend(presses.on_edge(Happy, false, ms(21_100)));
        signals.extend(presses.tick(ms(22_000)));
        assert_eq!(signals, vec![press(Happy, 21_000)]);
    }

    #[test]
    fn a_button_down_when_the_gateway_starts_never_counts_and_goes_stuck() {
        let mut presses = Presses::new(TIMING, ms(0));
        presses.start_down(VeryUnhappy, ms(0));
        assert_eq!(presses.tick(ms(9_999)), vec![]);
        assert_eq!(presses.tick(ms(10_000)), vec![Signal::Stuck(VeryUnhappy)]);
        presses.on_edge(VeryUnhappy, false, ms(15_000));
        assert_eq!(
            presses.tick(ms(15_020)),
            vec![Signal::Released(VeryUnhappy)]
        );
    }

    #[test]
    fn a_button_down_at_start_that_is_released_early_counts_nothing() {
        let mut presses = Presses::new(TIMING, ms(0));
        presses.start_down(Happy, ms(0));
        let mut signals = presses.on_edge(Happy, false, ms(500));
        signals.extend(presses.tick(ms(1_000)));
        assert_eq!(signals, vec![]);
        let mut signals = presses.on_edge(Happy, true, ms(2_000));
        signals.extend(presses.on_edge(Happy, false, ms(2_100)));
        signals.extend(presses.tick(ms(3_000)));
        assert_eq!(signals, vec![press(Happy, 2_000)]);
    }

    #[test]
    fn a_late_tick_applies_changes_in_time_order() {
        // Both buttons' windows pass before the tick: the first counts, the second, settling
        // after the first's window, is ignored because the first is held.
        let mut presses = Presses::new(TIMING, ms(0));
        assert!(presses.on_edge(Happy, true, ms(100)).is_empty());
        assert!(presses.on_edge(Unhappy, true, ms(130)).is_empty());
        assert_eq!(
            presses.tick(ms(5_000)),
            vec![Signal::Chord(vec![Unhappy, Happy])]
        );
        // An edge first applies what was due before it.
        let mut presses = Presses::new(TIMING, ms(0));
        assert!(presses.on_edge(Happy, true, ms(100)).is_empty());
        assert_eq!(
            presses.on_edge(Unhappy, true, ms(200)),
            vec![press(Happy, 100)]
        );
        assert_eq!(presses.tick(ms(5_000)), vec![Signal::Ignored(Unhappy)]);
    }

    #[test]
    fn sequence_gaps_are_counted_per_pin() {
        let mut gaps = SeqGaps::default();
        assert_eq!(gaps.record(5, 1), 0);
        assert_eq!(gaps.record(5, 2), 0);
        assert_eq!(gaps.record(6, 1), 0);
        assert_eq!(gaps.record(5, 6), 3);
        assert_eq!(gaps.record(6, 3), 1);
        assert_eq!(gaps.missed, 4);
    }
}

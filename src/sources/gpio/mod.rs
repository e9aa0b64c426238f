//! Terminals wired to the Pi's GPIO header: four buttons on four inputs, an optional LED.
//!
//! One task per terminal reads its edges from the [`pins::Header`], turns them into presses
//! with [`presses::Presses`], hands each press to the journal and lights the LED only after the
//! journal's durable reply. Stuck buttons, chords and dropped edges are counted in the
//! [`Registry`] (status and metrics).

pub mod pins;
pub mod presses;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::registry::{Registry, SourceCounters};
use super::{Intake, PressEvent};
use crate::clock::Clock;
use crate::journal::Outcome;
use crate::model::{Button, TerminalId};
use pins::{Edge, Header, Led, Pull};
use presses::{PressTiming, Presses, SeqGaps, Signal};

/// Two buttons settling down closer than this are a chord: neither counts.
pub const CHORD_WINDOW: Duration = Duration::from_millis(50);

/// One GPIO terminal's wiring and timing (config keys in README § GPIO terminals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpioSettings {
    /// BCM pins of the buttons, very unhappy … very happy.
    pub pins: [u8; 4],
    /// Bias of the inputs.
    pub pull: Pull,
    /// True if a pressed button reads high.
    pub active_high: bool,
    /// How long a level must be stable to count.
    pub debounce: Duration,
    /// A button down longer than this is stuck.
    pub stuck_after: Duration,
    /// The thank-you LED, if fitted.
    pub led: Option<LedSettings>,
}

/// The thank-you LED: `blinks` times on for `on` then off for `on`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedSettings {
    /// BCM pin (high = on).
    pub pin: u8,
    /// How many flashes per press.
    pub blinks: u32,
    /// Length of each flash (and of the gap after it).
    pub on: Duration,
}

/// What a GPIO terminal task shares with the rest of the gateway.
#[derive(Clone)]
pub struct GpioContext {
    /// The hand-off to the journal.
    pub intake: Arc<Intake>,
    /// Terminal states and counters.
    pub registry: Arc<Registry>,
    /// Wall clock, for last-seen.
    pub clock: Arc<dyn Clock>,
    /// The header the pins are on.
    pub header: Arc<dyn Header>,
}

/// Reads one GPIO terminal until `shutdown`.
pub async fn run_terminal(
    terminal: TerminalId,
    settings: GpioSettings,
    context: GpioContext,
    shutdown: CancellationToken,
) {
    let header = context.header.clone();
    let mut inputs = match header.claim_inputs(&settings.pins, settings.pull, settings.active_high)
    {
        Ok(inputs) => inputs,
        Err(err) => {
            log::error!(terminal:% = terminal; "GPIO terminal not started: {err}");
            context.registry.source(
                &terminal,
                crate::health::SourceState::Failed {
                    error: err.to_string(),
                },
            );
            return;
        }
    };
    let led = settings.led.and_then(|led| match header.claim_led(led.pin) {
        Ok(output) => Some(spawn_led(output, led, shutdown.clone())),
        Err(err) => {
            log::error!(terminal:% = terminal, pin = led.pin; "thank-you LED unavailable: {err}");
            None
        }
    });
    let timing = PressTiming {
        debounce: settings.debounce,
        chord_window: CHORD_WINDOW,
        stuck_after: settings.stuck_after,
    };
    let mut reader = TerminalReader {
        presses: Presses::new(timing, header.now()),
        gaps: SeqGaps::default(),
        terminal,
        settings,
        context,
        led,
    };
    for (button, high) in Button::ALL.into_iter().zip(inputs.initial_high.clone()) {
        if high == reader.settings.active_high {
            log::warn!(terminal:% = reader.terminal, button = button.number(); "button reads pressed at start: ignored until released");
            reader.presses.start_down(button, header.now());
        }
    }
    reader
        .context
        .registry
        .seen(&reader.terminal, reader.context.clock.now().wall_ms);
    log::info!(terminal:% = reader.terminal, pins:? = reader.settings.pins; "GPIO terminal reading");
    loop {
        let wait = reader
            .presses
            .next_deadline()
            .map(|deadline| deadline.saturating_sub(header.now()));
        let signals = tokio::select! {
            _ = shutdown.cancelled() => return,
            edge = inputs.edges.recv() => match edge {
                Some(edge) => reader.edge(edge),
                None => {
                    log::error!(terminal:% = reader.terminal; "GPIO interrupts stopped");
                    reader.context.registry.source(
                        &reader.terminal,
                        crate::health::SourceState::Failed {
                            error: "GPIO interrupts stopped".into(),
                        },
                    );
                    return;
                }
            },
            _ = sleep_or_forever(wait) => reader.presses.tick(header.now()),
        };
        for signal in signals {
            log::trace!(terminal:% = reader.terminal, signal:? = signal; "press logic");
            reader.act(signal).await;
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

struct TerminalReader {
    presses: Presses,
    gaps: SeqGaps,
    terminal: TerminalId,
    settings: GpioSettings,
    context: GpioContext,
    led: Option<mpsc::Sender<()>>,
}

impl TerminalReader {
    fn edge(&mut self, edge: Edge) -> Vec<Signal> {
        if let Some(seq) = edge.seq {
            let missed = self.gaps.record(edge.pin, seq);
            if missed > 0 {
                log::warn!(terminal:% = self.terminal, pin = edge.pin; "{missed} GPIO edges dropped by the kernel");
                self.bump_by(&self.context.registry.counters.gpio_missed_edges, missed);
            }
        }
        let Some(index) = self.settings.pins.iter().position(|&pin| pin == edge.pin) else {
            return Vec::new();
        };
        let down = edge.high == self.settings.active_high;
        log::trace!(terminal:% = self.terminal, pin = edge.pin, down = down, at:? = edge.at; "edge");
        self.presses.on_edge(Button::ALL[index], down, edge.at)
    }

    fn bump_by(&self, counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }

    async fn act(&mut self, signal: Signal) {
        let counters = &self.context.registry.counters;
        match signal {
            Signal::Press { button, down_at } => self.submit(button, down_at).await,
            Signal::Chord(buttons) => {
                let numbers: Vec<u8> = buttons.iter().map(|b| b.number()).collect();
                log::info!(terminal:% = self.terminal, buttons:? = numbers; "buttons pressed together: not counted");
                SourceCounters::bump(&counters.gpio_chords);
            }
            Signal::Ignored(button) => {
                log::info!(terminal:% = self.terminal, button = button.number(); "pressed while another button was held: not counted");
                SourceCounters::bump(&counters.gpio_ignored);
            }
            Signal::Stuck(button) => {
                log::warn!(terminal:% = self.terminal, button = button.number(); "button held longer than stuck-after ({:?}): ignored until released; check the wiring", self.settings.stuck_after);
                SourceCounters::bump(&counters.gpio_stuck);
                self.context
                    .registry
                    .stuck_buttons(&self.terminal, self.presses.stuck());
            }
            Signal::Released(button) => {
                log::info!(terminal:% = self.terminal, button = button.number(); "stuck button released: counting again");
                self.context
                    .registry
                    .stuck_buttons(&self.terminal, self.presses.stuck());
            }
        }
    }

    async fn submit(&mut self, button: Button, down_at: Duration) {
        let age = self.context.header.now().saturating_sub(down_at);
        let event = PressEvent {
            terminal: self.terminal.clone(),
            button,
            term_seq: None,
            age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        };
        match self.context.intake.submit(event).await {
            Ok(outcome @ (Outcome::Accepted(_) | Outcome::Duplicate(_))) => {
                log::debug!(terminal:% = self.terminal, button = button.number(), seq:? = outcome.seq(); "press journaled");
                self.context
                    .registry
                    .seen(&self.terminal, self.context.clock.now().wall_ms);
                if let Some(led) = &self.led {
                    // A full queue means a restart is already pending.
                    let _ = led.try_send(());
                }
            }
            Ok(Outcome::Refused) => {
                log::warn!(terminal:% = self.terminal, button = button.number(); "journal full (when-full = reject-new): press not stored, LED stays off");
            }
            Err(err) => {
                log::error!(terminal:% = self.terminal, button = button.number(); "press not journaled, LED stays off: {err}");
            }
        }
    }
}

/// Starts the LED task. Each message is a durable press: the blink pattern starts (or
/// restarts, so that every customer sees the light answer their own press).
fn spawn_led(
    mut led: Box<dyn Led>,
    settings: LedSettings,
    shutdown: CancellationToken,
) -> mpsc::Sender<()> {
    let (sender, mut requests) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        led.set(false);
        let mut requested = false;
        loop {
            if !requested {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    request = requests.recv() => if request.is_none() { break },
                }
            }
            requested = false;
            'pattern: for _ in 0..settings.blinks {
                for on in [true, false] {
                    led.set(on);
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'pattern,
                        _ = tokio::time::sleep(settings.on) => {}
                        request = requests.recv() => {
                            requested = request.is_some();
                            break 'pattern;
                        }
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        led.set(false);
    });
    sender
}

#[cfg(test)]
mod tests {
    use super::pins::SimulatedHeader;
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::TerminalConfig;
    use crate::journal::{self, Journal, Limits, WhenFull};

    fn settings() -> GpioSettings {
        GpioSettings {
            pins: [5, 6, 13, 19],
            pull: Pull::Up,
            active_high: false,
            debounce: Duration::from_millis(10),
            stuck_after: Duration::from_secs(5),
            led: Some(LedSettings {
                pin: 26,
                blinks: 1,
                on: Duration::from_millis(50),
            }),
        }
    }

    struct Rig {
        header: Arc<SimulatedHeader>,
        journal: journal::JournalService,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    fn start(limits: Limits) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = journal::spawn(Journal::open(dir.path(), limits).expect("journal"))
            .expect("journal thread");
        let terminal = TerminalId::new("door").expect("id");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new().expect("clock"));
        let config = TerminalConfig {
            id: terminal.clone(),
            min_interval: Duration::ZERO,
            source: crate::config::SourceConfig::Simulated {
                presses_per_minute: 1.0,
            },
        };
        let registry = Arc::new(Registry::new(std::slice::from_ref(&config)));
        let header = Arc::new(SimulatedHeader::default());
        let context = GpioContext {
            intake: Arc::new(Intake::new(journal.handle(), clock.clone())),
            registry: registry.clone(),
            clock,
            header: header.clone(),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(run_terminal(
            terminal,
            settings(),
            context,
            shutdown.clone(),
        ));
        Rig {
            header,
            journal,
            registry,
            shutdown,
            _dir: dir,
        }
    }

    async fn press(header: &SimulatedHeader, pin: u8) {
        // Wait for the task to claim its pins.
        for _ in 0..100 {
            if header.drive(pin, false, header.now()).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        header.drive(pin, true, header.now()).expect("release");
    }

    #[tokio::test]
    async fn the_led_lights_only_after_the_press_is_journaled() {
        let rig = start(Limits::default());
        let mut leds = rig.header.led_changes();
        press(&rig.header, 13).await;
        let change = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok((pin, true)) = leds.recv().await {
                    return pin;
                }
            }
        })
        .await
        .expect("the LED lights");
        assert_eq!(change, 26);
        // When the LED is on, the vote is already durable in the journal.
        let votes = rig.journal.handle().read_after(0, 10).await.expect("read");
        assert_eq!(votes.len(), 1);
        assert_eq!(votes[0].button, Button::Happy);
        rig.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_refused_press_leaves_the_led_off() {
        let limits = Limits {
            max_disk_bytes: crate::journal::MIN_DISK_BYTES,
            when_full: WhenFull::RejectNew,
            ..Limits::default()
        };
        let rig = start(limits);
        // Fill the journal through the same intake path.
        let handle = rig.journal.handle();
        let mut filler = 0u64;
        loop {
            let press = crate::model::Press {
                terminal: TerminalId::new("filler").expect("id"),
                button: Button::Happy,
                term_seq: Some(filler),
                at: crate::model::PressTime {
                    ts_ms: 1_795_000_000_000,
                    clock_synced: true,
                    boot_id: crate::model::BootId([1; 16]),
                    mono_ms: filler,
                },
                filtered: false,
            };
            filler += 1;
            if matches!(handle.append(press).await, Ok(Outcome::Refused)) {
                break;
            }
        }
        let mut leds = rig.header.led_changes();
        press(&rig.header, 5).await;
        let lit = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                if let Ok((_, true)) = leds.recv().await {
                    return;
                }
            }
        })
        .await;
        assert!(lit.is_err(), "the LED lit for a press the journal refused");
        assert_eq!(rig.journal.stats().borrow().outcomes.refused, 2);
        let _ = &rig.registry;
        rig.shutdown.cancel();
    }
}

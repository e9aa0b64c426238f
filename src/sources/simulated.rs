//! Simulated terminals: random presses at a configured mean rate, for the demo and for tests.
//! Presses arrive as a Poisson process, with buttons weighted like a typical store (mostly happy).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use super::{Intake, PressEvent};
use crate::clock::Clock;
use crate::model::{Button, TerminalId};

/// Share of presses per button (very unhappy … very happy), in percent.
const BUTTON_WEIGHTS: [u32; 4] = [8, 12, 35, 45];

/// Presses a simulated terminal until `shutdown` is cancelled.
pub async fn run(
    terminal: TerminalId,
    presses_per_minute: f64,
    intake: Arc<Intake>,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut rng = fastrand::Rng::new();
    registry.seen(&terminal, clock.now().wall_ms);
    log::info!(terminal:% = terminal; "simulated terminal pressing {presses_per_minute} times a minute on average");
    loop {
        let pause = next_pause(&mut rng, presses_per_minute);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let event = PressEvent {
            terminal: terminal.clone(),
            button: pick_button(&mut rng),
            term_seq: None,
            age_ms: 0,
        };
        match intake.submit(event).await {
            Ok(_) => {
                registry.seen(&terminal, clock.now().wall_ms);
            }
            Err(err) => log::warn!(terminal:% = terminal; "simulated press not journaled: {err}"),
        }
    }
}

/// Exponentially distributed gap between presses with the given mean rate.
fn next_pause(rng: &mut fastrand::Rng, presses_per_minute: f64) -> Duration {
    let uniform = 1.0 - rng.f64(); // in (0, 1]: ln is finite
    Duration::from_secs_f64(-uniform.ln() * 60.0 / presses_per_minute)
}

fn pick_button(rng: &mut fastrand::Rng) -> Button {
    let mut roll = rng.u32(0..BUTTON_WEIGHTS.iter().sum::<u32>());
    for (button, weight) in Button::ALL.into_iter().zip(BUTTON_WEIGHTS) {
        if roll < weight {
            return button;
        }
        roll -= weight;
    }
    Button::VeryHappy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_average_to_the_configured_rate() {
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| next_pause(&mut rng, 30.0).as_secs_f64())
            .sum();
        let mean = total / f64::from(n);
        assert!((mean - 2.0).abs() < 0.1, "mean pause {mean}s, expected 2s");
    }

    #[test]
    fn buttons_follow_the_weights() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[pick_button(&mut rng).index()] += 1;
        }
        for (count, weight) in counts.iter().zip(BUTTON_WEIGHTS) {
            let share = f64::from(*count) / 100.0;
            assert!((share - f64::from(weight)).abs() < 2.0, "{counts:?}");
        }
    }
}

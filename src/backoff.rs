//! Exponential backoff with jitter, shared by everything that reconnects (serial ports, the
//! broker). Pure: the caller sleeps.

use std::time::Duration;

/// Delays that double from `initial` up to `cap`, each randomised to between 50 % and 100 % of
/// its nominal value so that many gateways (or ports) do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    nominal: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, never above `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap,
            nominal: initial,
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the next one.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let nominal = self.nominal;
        self.nominal = (self.nominal * 2).min(self.cap);
        self.failures += 1;
        nominal.mul_f64(0.5 + rng.f64() * 0.5)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.nominal = self.initial;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay(&mut rng)).collect();
        let nominal = [
            250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000,
        ];
        for (delay, nominal) in delays.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *delay >= nominal / 2 && *delay <= nominal,
                "{delay:?} for {nominal:?}"
            );
        }
        assert_eq!(backoff.failures(), 10);
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(250));
    }
}

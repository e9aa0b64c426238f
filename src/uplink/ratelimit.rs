//! Optional rate limits for brokers with quotas (publishes/s, bytes/s): token buckets holding one
//! second of budget. Pure: time is passed in.

use std::time::{Duration, Instant};

/// A token bucket refilled at `rate` per second, holding at most one second's worth.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
    }

    /// How long until `cost` tokens are there (zero if they are).
    fn wait(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        let cost = cost.min(self.rate); // a single item larger than a second's budget still goes
        if self.tokens >= cost {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((cost - self.tokens) / self.rate)
        }
    }
}

/// The publish and byte limits together.
#[derive(Debug, Clone)]
pub struct RateLimit {
    publishes: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl RateLimit {
    /// Limits (either may be absent).
    pub fn new(
        publishes_per_second: Option<f64>,
        bytes_per_second: Option<f64>,
        now: Instant,
    ) -> RateLimit {
        RateLimit {
            publishes: publishes_per_second.map(|r| Bucket::new(r, now)),
            bytes: bytes_per_second.map(|r| Bucket::new(r, now)),
        }
    }

    /// Zero if a publish of `bytes` may go now (and takes its tokens), else how long to wait.
    pub fn try_take(&mut self, bytes: usize, now: Instant) -> Duration {
        let wait_publish = self
            .publishes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait(1.0, now));
        let wait_bytes = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait(bytes as f64, now));
        let wait = wait_publish.max(wait_bytes);
        if wait.is_zero() {
            if let Some(b) = &mut self.publishes {
                b.tokens -= 1.0_f64.min(b.rate);
            }
            if let Some(b) = &mut self.bytes {
                b.tokens -= (bytes as f64).min(b.rate);
            }
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_spread_to_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(Some(2.0), None, start);
        assert_eq!(limit.try_take(10, start), Duration::ZERO);
        assert_eq!(limit.try_take(10, start), Duration::ZERO);
        let wait = limit.try_take(10, start);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(
            limit.try_take(10, start + Duration::from_millis(500)),
            Duration::ZERO
        );
    }

    #[test]
    fn bytes_are_limited_and_no_limit_means_no_wait() {
        let start = Instant::now();
        let mut limit = RateLimit::new(None, Some(1000.0), start);
        assert_eq!(limit.try_take(800, start), Duration::ZERO);
        assert!(limit.try_take(800, start) > Duration::ZERO);
        let mut free = RateLimit::new(None, None, start);
        assert_eq!(free.try_take(1 << 20, start), Duration::ZERO);
    }
}

//! Rate-limited logging: a problem that can repeat thousands of times a second (a refused HTTP
//! connection, a discarded serial frame) is logged at most once per interval, with the number of
//! occurrences since the last line. Pure: the caller passes the time.

use std::time::Duration;

use tokio::time::Instant;

/// Decides when a repeating event deserves a log line.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    since_last: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            since_last: 0,
        }
    }

    /// Records one occurrence at `now`. Returns `Some(n)` when a line is due, `n` being the
    /// occurrences it stands for (this one included).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.since_last += 1;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since_last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_counting_what_it_stands_for() {
        let mut throttle = Throttle::new(Duration::from_secs(60));
        assert_eq!(
            throttle.hit(Instant::now()),
            Some(1),
            "the first one at once"
        );
        for _ in 0..99 {
            assert_eq!(throttle.hit(Instant::now()), None);
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(throttle.hit(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(throttle.hit(Instant::now()), Some(101));
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(throttle.hit(Instant::now()), Some(1));
    }
}

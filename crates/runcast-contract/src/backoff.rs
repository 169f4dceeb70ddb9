//! The one capped exponential backoff every retry loop uses, the services' and the CLI's: a first delay that doubles on each
//! [`Backoff::next`] up to a cap, [`Backoff::reset`] once something worked, and optional jitter
//! so replicas retrying together spread out.

use std::hash::BuildHasher;
use std::time::Duration;

/// Capped exponential backoff: `first`, `2 * first`, `4 * first`, … up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    delay: Duration,
    jitter: Duration,
    draws: u64,
}

impl Backoff {
    /// Starts at `first` (never above `max`) and doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.min(max);
        Self { first, max, delay: first, jitter: Duration::ZERO, draws: 0 }
    }

    /// Adds a random extra of up to `jitter` to every delay [`next`](Self::next) returns.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay the next [`next`](Self::next) returns, without jitter and without advancing.
    pub fn peek(&self) -> Duration {
        self.delay
    }

    /// The current delay (plus jitter, if any); the following one is twice as long, up to the cap.
    #[allow(clippy::should_implement_trait)] // endless: an `Option` every caller unwraps is noise
    pub fn next(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = self.delay.saturating_mul(2).min(self.max);
        delay.saturating_add(self.draw_jitter())
    }

    /// Back to the first delay: call it once what was retried worked.
    pub fn reset(&mut self) {
        self.delay = self.first;
    }

    fn draw_jitter(&mut self) -> Duration {
        let span = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        if span == 0 {
            return Duration::ZERO;
        }
        // std's randomly keyed hasher is random enough to spread retries; no RNG dependency.
        self.draws += 1;
        let random = std::collections::hash_map::RandomState::new().hash_one(self.draws);
        Duration::from_nanos(random % span.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let mut backoff = Backoff::new(ms(100), ms(500));
        let delays: Vec<_> = (0..6).map(|_| backoff.next()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500, 500].map(ms));
    }

    #[test]
    fn peek_shows_the_next_delay_without_advancing() {
        let mut backoff = Backoff::new(ms(50), ms(1000));
        assert_eq!(backoff.peek(), ms(50));
        assert_eq!(backoff.peek(), ms(50));
        assert_eq!(backoff.next(), ms(50));
        assert_eq!(backoff.peek(), ms(100));
    }

    #[test]
    fn reset_starts_over_at_the_first_delay() {
        let mut backoff = Backoff::new(ms(200), ms(10_000));
        for _ in 0..10 {
            backoff.next();
        }
        assert_eq!(backoff.peek(), ms(10_000));
        backoff.reset();
        assert_eq!(backoff.next(), ms(200));
        assert_eq!(backoff.next(), ms(400));
    }

    #[test]
    fn the_first_delay_never_exceeds_the_cap() {
        let mut backoff = Backoff::new(ms(100), ms(30));
        assert_eq!(backoff.next(), ms(30));
        backoff.reset();
        assert_eq!(backoff.next(), ms(30));
    }

    #[test]
    fn jitter_adds_at_most_its_bound() {
        let mut backoff = Backoff::new(ms(100), ms(400)).with_jitter(ms(10));
        for base in [100, 200, 400, 400, 400, 400, 400, 400] {
            let delay = backoff.next();
            assert!(delay >= ms(base) && delay <= ms(base + 10), "{delay:?} for {base} ms");
        }
    }

    #[test]
    fn a_huge_cap_saturates_instead_of_overflowing() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            backoff.next();
        }
    }
}

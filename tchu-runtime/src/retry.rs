//! Retry policies: how many times a failed handler runs again, and after which delays.

use std::time::Duration;

/// How the delay grows between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same delay every time.
    Fixed,
    /// The delay doubles each attempt, up to `max_delay`.
    Exponential,
}

/// Retry settings of a handler or of a whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub retries: u32,
    /// Growth of the delay.
    pub backoff: Backoff,
    /// The first delay.
    pub delay: Duration,
    /// The largest delay.
    pub max_delay: Duration,
    /// Whether to randomize each delay (between half and all of it).
    pub jitter: bool,
}

impl RetryPolicy {
    /// No retries: a failure is dead-lettered at once.
    pub const NONE: RetryPolicy = RetryPolicy {
        retries: 0,
        backoff: Backoff::Fixed,
        delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(600),
        jitter: false,
    };

    /// The service default: 3 retries, exponential from 1 s, at most 10 min, with jitter.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        retries: 3,
        backoff: Backoff::Exponential,
        delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(600),
        jitter: true,
    };

    /// The delay before retry number `retry` (1-based), without jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let d = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(retry.saturating_sub(1));
                self.delay.saturating_mul(factor)
            }
        };
        d.min(self.max_delay)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

/// The delay in milliseconds before the retry that follows `attempt`, with jitter applied and
/// rounded so that few distinct wait queues exist (100 ms steps under 10 s, 1 s steps above).
pub(crate) fn delay_for(policy: &RetryPolicy, attempt: u32) -> u64 {
    let base = u64::try_from(policy.base_delay(attempt).as_millis()).unwrap_or(u64::MAX);
    let d = if policy.jitter {
        // Between half and all of the delay; the sub-second clock is entropy enough here.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or_default();
        base / 2 + (base / 2).saturating_mul(nanos % 1000) / 1000
    } else {
        base
    };
    let step = if d < 10_000 { 100 } else { 1000 };
    (d.div_ceil(step) * step).max(step)
}

/// The wait queue for one delay: messages sit there for `delay_ms`, then the broker
/// dead-letters them back to the service queue. It survives a restart of the service.
pub(crate) fn wait_queue_name(queue: &str, delay_ms: u64) -> String {
    format!("{queue}.retry.{delay_ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_schedule_is_capped() {
        let p = RetryPolicy {
            retries: 10,
            backoff: Backoff::Exponential,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            jitter: false,
        };
        let got: Vec<u64> = (1..=6).map(|r| p.base_delay(r).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn delays_are_rounded_and_jitter_stays_within_half() {
        let mut p = RetryPolicy {
            retries: 3,
            backoff: Backoff::Fixed,
            delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            jitter: false,
        };
        assert_eq!(delay_for(&p, 1), 300);
        p.jitter = true;
        p.delay = Duration::from_secs(20);
        p.max_delay = Duration::from_secs(60);
        for _ in 0..50 {
            let d = delay_for(&p, 1);
            assert!((10_000..=20_000).contains(&d), "{d}");
        }
        assert_eq!(wait_queue_name("svc", 300), "svc.retry.300ms");
    }
}

//! How hard to retry a failing storage request.
//!
//! One policy for every backend: object_store's Azure client gets it as its
//! `RetryConfig`; the Swift client applies it to each request itself. Retries are
//! bounded in count *and* time, so a store that stays down fails the run instead of
//! hanging it.

use std::time::Duration;

/// Retry settings for storage requests.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 8). 0 disables retrying.
    pub max_retries: u32,
    /// No retry starts later than this after the first attempt (default 120 s).
    #[serde(with = "secs")]
    pub max_elapsed: Duration,
    /// First backoff (default 100 ms); doubles each retry, with full jitter.
    #[serde(with = "secs")]
    pub initial_backoff: Duration,
    /// Backoff ceiling (default 15 s).
    #[serde(with = "secs")]
    pub max_backoff: Duration,
    /// One request's time limit, from connect to the end of the response headers
    /// (default 60 s). Body transfers are bounded by `read_timeout` per read instead.
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Longest silence while reading a response body (default 60 s).
    #[serde(with = "secs")]
    pub read_timeout: Duration,
    /// Connection establishment limit (default 10 s).
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            max_elapsed: Duration::from_secs(120),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The sleep before retry number `retry` (1-based): exponential with full jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let cap = exp.min(self.max_backoff);
        let jitter: f64 = rand::random();
        cap.mul_f64(0.5 + jitter / 2.0)
    }

    /// Whether retry number `retry` (1-based) may start, `elapsed` after the first try.
    pub fn may_retry(&self, retry: u32, elapsed: Duration) -> bool {
        retry <= self.max_retries && elapsed < self.max_elapsed
    }

    /// The same policy in object_store's terms (for the Azure client).
    pub fn to_object_store(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries as usize,
            retry_timeout: self.max_elapsed,
        }
    }
}

/// Durations as (fractional) seconds in config files.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for retry in 1..30 {
            let b = p.backoff(retry);
            assert!(b <= p.max_backoff, "{retry}: {b:?}");
            assert!(b >= p.initial_backoff / 2, "{retry}: {b:?}");
        }
        assert!(p.may_retry(1, Duration::ZERO));
        assert!(!p.may_retry(p.max_retries + 1, Duration::ZERO));
        assert!(!p.may_retry(1, p.max_elapsed));
    }
}

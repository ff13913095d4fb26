//! When to retry an upload, and how long to wait first.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// How failed requests are retried.
///
/// Retried: HTTP 408, 429, 500, 502, 503, 504, request timeouts and connection errors. Never
/// retried: 400, 403, 404, 413 and other client errors. A 401 asks the credential for a new token
/// once and retries (see [`FreshToken`](super::FreshToken) for what that gets from
/// azure_identity's caching credentials).
///
/// By default a batch is retried until its `deadline` (2 minutes from its first attempt), with no
/// limit on the number of attempts: an outage of a minute or so loses nothing. Waits grow
/// exponentially from `base_delay` (with ±20% jitter) up to `max_delay` (30 s). A `Retry-After`
/// (seconds or HTTP date) or `retry-after-ms` header that asks for a longer wait is honoured; one
/// that asks for less (`0`, a date in the past through clock skew) does not shorten the computed
/// wait. When the next wait would end after the deadline, the batch fails at once.
/// `max_attempts` is an extra, explicit limit.
///
/// Delivery is at-least-once: a request that timed out after the service stored its rows is sent
/// again, and the service does not deduplicate.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts per batch, the first included (1 = no retries). Default `u32::MAX`: no limit but
    /// the deadline.
    pub max_attempts: u32,
    /// Wait before the first retry. Default 500 ms.
    pub base_delay: Duration,
    /// Longest computed wait between attempts. Default 30 s.
    pub max_delay: Duration,
    /// Time budget of one batch across all its attempts. Default 2 minutes.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Sets the attempts per batch, the first included; 0 is taken as 1.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the wait before the first retry.
    pub fn with_base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// Sets the longest computed wait between attempts.
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the time budget of one batch across all its attempts.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The computed wait before retry number `retry` (1 for the first retry).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        capped.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    /// The wait before retry number `retry`, given what the service asked for: never shorter
    /// than the computed backoff (a `Retry-After: 0` or a past date must not turn retries into a
    /// busy loop), longer when the service asks for longer.
    pub(crate) fn wait_before(&self, retry: u32, asked: Option<Duration>) -> Duration {
        let backoff = self.backoff(retry);
        asked.map_or(backoff, |asked| asked.max(backoff))
    }
}

/// What a response status means for the batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Success,
    Retryable,
    Unauthorized,
    Permanent,
}

pub(crate) fn classify(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 429 | 500 | 502 | 503 | 504 => StatusClass::Retryable,
        401 => StatusClass::Unauthorized,
        _ => StatusClass::Permanent,
    }
}

/// Longest wait taken from a response header; anything longer is the same to a retry deadline.
const MAX_HEADER_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The wait the service asked for: `retry-after-ms`, `x-ms-retry-after-ms`, then `Retry-After`
/// as seconds or as an HTTP date; at most a day, whatever the header says.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = header_str(headers, name).and_then(|v| v.trim().parse::<f64>().ok())
            && ms >= 0.0
        {
            // NaN fails `>= 0`; an overflowing value is capped instead of panicking.
            let wait = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(MAX_HEADER_WAIT);
            return Some(wait.min(MAX_HEADER_WAIT));
        }
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_HEADER_WAIT));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_HEADER_WAIT),
    )
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        let later = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn hostile_retry_after_values_are_capped_not_panics() {
        for (name, value) in [
            ("retry-after-ms", "1e30"),
            ("retry-after-ms", "inf"),
            ("x-ms-retry-after-ms", "1.8e308"),
            ("retry-after", "18446744073709551615"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            assert_eq!(retry_after(&h), Some(MAX_HEADER_WAIT), "{name}: {value}");
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("NaN"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(700));
        let first = p.backoff(1);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let third = p.backoff(3);
        assert!(third >= Duration::from_millis(320) && third <= Duration::from_millis(480));
        let tenth = p.backoff(10);
        assert!(tenth <= Duration::from_millis(840));
    }

    #[test]
    fn a_zero_or_short_retry_after_does_not_shorten_the_backoff() {
        let p = RetryPolicy::default().with_base_delay(Duration::from_millis(400));
        for asked in [Some(Duration::ZERO), Some(Duration::from_millis(1)), None] {
            let wait = p.wait_before(1, asked);
            assert!(wait >= Duration::from_millis(320), "{asked:?} gave {wait:?}");
        }
        assert_eq!(p.wait_before(1, Some(Duration::from_secs(7))), Duration::from_secs(7));
        let mut past = HeaderMap::new();
        let then = SystemTime::now() - Duration::from_secs(60);
        past.insert(
            "retry-after",
            reqwest::header::HeaderValue::from_str(&httpdate::fmt_http_date(then)).unwrap(),
        );
        assert!(p.wait_before(1, retry_after(&past)) >= Duration::from_millis(320));
    }

    #[test]
    fn by_default_only_the_deadline_bounds_retries() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, u32::MAX);
        assert_eq!(p.deadline, Duration::from_secs(120));
    }

    #[test]
    fn statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify(s), StatusClass::Retryable, "{s}");
        }
        for s in [400, 403, 404, 413, 501] {
            assert_eq!(classify(s), StatusClass::Permanent, "{s}");
        }
        assert_eq!(classify(401), StatusClass::Unauthorized);
        assert_eq!(classify(204), StatusClass::Success);
    }
}

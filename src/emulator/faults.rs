//! Fault injection: scripted faults (FIFO) and seeded random rates.

use std::collections::VecDeque;
use std::time::Duration;

/// A fault the emulator answers a request with instead of (or before) handling it normally.
///
/// Faults are decided when a request arrives (arrival order), applied after its body has been
/// read (so the client never sees a reset while still sending), and recorded in
/// [`RequestRecord::fault`](super::RequestRecord::fault).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `429 Too Many Requests` with `Retry-After: <retry_after_secs>` (whole seconds).
    Throttle {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// Answer `429 Too Many Requests` with `retry-after-ms: <retry_after_ms>` (no `Retry-After`).
    ThrottleMs {
        /// Value of the `retry-after-ms` header, in milliseconds.
        retry_after_ms: u64,
    },
    /// Answer with this status and the service's error body shape
    /// (`{"error":{"code":..,"message":..}}` plus `x-ms-error-code`). A status outside 200..=999
    /// is answered as 500. `Status(429)` carries no retry header; use [`Fault::Throttle`] for
    /// that. `Status(200)` tests a client that must accept only 204; `Status(204)` answers like
    /// a success but stores no row (a lost upload).
    Status(u16),
    /// Wait this long, then handle the request normally. Shutdown cuts the wait short (the
    /// request is then dropped without a response).
    Latency(Duration),
    /// Close the connection without a response (the hyper service returns an error: HTTP/1.1
    /// closes the socket, HTTP/2 resets the stream). The client sees a connection error.
    DropConnection,
    /// Hold the request this long without answering, then close the connection; its rows are
    /// never stored. A service that hangs: the client's request timeout decides what happens.
    /// Shutdown cuts the hold short.
    Hang(Duration),
}

/// Seeded random fault rates, each the probability (0.0..=1.0) that a request gets that fault.
///
/// One uniform draw per request picks at most one fault, in the order throttle, server error,
/// unavailable, drop, latency, hang; the rates are cumulative, so their sum should not exceed 1.0
/// (the excess is ignored). The same seed and the same sequence of requests give the same faults,
/// so sequential tests are reproducible; with concurrent requests, the assignment follows arrival
/// order. Scripted faults ([`Emulator::inject`](super::Emulator::inject)) take precedence and do
/// not consume draws.
#[derive(Clone, Debug)]
pub struct FaultRates {
    /// Seed of the random generator (reset whenever rates are set).
    pub seed: u64,
    /// Probability of `429` with `Retry-After: throttle_retry_after_secs`.
    pub throttle: f64,
    /// Probability of `500 Internal Server Error`.
    pub server_error: f64,
    /// Probability of `503 Service Unavailable`.
    pub unavailable: f64,
    /// Probability of closing the connection without a response.
    pub drop_connection: f64,
    /// Probability of waiting `latency_duration` before handling the request normally.
    pub latency: f64,
    /// Delay used by the `latency` fault.
    pub latency_duration: Duration,
    /// Probability of holding the request for `hang_duration` without an answer, then closing
    /// the connection (nothing stored).
    pub hang: f64,
    /// How long the `hang` fault holds a request.
    pub hang_duration: Duration,
    /// `Retry-After` seconds used by the `throttle` fault.
    pub throttle_retry_after_secs: u64,
}

impl Default for FaultRates {
    /// All rates 0.0, seed 0, latency 100 ms, hang 60 s, `Retry-After: 1`.
    fn default() -> Self {
        FaultRates {
            seed: 0,
            throttle: 0.0,
            server_error: 0.0,
            unavailable: 0.0,
            drop_connection: 0.0,
            latency: 0.0,
            latency_duration: Duration::from_millis(100),
            hang: 0.0,
            hang_duration: Duration::from_secs(60),
            throttle_retry_after_secs: 1,
        }
    }
}

/// The fault plan: scripted queue first, then random rates.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    scripted: VecDeque<(Fault, usize)>,
    rates: Option<(FaultRates, fastrand::Rng)>,
}

impl FaultPlan {
    pub(crate) fn new(rates: Option<FaultRates>) -> Self {
        let mut plan = FaultPlan::default();
        plan.set_rates(rates);
        plan
    }

    pub(crate) fn push(&mut self, fault: Fault, times: usize) {
        if times > 0 {
            self.scripted.push_back((fault, times));
        }
    }

    pub(crate) fn set_rates(&mut self, rates: Option<FaultRates>) {
        self.rates = rates.map(|r| {
            let rng = fastrand::Rng::with_seed(r.seed);
            (r, rng)
        });
    }

    pub(crate) fn clear(&mut self) {
        self.scripted.clear();
        self.rates = None;
    }

    /// The fault for the next arriving request, if any.
    pub(crate) fn next(&mut self) -> Option<Fault> {
        if let Some((fault, left)) = self.scripted.front_mut() {
            let fault = fault.clone();
            *left -= 1;
            if *left == 0 {
                self.scripted.pop_front();
            }
            return Some(fault);
        }
        let (rates, rng) = self.rates.as_mut()?;
        let u = rng.f64();
        let mut acc = 0.0;
        let choices = [
            (
                rates.throttle,
                Fault::Throttle {
                    retry_after_secs: rates.throttle_retry_after_secs,
                },
            ),
            (rates.server_error, Fault::Status(500)),
            (rates.unavailable, Fault::Status(503)),
            (rates.drop_connection, Fault::DropConnection),
            (rates.latency, Fault::Latency(rates.latency_duration)),
            (rates.hang, Fault::Hang(rates.hang_duration)),
        ];
        for (p, fault) in choices {
            if p.is_nan() || p <= 0.0 {
                continue;
            }
            acc += p;
            if u < acc {
                return Some(fault);
            }
        }
        None
    }
}

/// The error code used for an injected status.
pub(crate) fn status_error_code(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "InvalidAuthenticationToken",
        403 => "OperationFailed",
        404 => "NotFound",
        408 => "RequestTimeout",
        413 => "ContentLengthLimitExceeded",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "InjectedFault",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_is_fifo_and_counted() {
        let mut p = FaultPlan::new(None);
        p.push(Fault::Status(500), 2);
        p.push(Fault::DropConnection, 1);
        p.push(Fault::Status(503), 0);
        assert_eq!(p.next(), Some(Fault::Status(500)));
        assert_eq!(p.next(), Some(Fault::Status(500)));
        assert_eq!(p.next(), Some(Fault::DropConnection));
        assert_eq!(p.next(), None);
    }

    #[test]
    fn rates_are_reproducible_and_roughly_right() {
        let rates = FaultRates {
            seed: 42,
            throttle: 0.25,
            server_error: 0.25,
            ..FaultRates::default()
        };
        let mut a = FaultPlan::new(Some(rates.clone()));
        let mut b = FaultPlan::new(Some(rates));
        let sa: Vec<_> = (0..1000).map(|_| a.next()).collect();
        let sb: Vec<_> = (0..1000).map(|_| b.next()).collect();
        assert_eq!(sa, sb);
        let faults = sa.iter().filter(|f| f.is_some()).count();
        assert!((400..600).contains(&faults), "{faults}");
    }
}

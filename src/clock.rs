//! The event time, and its RFC 3339 text.
//!
//! `SystemTime::now()` costs about 35 ns on this project's VMs, a sixth of an event. Events read
//! the CPU's time-stamp counter instead (through `quanta`, which checks that the counter is
//! invariant and otherwise falls back to the OS monotonic clock; about 10 ns) and add the elapsed
//! counter time to a system-clock reading that each thread takes at most a millisecond earlier.
//! So event times follow clock steps (NTP, a manual change) within a millisecond, and differ from
//! `SystemTime::now()` by the counter's calibration error over at most a millisecond (33-142 ns
//! measured here) plus half the time one system-clock read takes (about 20 ns here): below the
//! column's microsecond resolution.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long a thread's system-clock reading serves before it takes a new one.
const ANCHOR_NANOS: u64 = 1_000_000;

/// A counter reading and the system time that goes with it, in nanoseconds since the Unix epoch.
#[derive(Clone, Copy)]
struct Anchor {
    raw: u64,
    nanos: u64,
}

thread_local! {
    /// This thread's anchor; `nanos == 0` means none yet.
    static ANCHOR: Cell<Anchor> = const { Cell::new(Anchor { raw: 0, nanos: 0 }) };
    /// The last second formatted on this thread: most events share it with the one before.
    static LAST_SECOND: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();

/// Calibrates the counter once per process (0.6 ms here; `quanta` stops at 200 ms), so that
/// the first event does not.
pub(crate) fn start() {
    counter();
}

fn counter() -> &'static quanta::Clock {
    CLOCK.get_or_init(quanta::Clock::new)
}

fn system_nanos() -> u64 {
    // Before 1970 the clock is wrong anyway; 0 keeps the text well-formed.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    #[cfg(test)]
    let nanos = nanos.saturating_add_signed(tests::SYSTEM_STEP.with(Cell::get));
    nanos
}

/// The current time in nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> u64 {
    let clock = counter();
    let raw = clock.raw();
    if let Ok(anchor) = ANCHOR.try_with(Cell::get)
        && anchor.nanos != 0
        && raw >= anchor.raw
    {
        let elapsed = clock.delta_as_nanos(anchor.raw, raw);
        if elapsed < ANCHOR_NANOS {
            return anchor.nanos + elapsed;
        }
    }
    reanchor(clock)
}

/// Reads the system clock between two counter readings and pairs it with their midpoint, so
/// the pair is off by at most half the time the read took (about 20 ns here). Tries again when
/// the readings are far apart (a preemption between them would shift every time until the next
/// anchor).
#[cold]
fn reanchor(clock: &quanta::Clock) -> u64 {
    const CLOSE_NANOS: u64 = 5_000;
    let mut anchor = Anchor { raw: 0, nanos: 0 };
    for _ in 0..8 {
        let before = clock.raw();
        let nanos = system_nanos();
        let after = clock.raw();
        // Counters of different cores can disagree: a thread moved between the readings.
        let after = after.max(before);
        anchor = Anchor {
            raw: before + (after - before) / 2,
            nanos,
        };
        if clock.delta_as_nanos(before, after) < CLOSE_NANOS {
            break;
        }
    }
    let _ = ANCHOR.try_with(|a| a.set(anchor));
    anchor.nanos
}

/// The current time as a JSON string, RFC 3339 UTC with microseconds, quotes included.
pub(crate) fn now_json() -> [u8; 29] {
    let nanos = now_nanos();
    json_at(nanos / 1_000_000_000, (nanos % 1_000_000_000 / 1_000) as u32)
}

/// `"2026-11-22T10:00:00.123456Z"` for a Unix second and the microseconds after it.
fn json_at(secs: u64, mut micros: u32) -> [u8; 29] {
    let mut buf = match LAST_SECOND.try_with(Cell::get) {
        Ok((cached, buf)) if cached == secs => buf,
        _ => {
            let buf = format_second(secs);
            let _ = LAST_SECOND.try_with(|last| last.set((secs, buf)));
            buf
        }
    };
    for i in (21..27).rev() {
        buf[i] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    buf
}

/// `"YYYY-MM-DDTHH:MM:SS.000000Z"` for a Unix second.
fn format_second(secs: u64) -> [u8; 29] {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let mut buf = *b"\"0000-00-00T00:00:00.000000Z\"";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, 4, year.clamp(0, 9999) as u64);
    put(6, 2, u64::from(month));
    put(9, 2, u64::from(day));
    put(12, 2, sod / 3600);
    put(15, 2, sod / 60 % 60);
    put(18, 2, sod % 60);
    buf
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    thread_local! {
        /// Nanoseconds added to this thread's system-clock readings: a clock step (NTP, a
        /// manual change) that only this test thread sees.
        pub(super) static SYSTEM_STEP: Cell<i64> = const { Cell::new(0) };
    }

    /// After a system-clock step, event times go on from the old anchor for at most the rest of
    /// its millisecond (by the counter), then follow the stepped clock, forwards and backwards.
    #[test]
    fn times_follow_a_system_clock_step_within_a_millisecond() {
        const SLACK: u64 = 10_000;
        for step in [10_000_000_000i64, -10_000_000_000] {
            reanchor(counter());
            let old = ANCHOR.with(Cell::get);
            SYSTEM_STEP.with(|s| s.set(s.get() + step));
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let before = system_nanos();
                let t = now_nanos();
                let after = system_nanos();
                if ANCHOR.with(Cell::get).raw != old.raw {
                    assert!(
                        t + SLACK >= before && t <= after + SLACK,
                        "the first time after a {step} ns step from a new anchor, {t}, is not on \
                         the stepped clock [{before}, {after}]"
                    );
                    break;
                }
                assert!(
                    t >= old.nanos && t - old.nanos < 1_000_000,
                    "time {t} from the anchor before the {step} ns step ({}) is more than a \
                     millisecond after it",
                    old.nanos
                );
                assert!(Instant::now() < deadline, "times never followed a {step} ns step");
            }
            // From then on, every time is on the stepped clock.
            for _ in 0..10_000 {
                let before = system_nanos();
                let t = now_nanos();
                assert!(
                    t + SLACK >= before && t <= system_nanos() + SLACK,
                    "{t} after a {step} ns step"
                );
            }
        }
        SYSTEM_STEP.with(|s| s.set(0));
    }

    fn time_json(t: SystemTime) -> [u8; 29] {
        let since = t.duration_since(UNIX_EPOCH).unwrap();
        json_at(since.as_secs(), since.subsec_micros())
    }

    fn text(buf: [u8; 29]) -> String {
        let json = String::from_utf8(buf.to_vec()).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn time_matches_a_reference_formatter() {
        for secs in [
            0u64,
            951_782_400,
            1_709_164_800,
            1_795_000_000,
            4_102_444_799,
            253_402_300_799,
        ] {
            for micros in [0u32, 1, 999_999] {
                let t = UNIX_EPOCH + Duration::new(secs, micros * 1000);
                let odt = azure_core::time::OffsetDateTime::from(t);
                let reference = format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                    odt.year(),
                    odt.month() as u8,
                    odt.day(),
                    odt.hour(),
                    odt.minute(),
                    odt.second(),
                    odt.microsecond()
                );
                assert_eq!(text(time_json(t)), reference);
            }
        }
    }

    #[test]
    fn times_within_one_second_reuse_the_prefix() {
        let base = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        for micros in [0u64, 7, 999_999] {
            let t = base + Duration::from_micros(micros);
            assert_eq!(text(time_json(t)), format!("2026-11-18T11:06:40.{micros:06}Z"));
        }
    }

    /// Every time comes from the counter and the thread's current anchor, renewed about every
    /// millisecond, and lies between system-clock readings taken just before and just after it,
    /// within 10 µs: twice the gap an anchor may have. Runs until 20 anchors have served (about
    /// 20 ms; longer when the thread is preempted, which a loaded machine does).
    #[test]
    fn counter_time_follows_the_system_clock() {
        const SLACK: u64 = 10_000;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut anchors = std::collections::HashSet::new();
        let mut checked = 0u64;
        while anchors.len() < 20 {
            let before = system_nanos();
            let t = now_nanos();
            let after = system_nanos();
            assert!(
                before - SLACK <= t && t <= after + SLACK,
                "counter time {t} outside [{before}, {after}] by more than {SLACK} ns"
            );
            let anchor = ANCHOR.with(Cell::get);
            assert!(
                anchor.nanos <= t && t - anchor.nanos < ANCHOR_NANOS,
                "time {t} not within a millisecond after its anchor {}",
                anchor.nanos
            );
            anchors.insert(anchor.raw);
            checked += 1;
            assert!(
                Instant::now() < deadline,
                "only {} anchors in 10 s: the anchor is not renewed",
                anchors.len()
            );
        }
        assert!(checked > 1_000, "only {checked} readings while 20 anchors served");
    }

    /// A time read well after the anchor (so from the counter, not the system clock) names the
    /// current microsecond.
    #[test]
    fn now_json_is_the_current_time() {
        now_nanos();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_micros(200) {}
        let before = system_nanos() / 1_000;
        let text = text(now_json());
        let after = system_nanos() / 1_000;
        let at = SystemTime::from(azure_core::time::parse_rfc3339(&text).unwrap());
        let micros = at.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        assert!(
            before <= micros + 10 && micros <= after + 10,
            "{before} <= {micros} ({text}) <= {after}"
        );
    }
}

//! Kernel timestamps are CLOCK_MONOTONIC; reports need wall-clock time.

use std::fmt;

/// Converts monotonic nanoseconds to nanoseconds since the Unix epoch, with
/// the offset between the two clocks taken once at start (as tcpdump does;
/// a later clock step does not move already-running traces).
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn new() -> Self {
        let monotonic = read(libc::CLOCK_MONOTONIC);
        let realtime = read(libc::CLOCK_REALTIME);
        Self {
            offset_ns: realtime - monotonic,
        }
    }

    pub fn wall_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }
}

/// CLOCK_MONOTONIC now, in the kernel timestamps' unit.
pub fn monotonic_now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC) as u64
}

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// RFC 3339 in UTC with nanoseconds, `2026-11-27T05:49:46.123456789Z`,
/// written straight into a formatter: this runs for every message.
pub struct Rfc3339(pub i128);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.div_euclid(1_000_000_000);
        let nanos = self.0.rem_euclid(1_000_000_000);
        let (year, month, day) = civil_from_days(seconds.div_euclid(86_400) as i64);
        let second_of_day = seconds.rem_euclid(86_400);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        )
    }
}

/// `HH:MM:SS.microseconds` in UTC, as tcpdump prints times.
pub struct TimeOfDay(pub i128);

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.rem_euclid(86_400 * 1_000_000_000) / 1_000;
        let seconds = micros / 1_000_000;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:06}",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            micros % 1_000_000
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm: eras of 400 years, years starting in March).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds() {
        let ns = 1_795_758_586_123_456_789i128;
        assert_eq!(Rfc3339(ns).to_string(), "2026-11-27T05:49:46.123456789Z");
        assert_eq!(TimeOfDay(ns).to_string(), "05:49:46.123456");
    }

    #[test]
    fn dates_match_the_calendar_across_leap_days_and_centuries() {
        // (unix seconds, date) pairs from `date -u -d @SECONDS`.
        for (seconds, expected) in [
            (0i128, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000000Z"),
            (4_107_542_400, "2100-03-01T00:00:00.000000000Z"),
            (1_709_164_800, "2024-02-29T00:00:00.000000000Z"),
        ] {
            assert_eq!(Rfc3339(seconds * 1_000_000_000).to_string(), expected);
        }
    }

    #[test]
    fn monotonic_maps_forward() {
        let clock = WallClock::new();
        assert_eq!(clock.wall_ns(2_000) - clock.wall_ns(1_000), 1_000);
    }
}

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

/// Nanoseconds since the Unix epoch, kept as bytes: an i128 field aligns
/// its struct to 16 bytes, and every open lookup's first attempt (65,536
/// lookups may be open) carried padding for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnalignedWallNs([u8; 16]);

impl From<i128> for UnalignedWallNs {
    fn from(wall_time_ns: i128) -> Self {
        Self(wall_time_ns.to_ne_bytes())
    }
}

impl UnalignedWallNs {
    pub fn get(self) -> i128 {
        i128::from_ne_bytes(self.0)
    }
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

impl Rfc3339 {
    /// Reads back what `Display` writes (any number of fraction digits);
    /// nanoseconds since the epoch.
    pub fn parse(text: &str) -> Option<i128> {
        let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
        // Digits only, so no sign and no year past 9999 (which would
        // overflow the day count).
        let number = |field: &str| {
            (!field.is_empty() && field.len() <= 4 && field.bytes().all(|b| b.is_ascii_digit()))
                .then(|| field.parse::<i64>().ok())
                .flatten()
        };
        let mut date = date.splitn(3, '-').map(number);
        let (year, month, day) = (date.next()??, date.next()??, date.next()??);
        let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
        let mut clock = clock.splitn(3, ':').map(number);
        let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
            || fraction.is_empty()
            || fraction.len() > 9
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let nanos: i128 = format!("{fraction:0<9}").parse().ok()?;
        let days = days_from_civil(year, month as u32, day as u32);
        let seconds = i128::from(days) * 86_400 + i128::from(hour * 3600 + minute * 60 + second);
        Some(seconds * 1_000_000_000 + nanos)
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

/// The inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_time_kept_unaligned_reads_back_the_same() {
        for ns in [0, 1_795_758_586_123_456_789, -1, i128::MIN, i128::MAX] {
            assert_eq!(UnalignedWallNs::from(ns).get(), ns);
        }
        assert_eq!(std::mem::align_of::<UnalignedWallNs>(), 1);
    }

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
    fn written_times_read_back() {
        for ns in [
            0i128,
            951_782_400_000_000_001,
            1_795_758_586_123_456_789,
            4_107_542_399_999_999_999,
        ] {
            assert_eq!(Rfc3339::parse(&Rfc3339(ns).to_string()), Some(ns));
        }
        assert_eq!(
            Rfc3339::parse("2026-11-27T05:49:46.5Z"),
            Some(1_795_758_586_500_000_000)
        );
        for bad in [
            "30000000000000000-01-01T00:00:00Z",
            "2026-11-27T-5:-1:-1Z",
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-11-27T05:49:46.Z",
            "x",
        ] {
            assert_eq!(Rfc3339::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn monotonic_maps_forward() {
        let clock = WallClock::new();
        assert_eq!(clock.wall_ns(2_000) - clock.wall_ns(1_000), 1_000);
    }
}

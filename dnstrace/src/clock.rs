//! Kernel timestamps are CLOCK_MONOTONIC; reports need wall-clock time.

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

fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// RFC 3339 in UTC with nanoseconds: `2026-11-27T05:49:46.123456789Z`.
pub fn rfc3339_ns(unix_ns: i128) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        ),
        Err(_) => format!("@{unix_ns}ns"),
    }
}

/// `HH:MM:SS.microseconds` in UTC, as tcpdump prints times.
pub fn time_of_day_us(unix_ns: i128) -> String {
    let rfc = rfc3339_ns(unix_ns);
    rfc.get(11..26).unwrap_or(&rfc).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds() {
        let ns = 1_795_758_586_123_456_789i128;
        assert_eq!(rfc3339_ns(ns), "2026-11-27T05:49:46.123456789Z");
        assert_eq!(time_of_day_us(ns), "05:49:46.123456");
    }

    #[test]
    fn monotonic_maps_forward() {
        let clock = WallClock::new();
        assert_eq!(clock.wall_ns(2_000) - clock.wall_ns(1_000), 1_000);
    }
}

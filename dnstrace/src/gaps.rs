//! Times when messages may be missing: the kernel dropped some because the
//! ring buffer was full, or the agent left them out of correlation while it
//! was behind. A lookup or a stray response whose time meets a gap is not
//! judged: what a missing message would have said (an answer, a repeat, the
//! query a response belongs to) is not known.

use std::collections::VecDeque;

/// Gaps remembered; past this the two oldest merge into one, which only
/// widens what is not judged.
const MAX_GAPS: usize = 1024;

/// How long before a stray response its query may have been sent (and
/// lost): longer than any resolver waits for an answer.
pub const STRAY_LOOKBACK_NS: u64 = 10_000_000_000;

/// Spans of CLOCK_MONOTONIC nanoseconds, as message timestamps are.
#[derive(Debug, Default)]
pub struct Gaps {
    spans: VecDeque<(u64, u64)>,
    /// A gap still growing: its start and latest time.
    open: Option<(u64, u64)>,
}

impl Gaps {
    /// Messages from `start` to `end` may be missing.
    pub fn add(&mut self, start: u64, end: u64) {
        if let Some(last) = self.spans.back_mut()
            && start <= last.1
            && last.0 <= end
        {
            *last = (last.0.min(start), last.1.max(end));
            return;
        }
        self.spans.push_back((start, end));
        if self.spans.len() > MAX_GAPS
            && let Some((oldest, _)) = self.spans.pop_front()
            && let Some(next) = self.spans.front_mut()
        {
            next.0 = next.0.min(oldest);
        }
    }

    /// A message at `at` was left out; the gap stays open until `close`.
    pub fn extend_open(&mut self, at: u64) {
        self.open = Some(match self.open {
            Some((start, end)) => (start.min(at), end.max(at)),
            None => (at, at),
        });
    }

    pub fn close(&mut self) {
        if let Some((start, end)) = self.open.take() {
            self.add(start, end);
        }
    }

    /// Whether messages from `start` to `end` may be missing. An open gap
    /// reaches forward without end: what it leaves out is still coming.
    pub fn meet(&self, start: u64, end: u64) -> bool {
        self.open.is_some_and(|(open_start, _)| open_start <= end)
            || self.spans.iter().any(|&(s, e)| s <= end && start <= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_meets_the_gaps_it_overlaps() {
        let mut gaps = Gaps::default();
        gaps.add(10, 20);
        gaps.add(15, 30);
        gaps.add(50, 60);
        assert_eq!(gaps.spans.len(), 2, "overlapping gaps merge");
        assert!(gaps.meet(0, 10));
        assert!(gaps.meet(25, 40));
        assert!(!gaps.meet(31, 49));
        assert!(!gaps.meet(61, 100));
        gaps.extend_open(80);
        gaps.extend_open(70);
        assert!(gaps.meet(100, 200), "an open gap reaches forward");
        assert!(!gaps.meet(61, 69));
        gaps.close();
        assert!(!gaps.meet(100, 200));
        assert!(gaps.meet(75, 75));
    }

    #[test]
    fn the_oldest_gaps_merge_past_the_cap() {
        let mut gaps = Gaps::default();
        for n in 0..(MAX_GAPS as u64 + 10) {
            gaps.add(n * 10, n * 10 + 1);
        }
        assert_eq!(gaps.spans.len(), MAX_GAPS);
        assert!(gaps.meet(5, 5), "widened, never forgotten");
    }
}

//! Load shedding: correlation pauses only while the agent is really
//! behind, which the ring buffer's backlog tells. Every process is
//! correlated however busy it is (within the correlator's memory budget);
//! what falls behind is the agent as a whole, never one client.

/// The rule: correlation pauses when the records waiting in the ring reach
/// half of it, and resumes once they are down to an eighth. Between the
/// two, the agent keeps doing what it did, so it does not flap.
pub struct Shedding {
    ring_bytes: usize,
    on: bool,
}

/// A change the rule made.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Fell behind, with the ring this full (percent).
    Behind(usize),
    CaughtUp,
}

impl Shedding {
    pub fn new(ring_bytes: usize) -> Self {
        Self {
            ring_bytes,
            on: false,
        }
    }

    /// `backlog` bytes of records wait in the ring.
    pub fn observe(&mut self, backlog: usize) -> Option<Change> {
        if !self.on && backlog >= self.ring_bytes / 2 {
            self.on = true;
            return Some(Change::Behind(backlog * 100 / self.ring_bytes.max(1)));
        }
        if self.on && backlog <= self.ring_bytes / 8 {
            self.on = false;
            return Some(Change::CaughtUp);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_pauses_at_half_and_resumes_at_an_eighth() {
        let mut shedding = Shedding::new(1024);
        assert_eq!(shedding.observe(511), None);
        assert_eq!(shedding.observe(600), Some(Change::Behind(58)));
        assert_eq!(shedding.observe(300), None, "no flapping in between");
        assert_eq!(shedding.observe(128), Some(Change::CaughtUp));
        assert_eq!(shedding.observe(300), None);
    }
}

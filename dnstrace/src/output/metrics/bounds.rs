//! What keeps the number of series bounded: label values get a slot of
//! their own up to a limit, and series unused for the grace period go.

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

use prometheus_client::metrics::family::{Family, MetricConstructor};

/// Label values with series of their own, at most `max`; the rest are
/// folded by the caller. A value unused since the cutoff gives its slot
/// back.
pub struct Slots<K, V> {
    max: usize,
    /// Each value's label, and when it was last used.
    used: HashMap<K, (V, u64)>,
}

impl<K: Hash + Eq, V: Clone> Slots<K, V> {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: HashMap::new(),
        }
    }

    /// The label of `key`, given a slot now if one is free (`label` makes
    /// it); `None` when every slot is taken.
    pub fn admit<Q>(&mut self, key: &Q, now: u64, label: impl FnOnce() -> V) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some((value, used)) = self.used.get_mut(key) {
            *used = now;
            return Some(value.clone());
        }
        if self.used.len() >= self.max {
            return None;
        }
        let value = label();
        self.used.insert(key.to_owned(), (value.clone(), now));
        Some(value)
    }

    /// Frees the slots last used before `cutoff`.
    pub fn expire(&mut self, cutoff: u64) {
        self.used.retain(|_, (_, used)| *used >= cutoff);
    }
}

/// A metric family whose series are removed once unused since the cutoff,
/// so the series of clients that are gone go with them.
pub struct Expiring<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    used: HashMap<L, u64>,
}

impl<L, M, C> Expiring<L, M, C> {
    pub fn new(family: Family<L, M, C>) -> Self {
        Self {
            family,
            used: HashMap::new(),
        }
    }
}

impl<L, M, C> Expiring<L, M, C>
where
    L: Clone + Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    /// The series of `labels`, made if it is new.
    pub fn get(&mut self, labels: L, now: u64) -> M {
        let metric = self.family.get_or_create_owned(&labels);
        self.used.insert(labels, now);
        metric
    }

    pub fn expire(&mut self, cutoff: u64) {
        let family = &self.family;
        self.used.retain(|labels, used| {
            let keep = *used >= cutoff;
            if !keep {
                family.remove(labels);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn slots_fill_up_then_free_when_unused() {
        let mut slots: Slots<String, String> = Slots::new(2);
        assert_eq!(slots.admit("a", 1, || "A".into()), Some("A".into()));
        assert_eq!(slots.admit("b", 2, || "B".into()), Some("B".into()));
        assert_eq!(slots.admit("c", 3, || "C".into()), None, "full");
        assert_eq!(slots.admit("a", 4, || unreachable!()), Some("A".into()));
        slots.expire(3);
        assert_eq!(
            slots.admit("c", 5, || "C".into()),
            Some("C".into()),
            "b went"
        );
        assert_eq!(slots.admit("b", 6, || "B".into()), None);
    }

    #[test]
    fn expired_series_leave_the_family() {
        let family: Family<Vec<(String, String)>, Counter> = Family::default();
        let mut expiring = Expiring::new(family.clone());
        let labels = |v: &str| vec![("k".to_owned(), v.to_owned())];
        expiring.get(labels("old"), 1).inc();
        expiring.get(labels("new"), 5).inc();
        expiring.expire(3);
        assert!(family.get(&labels("old")).is_none());
        assert_eq!(family.get(&labels("new")).map(|c| c.get()), Some(1));
    }
}

//! How many of each key something holds, each key forgotten at none:
//! whether anything holds a key is then told without a pass over the
//! holders.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, RandomState},
};

pub struct Tally<K, S = RandomState>(HashMap<K, u32, S>);

impl<K, S: Default> Default for Tally<K, S> {
    fn default() -> Self {
        Self(HashMap::default())
    }
}

impl<K: Eq + Hash, S: BuildHasher> Tally<K, S> {
    pub fn add(&mut self, key: K) {
        *self.0.entry(key).or_default() += 1;
    }

    /// One fewer of `key`, which is forgotten at none.
    pub fn take(&mut self, key: &K) {
        if let Some(count) = self.0.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(key);
            }
        }
    }

    pub fn count(&self, key: &K) -> u32 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// Whether any is held; nearly always asked of an empty tally, which
    /// tells without hashing.
    pub fn contains(&self, key: &K) -> bool {
        !self.0.is_empty() && self.0.contains_key(key)
    }
}

impl<K: Eq + Hash, S: BuildHasher> PartialEq for Tally<K, S> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Tally<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn a_key_is_held_until_each_of_it_is_taken() {
        let mut tally: Tally<u8> = Tally::default();
        tally.add(1);
        tally.add(1);
        tally.take(&1);
        assert!(tally.contains(&1));
        tally.take(&1);
        assert!(!tally.contains(&1));
        assert_eq!(tally.count(&1), 0);
        tally.take(&1);
        assert_eq!(tally, Tally::default(), "nothing left, not even the key");
    }
}

//! A bounded cache of statement analysis, keyed by the exact command text.
//!
//! [`extract_components`] is a pure function of the text, so the same text always
//! gives the same [`Components`]: a cache keyed by the whole text (compared in full,
//! never by a hash alone) returns exactly what a fresh analysis would. Integrators
//! send the same few statements over and over, and analysis (two lexers, a parser
//! and a tree walk) is the costliest step of the Cloud's request path, so a known
//! text skips it.
//!
//! Bounds: at most `capacity` texts, of at most [`MAX_CACHED_TEXT_BYTES`] each
//! (longer ones are analysed every time); eviction is `quick_cache`'s CLOCK-Pro, so
//! a flood of one-off texts does not push out the hot ones. Only successful
//! analyses are kept: a refused text is analysed (and refused) again each time.
//! The cache lives in memory only.

use std::sync::Arc;

use crate::{Components, PolicyError, extract_components};

/// The longest command text kept in the cache, in bytes.
pub const MAX_CACHED_TEXT_BYTES: usize = 4096;

/// A bounded, thread-safe cache in front of [`extract_components`].
pub struct ComponentCache {
    cache: quick_cache::sync::Cache<Box<str>, Arc<Components>>,
}

impl std::fmt::Debug for ComponentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the texts: they may hold literals from patient queries.
        f.debug_struct("ComponentCache")
            .field("len", &self.cache.len())
            .field("capacity", &self.cache.capacity())
            .finish()
    }
}

impl ComponentCache {
    /// The default number of texts kept (at most 4 KiB each: 16 MiB at worst).
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// A cache of at most `capacity` texts (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The components of `sql`: from the cache if this exact text was analysed
    /// before, else [`extract_components`]'s answer (kept if it succeeded).
    ///
    /// # Errors
    /// Those of [`extract_components`]: the command must then be denied.
    pub fn extract(&self, sql: &str) -> Result<Arc<Components>, PolicyError> {
        if let Some(hit) = self.cache.get(sql) {
            return Ok(hit);
        }
        let components = Arc::new(extract_components(sql)?);
        if sql.len() <= MAX_CACHED_TEXT_BYTES {
            self.cache.insert(sql.into(), Arc::clone(&components));
        }
        Ok(components)
    }

    /// How many texts are cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.len() == 0
    }
}

impl Default for ComponentCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_answer_equals_a_fresh_analysis() {
        let cache = ComponentCache::new(8);
        for sql in [
            "SELECT a FROM patients",
            "SELECT a FROM Patients p JOIN [dbo].[Appointments] x ON x.id = p.id",
            "INSERT INTO notes (a) VALUES (1)",
        ] {
            let first = cache.extract(sql).expect("analyses");
            let second = cache.extract(sql).expect("analyses");
            assert!(Arc::ptr_eq(&first, &second), "the second is a hit");
            assert_eq!(*second, extract_components(sql).expect("analyses"));
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn texts_differing_in_one_character_are_told_apart() {
        let cache = ComponentCache::new(8);
        let a = cache.extract("SELECT * FROM patients").expect("analyses");
        let b = cache.extract("SELECT * FROM patientz").expect("analyses");
        assert_eq!(a.tables().collect::<Vec<_>>(), ["patients"]);
        assert_eq!(b.tables().collect::<Vec<_>>(), ["patientz"]);
    }

    #[test]
    fn refusals_are_not_cached_and_stay_refusals() {
        let cache = ComponentCache::new(8);
        for _ in 0..2 {
            assert!(cache.extract("SELECT FROM WHERE").is_err());
            assert!(cache.extract("SELECT 1 /* nested /* */ */").is_err());
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_by_capacity_and_text_length() {
        let cache = ComponentCache::new(4);
        for i in 0..100 {
            cache
                .extract(&format!("SELECT a FROM t{i}"))
                .expect("analyses");
        }
        assert!(cache.len() <= 4, "{} cached", cache.len());
        let long = format!(
            "SELECT a FROM t WHERE a = '{}'",
            "x".repeat(MAX_CACHED_TEXT_BYTES)
        );
        let empty = ComponentCache::new(4);
        empty.extract(&long).expect("analyses");
        assert!(empty.is_empty(), "a text over the limit is not kept");
    }
}

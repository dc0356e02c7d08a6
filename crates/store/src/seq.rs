//! Sequence numbers of log records.

use std::fmt;

/// The position of a record in the log: the first record is 1, and [`Seq::ZERO`]
/// means "before the first record" (an empty log, or a snapshot of the empty state).
///
/// Sequence numbers are dense: a log holds 1, 2, 3, ... with no gaps, which is what
/// lets recovery detect a missing record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(u64);

impl Seq {
    /// Before the first record.
    pub const ZERO: Seq = Seq(0);

    /// Wraps a raw sequence number.
    pub const fn new(n: u64) -> Self {
        Seq(n)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The following sequence number, or `None` at `u64::MAX`.
    pub fn checked_next(self) -> Option<Seq> {
        self.0.checked_add(1).map(Seq)
    }

    /// As SQLite's signed integer.
    pub(crate) fn to_sql(self) -> Result<i64, crate::StoreError> {
        i64::try_from(self.0).map_err(|_| crate::StoreError::SeqOverflow)
    }

    /// From SQLite's signed integer; negative values (never written by this crate)
    /// map to `None`.
    pub(crate) fn from_sql(n: i64) -> Option<Seq> {
        u64::try_from(n).ok().map(Seq)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

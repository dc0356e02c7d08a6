//! Lock-free rate limits (GCRA token buckets) and monthly quotas on atomics.
//!
//! Each counter is one `AtomicU64` updated with a compare-and-swap loop, so many
//! routing threads can take tokens without a lock and without allocating.
//!
//! - [`Bucket`] stores the GCRA "theoretical arrival time" (TAT) in microseconds.
//!   Admitting a request at `now` moves TAT to `max(TAT, now) + interval`; a request
//!   is refused when `TAT - now` would exceed `interval * (burst - 1)`. This is the
//!   token bucket of `burst` tokens refilled at `per_second`, in one word.
//! - [`MonthlyQuota`] packs the month number (months since 1970-01, UTC) in the high
//!   24 bits and the count in the low 40 bits; a new month resets the count.
//!
//! Orderings: `Relaxed` throughout. Each word is self-contained (no other memory is
//! published through it); the CAS makes every update atomic, which is all a counter
//! needs.

use std::sync::atomic::{AtomicU64, Ordering};

use halo_ids::Timestamp;

use crate::event::RateLimit;

/// A GCRA token bucket on one atomic word.
#[derive(Debug)]
pub(crate) struct Bucket {
    limit: RateLimit,
    /// Microseconds between tokens.
    interval_us: u64,
    /// How far TAT may run ahead of now, in microseconds.
    tolerance_us: u64,
    /// Theoretical arrival time, microseconds since the epoch.
    tat_us: AtomicU64,
}

impl Bucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let interval_us = (1_000_000 / u64::from(limit.per_second.max(1))).max(1);
        let tolerance_us = interval_us.saturating_mul(u64::from(limit.burst.max(1)) - 1);
        Self {
            limit,
            interval_us,
            tolerance_us,
            tat_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token, or returns the milliseconds to wait (at least 1).
    pub(crate) fn take(&self, now: Timestamp) -> Result<(), u64> {
        let now_us = now.as_millis().saturating_mul(1000);
        let mut current = self.tat_us.load(Ordering::Relaxed);
        loop {
            let tat = current.max(now_us);
            let ahead = tat - now_us;
            if ahead > self.tolerance_us {
                let wait_us = ahead - self.tolerance_us;
                return Err(wait_us.div_ceil(1000).max(1));
            }
            let next = tat.saturating_add(self.interval_us);
            match self.tat_us.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A per-calendar-month counter on one atomic word.
#[derive(Debug)]
pub(crate) struct MonthlyQuota {
    per_month: u64,
    word: AtomicU64,
}

impl MonthlyQuota {
    pub(crate) fn new(per_month: u64) -> Self {
        Self {
            per_month: per_month.min(COUNT_MASK),
            word: AtomicU64::new(0),
        }
    }

    pub(crate) fn per_month(&self) -> u64 {
        self.per_month
    }

    /// Counts one query in the month of `now`, or refuses when the month's quota is
    /// used up.
    pub(crate) fn take(&self, now: Timestamp) -> Result<(), ()> {
        let month = month_index(now);
        let mut current = self.word.load(Ordering::Relaxed);
        loop {
            let (m, count) = (current >> COUNT_BITS, current & COUNT_MASK);
            // A clock that steps back into an older month counts against the newer
            // month rather than reopening the old one.
            let (m, count) = if month > m { (month, 0) } else { (m, count) };
            if count >= self.per_month {
                return Err(());
            }
            let next = (m << COUNT_BITS) | (count + 1);
            match self.word.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back one query taken in this month (used when a later check refuses).
    pub(crate) fn give_back(&self) {
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w & COUNT_MASK > 0).then(|| w - 1)
            });
    }
}

/// Months since 1970-01 (UTC) of a timestamp, by the civil-from-days algorithm.
pub(crate) fn month_index(now: Timestamp) -> u64 {
    let days = now.as_millis() / 86_400_000;
    // Howard Hinnant's civil_from_days, for non-negative day numbers.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y.saturating_sub(1970)) * 12 + (m - 1)
}

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
//! On a cluster each counter also counts what it admitted since it was last
//! [drained](Bucket::drain) (`pending`), and absorbs what the other nodes admitted:
//! a bucket is [charged](Bucket::charge) their tokens, a quota is
//! [raised](MonthlyQuota::raise_to) to the cluster's total (see [`crate::shared`]).
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
    /// Tokens taken here since the last [`Bucket::drain`].
    pending: AtomicU64,
}

/// The most debt other nodes' tokens may put on a bucket, beyond its burst: a
/// bogus total read back cannot lock a caller out for longer than this.
const MAX_CHARGE_US: u64 = 10_000_000;

impl Bucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        let interval_us = (1_000_000 / u64::from(limit.per_second.max(1))).max(1);
        let tolerance_us = interval_us.saturating_mul(u64::from(limit.burst.max(1)) - 1);
        Self {
            limit,
            interval_us,
            tolerance_us,
            tat_us: AtomicU64::new(0),
            pending: AtomicU64::new(0),
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
                Ok(_) => {
                    self.pending.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The tokens taken here since the last call.
    pub(crate) fn drain(&self) -> u64 {
        self.pending.swap(0, Ordering::Relaxed)
    }

    /// Charges `tokens` that other nodes took, as if taken at `now` (the bucket
    /// runs ahead by at most its burst plus [`MAX_CHARGE_US`]).
    pub(crate) fn charge(&self, tokens: u64, now: Timestamp) {
        if tokens == 0 {
            return;
        }
        let now_us = now.as_millis().saturating_mul(1000);
        let cap = now_us
            .saturating_add(self.tolerance_us)
            .saturating_add(MAX_CHARGE_US);
        let _ = self
            .tat_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let next = tat
                    .max(now_us)
                    .saturating_add(tokens.saturating_mul(self.interval_us))
                    .min(cap);
                (next > tat).then_some(next)
            });
    }
}

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// A per-calendar-month counter on one atomic word.
#[derive(Debug)]
pub(crate) struct MonthlyQuota {
    per_month: u64,
    word: AtomicU64,
    /// Queries counted here since the last [`MonthlyQuota::drain`].
    pending: AtomicU64,
}

impl MonthlyQuota {
    pub(crate) fn new(per_month: u64) -> Self {
        Self {
            per_month: per_month.min(COUNT_MASK),
            word: AtomicU64::new(0),
            pending: AtomicU64::new(0),
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
                Ok(_) => {
                    self.pending.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
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
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| p.checked_sub(1));
    }

    /// The month counted in and the queries counted here since the last call.
    pub(crate) fn drain(&self) -> (u64, u64) {
        let taken = self.pending.swap(0, Ordering::Relaxed);
        (self.word.load(Ordering::Relaxed) >> COUNT_BITS, taken)
    }

    /// Raises the count of `month` to the cluster's `total` (which includes what
    /// was drained here) plus what was counted here since. Never lowers it, and
    /// leaves a newer month alone.
    pub(crate) fn raise_to(&self, month: u64, total: u64) {
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                let (m, count) = (w >> COUNT_BITS, w & COUNT_MASK);
                let wanted = total
                    .saturating_add(self.pending.load(Ordering::Relaxed))
                    .min(COUNT_MASK);
                match month.cmp(&m) {
                    std::cmp::Ordering::Less => None,
                    std::cmp::Ordering::Equal => {
                        (wanted > count).then_some((m << COUNT_BITS) | wanted)
                    }
                    std::cmp::Ordering::Greater => Some((month << COUNT_BITS) | wanted),
                }
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

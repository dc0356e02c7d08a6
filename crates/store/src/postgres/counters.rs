//! Quota and rate-limit totals shared by the nodes of a cluster, in
//! `halo_counters`: one row per counter and period (a quota's month; 0 for a rate
//! limit), holding everything every node admitted on it.
//!
//! A node sends what it admitted since its last round and reads back, in the same
//! statement, the totals it added to and every total changed since its previous
//! round ([`PgCounters::exchange`]). Each row's `updated_at` is the database's
//! clock; a round reads rows changed since a little before the previous round's
//! time, so a transaction that committed late is still seen (reading a total twice
//! is harmless). The counters are never written to the event log.

use std::time::Duration;

use tokio_postgres::Client;

use super::{Blocking, PgOptions};
use crate::StoreError;

/// How far before the previous round's time the next round reads: longer than
/// any round trip may take, so a change committed late is not missed.
const OVERLAP: Duration = Duration::from_secs(10);

/// What one round read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterRound {
    /// `(key, period, total)`: the counters added to, and those changed since the
    /// previous round.
    pub totals: Vec<(String, u64, u64)>,
}

/// A blocking handle on the counter table (its own connection): call it from a
/// thread of its own, never from an async task.
#[derive(Debug)]
pub struct PgCounters {
    conn: Blocking,
    /// The database's time of the previous round, in microseconds since the epoch
    /// (`None`: read every row).
    since_us: Option<i64>,
}

impl PgCounters {
    /// A handle that connects on first use; its first round reads every total.
    /// The schema must have been migrated (opening a [`super::PgLog`] does it).
    ///
    /// # Errors
    /// The client runtime cannot start.
    pub fn new(options: PgOptions) -> Result<Self, StoreError> {
        Ok(PgCounters {
            conn: Blocking::new(options)?,
            since_us: None,
        })
    }

    /// One round, in one statement: adds each `(key, period, delta)` to its
    /// total and reads back those totals and every one changed since the
    /// previous round. After an error the deltas' fate is unknown only if the
    /// statement timed out; the caller sends them again (counting them twice
    /// errs towards refusing).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached;
    /// [`StoreError::Postgres`] for a delta or period out of range.
    pub fn exchange(&mut self, deltas: &[(String, u64, u64)]) -> Result<CounterRound, StoreError> {
        // Rows are locked in one order on every node: no deadlock between rounds.
        let mut sorted: Vec<&(String, u64, u64)> = deltas.iter().collect();
        sorted.sort_unstable_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        let mut keys = Vec::with_capacity(deltas.len());
        let mut periods = Vec::with_capacity(deltas.len());
        let mut adds = Vec::with_capacity(deltas.len());
        for (key, period, delta) in sorted {
            keys.push(key.as_str());
            periods.push(to_i64(*period)?);
            adds.push(to_i64(*delta)?);
        }
        let overlap_us = i64::try_from(OVERLAP.as_micros()).unwrap_or(i64::MAX);
        let since = self.since_us.map_or(0, |s| s.saturating_sub(overlap_us));
        let rows = self.conn.run(async |c: &mut Client| {
            c.query(
                "WITH added AS (
                     INSERT INTO halo_counters (key, period, total)
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                     ON CONFLICT (key, period) DO UPDATE
                         SET total = halo_counters.total + EXCLUDED.total, updated_at = now()
                     RETURNING key, period, total)
                 SELECT key, period, total FROM added
                 UNION ALL
                 SELECT key, period, total FROM halo_counters
                 WHERE updated_at > to_timestamp($4::double precision / 1e6)
                   AND (key, period) NOT IN (SELECT key, period FROM added)
                 UNION ALL
                 SELECT NULL, NULL, (extract(epoch FROM now()) * 1e6)::bigint",
                &[&keys, &periods, &adds, &(since as f64)],
            )
            .await
        })?;
        let mut round = CounterRound::default();
        for row in rows {
            let key: Option<String> = row.get(0);
            let period: Option<i64> = row.get(1);
            let total: i64 = row.get(2);
            match (key, period) {
                (Some(key), Some(period)) => round.totals.push((
                    key,
                    u64::try_from(period).unwrap_or(0),
                    u64::try_from(total).unwrap_or(0),
                )),
                _ => self.since_us = Some(total),
            }
        }
        Ok(round)
    }
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Postgres(format!("counter value {n} out of range")))
}

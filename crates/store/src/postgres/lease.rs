//! Link leases: which Cloud node each Link is attached to, in `link_leases`.
//!
//! A node that attaches a Link [takes](PgLeases::take) its lease (unconditionally:
//! the Link connecting is the proof that it moved), renews the leases of all its
//! Links in one statement per round ([`PgLeases::renew`]), which also reads every
//! other node's live lease, and [releases](PgLeases::release) a lease when its Link
//! detaches. Expiry is the database's clock (`now()`), so nodes' clocks need not
//! agree. Leases are never written to the event log: they are not decisions, and
//! their renewals would flood the writer.

use std::time::Duration;

use tokio_postgres::Client;

use super::{Blocking, PgOptions};
use crate::StoreError;

/// Another node's live lease, as read in a renewal round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLease {
    /// The Link (its GUID as text).
    pub link_id: String,
    /// The node holding it.
    pub node_id: String,
    /// Where that node takes forwarded requests (empty: it takes none).
    pub peer_addr: String,
    /// How long the lease still runs, by the database's clock.
    pub remaining: Duration,
}

/// What one renewal round found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRound {
    /// The Links whose lease this node renewed (a Link whose live lease another
    /// node holds is not renewed: it moved).
    pub renewed: Vec<String>,
    /// Every live lease held by another node.
    pub others: Vec<LiveLease>,
}

/// A blocking handle on the lease table (its own connection, its own client
/// runtime): call it from a thread of its own, never from an async task.
#[derive(Debug)]
pub struct PgLeases {
    conn: Blocking,
}

/// Seconds, as PostgreSQL's `make_interval` takes them.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgLeases {
    /// A handle that connects on first use. The schema must have been migrated
    /// (opening a [`super::PgLog`] does it).
    ///
    /// # Errors
    /// The client runtime cannot start.
    pub fn new(options: PgOptions) -> Result<Self, StoreError> {
        Ok(PgLeases {
            conn: Blocking::new(options)?,
        })
    }

    fn run<T>(
        &mut self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.conn.run(op)
    }

    /// Takes the leases of `links` for `node` (whoever held them), for `ttl`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub fn take(
        &mut self,
        node: &str,
        peer_addr: &str,
        links: &[String],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if links.is_empty() {
            return Ok(());
        }
        let ttl = secs(ttl);
        self.run(async |c: &mut Client| {
            c.execute(
                "INSERT INTO link_leases (link_id, node_id, peer_addr, expires_at)
                 SELECT l, $1, $2, now() + make_interval(secs => $4)
                 FROM unnest($3::text[]) AS l
                 ON CONFLICT (link_id) DO UPDATE SET node_id = EXCLUDED.node_id,
                     peer_addr = EXCLUDED.peer_addr, expires_at = EXCLUDED.expires_at",
                &[&node, &peer_addr, &links, &ttl],
            )
            .await
            .map(|_| ())
        })
    }

    /// One renewal round, in one statement: extends `node`'s leases of `links`
    /// (only those it still holds, or whose lease lapsed) by `ttl`, and reads
    /// every live lease of the other nodes.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub fn renew(
        &mut self,
        node: &str,
        peer_addr: &str,
        links: &[String],
        ttl: Duration,
    ) -> Result<LeaseRound, StoreError> {
        let ttl = secs(ttl);
        let rows = self.run(async |c: &mut Client| {
            c.query(
                "WITH renewed AS (
                     INSERT INTO link_leases (link_id, node_id, peer_addr, expires_at)
                     SELECT l, $1, $2, now() + make_interval(secs => $4)
                     FROM unnest($3::text[]) AS l
                     ON CONFLICT (link_id) DO UPDATE SET node_id = EXCLUDED.node_id,
                         peer_addr = EXCLUDED.peer_addr, expires_at = EXCLUDED.expires_at
                     WHERE link_leases.node_id = EXCLUDED.node_id
                        OR link_leases.expires_at <= now()
                     RETURNING link_id)
                 SELECT link_id, ''::text, ''::text, 0::bigint, true FROM renewed
                 UNION ALL
                 SELECT link_id, node_id, peer_addr,
                        (extract(epoch FROM expires_at - now()) * 1000)::bigint, false
                 FROM link_leases
                 WHERE expires_at > now() AND node_id <> $1
                   AND link_id NOT IN (SELECT link_id FROM renewed)",
                &[&node, &peer_addr, &links, &ttl],
            )
            .await
        })?;
        let mut round = LeaseRound::default();
        for row in rows {
            let link_id: String = row.get(0);
            if row.get::<_, bool>(4) {
                round.renewed.push(link_id);
            } else {
                round.others.push(LiveLease {
                    link_id,
                    node_id: row.get(1),
                    peer_addr: row.get(2),
                    remaining: Duration::from_millis(
                        u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
                    ),
                });
            }
        }
        Ok(round)
    }

    /// Gives up `node`'s leases of `links` (a lease another node took since is
    /// left alone).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub fn release(&mut self, node: &str, links: &[String]) -> Result<(), StoreError> {
        if links.is_empty() {
            return Ok(());
        }
        self.run(async |c: &mut Client| {
            c.execute(
                "DELETE FROM link_leases WHERE node_id = $1 AND link_id = ANY($2::text[])",
                &[&node, &links],
            )
            .await
            .map(|_| ())
        })
    }
}

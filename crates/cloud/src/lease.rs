//! Link leases on a cluster node: where each Link is attached, recorded in
//! PostgreSQL (`halo_store::PgLeases`), never in the event log.
//!
//! - **Taking.** A Link session that attaches here takes its Link's lease at once
//!   (whichever node held it: the Link connecting here is the proof that it moved).
//! - **Renewing.** A thread of its own renews the leases of all the Links attached
//!   here every [`ClusterConfig::lease_renew_every`] (one statement per round, not
//!   per Link), for [`ClusterConfig::lease_ttl`]; the same statement reads every
//!   other node's live lease, which is where this node forwards requests for the
//!   Links it does not hold ([`crate::forward`]).
//! - **Reading again at once.** When a forward finds its lease stale (the holder
//!   refused the connection, or answered that it no longer holds the Link),
//!   [`LinkLeases::refresh`] runs a round now instead of at the next renewal, so a
//!   Link that moved is found at once. The rounds asked for at the same moment are
//!   one round, and they come at most every [`REFRESH_GAP`].
//! - **Failing closed.** This node routes to a Link of its own only while the
//!   lease it last renewed runs (measured from before the renewal was sent, so it
//!   ends here before it ends in the database). When it lapses (the database is
//!   lost, or another node took the Link), the Link's session is closed, so that
//!   the Link reconnects to a node that can hold its lease; meanwhile its sites
//!   are answered 503 with `Retry-After`. A renewal that succeeds again restores
//!   routing by itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use halo_ids::LinkGuid;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::cluster::ClusterConfig;

/// Where a request for a Link's site should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The Link is attached here and this node holds its lease: run it here.
    Local,
    /// Another node holds the Link's live lease: forward to it.
    Remote {
        /// That node's name.
        node_id: String,
        /// Where it takes forwarded requests.
        peer_addr: SocketAddr,
    },
    /// No node can serve the Link now (no live lease, or this node's lapsed):
    /// answer 503 with `Retry-After`.
    Nowhere,
}

#[derive(Debug)]
struct Attachment {
    generation: u64,
    attached_at: Instant,
    /// The end of the lease this node last renewed; `None` until first taken.
    held_until: Option<Instant>,
    /// Woken when the lease lapsed, to close the session.
    lapsed: Arc<Notify>,
}

#[derive(Debug)]
struct Remote {
    node_id: String,
    peer_addr: Option<SocketAddr>,
    until: Instant,
}

#[derive(Debug, Default)]
struct Table {
    attached: HashMap<LinkGuid, Attachment>,
    remote: HashMap<LinkGuid, Remote>,
    next_generation: u64,
}

enum Op {
    Take(LinkGuid),
    Release(LinkGuid),
    /// Run a round now and say when it is done.
    Refresh(tokio::sync::oneshot::Sender<()>),
}

/// The shortest time between two rounds that [`LinkLeases::refresh`] asked for.
pub const REFRESH_GAP: Duration = Duration::from_millis(50);

/// This node's view of the Link leases: its own attachments and the other nodes'
/// live leases.
pub struct LinkLeases {
    node_id: String,
    ttl: Duration,
    /// The longest [`LinkLeases::refresh`] waits (the database deadline).
    timeout: Duration,
    table: Arc<Mutex<Table>>,
    ops: Mutex<mpsc::Sender<Op>>,
}

impl std::fmt::Debug for LinkLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.table.lock();
        f.debug_struct("LinkLeases")
            .field("node_id", &self.node_id)
            .field("attached", &table.attached.len())
            .field("remote", &table.remote.len())
            .finish_non_exhaustive()
    }
}

/// Held by a Link session while it is attached here; dropping it releases the
/// lease.
#[derive(Debug)]
pub struct Held {
    leases: Arc<LinkLeases>,
    link: LinkGuid,
    generation: u64,
    lapsed: Arc<Notify>,
}

impl Held {
    /// Completes when this node's lease of the Link lapsed (the session must end).
    pub async fn lapsed(&self) {
        self.lapsed.notified().await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut table = self.leases.table.lock();
        let ours = table
            .attached
            .get(&self.link)
            .is_some_and(|a| a.generation == self.generation);
        if ours {
            table.attached.remove(&self.link);
            drop(table);
            let _ = self.leases.ops.lock().send(Op::Release(self.link));
        }
    }
}

/// Why a session ends when its node's lease of the Link lapses.
pub const LAPSED: &str = "this node's lease of the link lapsed (its store is unreachable, or another node holds the link)";

/// Completes when `held`'s lease lapsed; never without a lease (a node outside a
/// cluster). A session polls it beside its own work, in its own loop: a wrapper
/// future taking the session's future by value would hold that future twice (an
/// `async fn`'s argument and the value it awaits are separate slots), which cost
/// every idle Link about 2 KB.
pub async fn lapsed(held: Option<&Held>) {
    match held {
        Some(held) => held.lapsed().await,
        None => std::future::pending().await,
    }
}

impl LinkLeases {
    /// Starts the lease thread of a node (see the module docs).
    ///
    /// # Errors
    /// The thread or the database client cannot start.
    pub fn start(config: &ClusterConfig) -> Result<Arc<Self>, std::io::Error> {
        let (tx, rx) = mpsc::channel();
        let table = Arc::new(Mutex::new(Table::default()));
        let leases = Arc::new(LinkLeases {
            node_id: config.node_id.clone(),
            ttl: config.lease_ttl,
            timeout: config.timeout,
            table: Arc::clone(&table),
            ops: Mutex::new(tx),
        });
        let db = halo_store::PgLeases::new(config.pg_options())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let worker = Worker {
            db,
            node_id: config.node_id.clone(),
            peer_addr: config.peer_addr.map(|a| a.to_string()).unwrap_or_default(),
            ttl: config.lease_ttl,
            every: config.lease_renew_every,
            table,
        };
        std::thread::Builder::new()
            .name(format!("halo-leases-{}", config.node_id))
            .spawn(move || worker.run(&rx))?;
        Ok(leases)
    }

    /// Records that `link` attached here and takes its lease.
    pub fn attached(self: &Arc<Self>, link: LinkGuid) -> Held {
        let lapsed = Arc::new(Notify::new());
        let mut table = self.table.lock();
        table.next_generation += 1;
        let generation = table.next_generation;
        table.attached.insert(
            link,
            Attachment {
                generation,
                attached_at: Instant::now(),
                held_until: None,
                lapsed: Arc::clone(&lapsed),
            },
        );
        table.remote.remove(&link);
        drop(table);
        let _ = self.ops.lock().send(Op::Take(link));
        Held {
            leases: Arc::clone(self),
            link,
            generation,
            lapsed,
        }
    }

    /// Where a request for `link`'s sites should run now.
    pub fn placement(&self, link: LinkGuid) -> Placement {
        let now = Instant::now();
        let table = self.table.lock();
        if let Some(a) = table.attached.get(&link) {
            if a.held_until.is_some_and(|until| until > now) {
                return Placement::Local;
            }
        }
        match table.remote.get(&link) {
            Some(Remote {
                node_id,
                peer_addr: Some(peer_addr),
                until,
            }) if *until > now => Placement::Remote {
                node_id: node_id.clone(),
                peer_addr: *peer_addr,
            },
            _ => Placement::Nowhere,
        }
    }

    /// Reads every node's leases again now (one renewal round, shared with the
    /// callers asking at the same moment) and returns once it is done, or after the
    /// database deadline: [`LinkLeases::placement`] then answers from what the
    /// database says now rather than from the last periodic round.
    pub async fn refresh(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.ops.lock().send(Op::Refresh(done)).is_err() {
            return;
        }
        let _ = tokio::time::timeout(self.timeout, wait).await;
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// How long a lease runs.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// When a round asked for by [`LinkLeases::refresh`] is due: `now` (at once), or
/// [`REFRESH_GAP`] after the last round; `None` when nobody asked.
fn refresh_due<T>(waiting: &[T], last_round: Option<Instant>, now: Instant) -> Option<Instant> {
    if waiting.is_empty() {
        return None;
    }
    Some(last_round.map_or(now, |at| at + REFRESH_GAP))
}

struct Worker {
    db: halo_store::PgLeases,
    node_id: String,
    peer_addr: String,
    ttl: Duration,
    every: Duration,
    table: Arc<Mutex<Table>>,
}

impl Worker {
    fn run(mut self, ops: &mpsc::Receiver<Op>) {
        let mut next_round = Instant::now();
        let mut last_round: Option<Instant> = None;
        let mut takes: Vec<LinkGuid> = Vec::new();
        let mut releases: Vec<LinkGuid> = Vec::new();
        let mut waiting: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
        loop {
            let due = refresh_due(&waiting, last_round, Instant::now())
                .map_or(next_round, |at| at.min(next_round));
            let wait = due.saturating_duration_since(Instant::now());
            match ops.recv_timeout(wait) {
                Ok(op) => {
                    let mut push = |op| match op {
                        Op::Take(l) => takes.push(l),
                        Op::Release(l) => releases.push(l),
                        Op::Refresh(done) => waiting.push(done),
                    };
                    push(op);
                    while let Ok(op) = ops.try_recv() {
                        push(op);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The node is gone.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if !releases.is_empty() {
                let ids: Vec<String> = releases.iter().map(ToString::to_string).collect();
                match self.db.release(&self.node_id, &ids) {
                    Ok(()) => releases.clear(),
                    // It lapses by itself; retried next time.
                    Err(e) => tracing::debug!(error = %e, "cannot release link leases"),
                }
            }
            if !takes.is_empty() {
                let started = Instant::now();
                let ids: Vec<String> = takes.iter().map(ToString::to_string).collect();
                match self.db.take(&self.node_id, &self.peer_addr, &ids, self.ttl) {
                    Ok(()) => {
                        let mut table = self.table.lock();
                        for link in takes.drain(..) {
                            if let Some(a) = table.attached.get_mut(&link) {
                                a.held_until = Some(started + self.ttl);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take link leases; retrying");
                        // Retried in the next round, which renews (or takes a lapsed
                        // lease of) every attached Link anyway.
                        takes.clear();
                    }
                }
            }
            let now = Instant::now();
            let refresh = refresh_due(&waiting, last_round, now).is_some_and(|at| now >= at);
            if refresh || now >= next_round {
                last_round = Some(now);
                self.round();
                next_round = Instant::now() + self.every;
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }

    /// One renewal round: renew, read the others' leases, close what lapsed.
    fn round(&mut self) {
        let started = Instant::now();
        let ids: Vec<String> = {
            let table = self.table.lock();
            table.attached.keys().map(ToString::to_string).collect()
        };
        let result = self
            .db
            .renew(&self.node_id, &self.peer_addr, &ids, self.ttl);
        let mut table = self.table.lock();
        match result {
            Ok(round) => {
                for id in &round.renewed {
                    if let Some(a) = id
                        .parse::<LinkGuid>()
                        .ok()
                        .and_then(|l| table.attached.get_mut(&l))
                    {
                        a.held_until = Some(started + self.ttl);
                    }
                }
                table.remote = round
                    .others
                    .into_iter()
                    .filter_map(|lease| {
                        let link = lease.link_id.parse::<LinkGuid>().ok()?;
                        Some((
                            link,
                            Remote {
                                peer_addr: lease.peer_addr.parse().ok(),
                                node_id: lease.node_id,
                                until: started + lease.remaining,
                            },
                        ))
                    })
                    .collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, node = %self.node_id, "cannot renew link leases");
            }
        }
        // Close the sessions whose lease lapsed (or was never taken within a TTL).
        let now = Instant::now();
        for (link, a) in &table.attached {
            let until = a.held_until.unwrap_or(a.attached_at + self.ttl);
            if until <= now {
                tracing::warn!(%link, "link lease lapsed; closing its session");
                a.lapsed.notify_one();
            }
        }
    }
}

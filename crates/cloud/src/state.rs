//! The Cloud's shared state: one writer thread that applies events, makes them
//! durable and only then publishes them, and read views that never wait for it.
//!
//! # Write path
//!
//! Every change is a command sent over a channel to the writer, a thread of its own
//! that owns the private state (registry, grants, credentials, the store). Each
//! command carries its reply. The writer takes the first command, drains whatever
//! else is queued (group commit), and for each, in order, applies its events to the
//! private state (a refused event changes nothing and is not logged, and neither is
//! a tenancy event that would change nothing: a Link's hello repeated unchanged,
//! see `Registry::changes_nothing`). Then it
//! appends every accepted record of the batch in one `append_batch` (one fsync), and
//! only after that publishes the batch to readers (router, registry view,
//! credentials, policy) and answers the commands, in order. If the append fails the
//! private state is ahead of the disk, so the process stops (fail-stop) rather than
//! serve state that a restart would lose. A refusal is answered after the batch is
//! durable too, since it may depend on an earlier change of the same batch.
//!
//! Async callers `.await` a [`Reply`]; synchronous callers (tests, tools) call
//! [`Reply::wait`].
//!
//! # Read paths
//!
//! No reader takes a lock the writer holds across IO:
//! - routing reads the lock-free router;
//! - the status endpoints read the published registry ([`CloudState::registry`]), a
//!   second copy behind a `RwLock` that the writer write-locks only after the fsync,
//!   for as long as it takes to apply the already-durable events again in memory;
//! - credential checks and listings read an `ArcSwap` of the credentials, replaced
//!   after each durable batch that changed them;
//! - availability comes from the router's per-Link last-heard atomic
//!   ([`CloudState::availability_of`]), which heartbeats update directly
//!   ([`CloudState::heartbeat`]): heartbeats never reach the writer.
//!
//! So readers see only durable events, and never wait for an fsync.
//!
//! The readers' registry is a second copy: about 430 bytes per site (the resident
//! growth of a clone at 100 000 sites, `examples/writer_bench.rs`), so roughly
//! 0.4 to 0.7 GB at 1 000 000 sites. One copy would need either a lock held across
//! the fsync (readers wait) or a way to check a batch of events without applying
//! them (an undo or dry-run in `halo-tenancy`); the copy is the price of keeping the
//! core unchanged.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use halo_ids::{LinkGuid, Timestamp};
use halo_policy::GrantsSnapshot;
use halo_policy::{Grants, KeyHash, Policy, PolicyError, PolicyEvent};
use halo_router::Router;
use halo_store::{
    AnyLog, EventLog as _, RecoveryReport, Seq, SqliteLog, StateWriter, Store, StoreConfig,
    StoreError,
};
use halo_tenancy::{
    Availability, AvailabilityConfig, Change, Event, LogEntry, Registration, Registry,
    RegistrySnapshot, Site, TenancyError,
};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::audit::{self, AuditEntry, AuditTrail, Note};
use crate::audit_form::AuditSnapshot;
use crate::cluster::{ClusterConfig, ClusterHealth};
use crate::metrics::StateMetrics;
use crate::record::{CredentialEvent, RECORD_VERSION, Record, RecordCodec};
use halo_credentials::{CredentialError, Credentials};

/// The snapshot format version this build writes (it reads 1 to this one). Version
/// 3 writes the registry in its compact binary form (base64); versions 1 and 2 hold
/// its JSON object, which still loads. Version 4 adds the audit trail
/// ([`crate::audit_form`]); without it (versions 1 to 3) the trail is rebuilt from
/// the whole log. Version 5 compresses the registry's and the audit trail's bytes
/// (LZ4, `packed.rs`): about a seventh of the bytes to write and to read back.
/// A build that reads only up to 4 skips a version-5 snapshot as undecodable and
/// replays the log instead.
pub const SNAPSHOT_VERSION: u32 = 5;

/// The full state, as stored in a snapshot: each part in its own crate's versioned
/// snapshot form.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// The tenancy registry (see `registry_form.rs` for its two encodings).
    #[serde(with = "crate::registry_form")]
    pub registry: RegistrySnapshot,
    /// The access-policy grants.
    pub grants: GrantsSnapshot,
    /// The Link credentials.
    pub credentials: Credentials,
    /// The audit trail as far as it had read the log (format 4 on; `None` in older
    /// snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSnapshot>,
}

type CloudStore = Store<Record, Snapshot, AnyLog, RecordCodec>;

/// Settings of the Cloud's state.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Where the durable log lives; `None` keeps everything in memory (tests only).
    pub data_dir: Option<PathBuf>,
    /// Snapshot after at least this many events (0: never). The effective interval
    /// is never below the number of sites, so the cost of snapshots stays a small
    /// constant per event however large the state grows.
    pub snapshot_every: u64,
    /// Availability thresholds for site status.
    pub availability: AvailabilityConfig,
    /// Start even if the log's tail is damaged, setting the unreadable tail aside.
    /// Off by default: damage stops the start, so an operator decides.
    pub accept_damaged_log: bool,
}

/// Why opening the state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The log could not be opened or read.
    #[error("event log: {0}")]
    Store(#[from] StoreError),
    /// The log is damaged after the last good event; nothing was started.
    #[error(
        "event log damaged: {0}; restore a backup, or start with --accept-damaged-log to recover up to the last good event and set the rest aside"
    )]
    Damaged(String),
    /// SQLite reports the log's database file itself as damaged (a page, not one
    /// record); nothing was started and nothing was written.
    #[error(
        "the event log's storage is damaged: SQLite reports {path} as damaged ({reason}). This is damage to the database file itself, not to one record, so the Cloud cannot start on it; the file was left as it was. Run `halo-store salvage {dir} <new-dir>` to copy every readable record into a new log and see what was lost, then start with --data-dir <new-dir>; or start with --accept-damaged-log to do the same in place (the damaged file is moved to {dir}/damaged-<time>/ and kept, never deleted)"
    )]
    StorageDamaged {
        /// The damaged database file.
        path: String,
        /// SQLite's message.
        reason: String,
        /// The data directory.
        dir: String,
    },
    /// The snapshot decoded but does not form a valid state.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A logged event did not apply on replay (the log and this build disagree).
    #[error("replaying record {index}: {message}")]
    Replay {
        /// Zero-based index in the replayed tail.
        index: usize,
        /// What failed.
        message: String,
    },
}

/// How long each part of opening the state took (wall clock), for the log and for
/// `examples/recovery_bench.rs`. All zero without a data directory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RecoveryTimings {
    /// Opening the log, reading and decoding the newest snapshot, reading the tail.
    pub read: std::time::Duration,
    /// The audit trail: the snapshot's copy decoded and the log after it read.
    pub audit: std::time::Duration,
    /// The registry, grants and credentials rebuilt from the snapshot.
    pub restore: std::time::Duration,
    /// The log's tail after the snapshot replayed.
    pub replay: std::time::Duration,
    /// The router's table loaded and the readers' copy of the registry made (the
    /// two run side by side).
    pub publish: std::time::Duration,
    /// Of `publish`: the router's table.
    pub router: std::time::Duration,
    /// Of `publish`: the readers' copy of the registry.
    pub readers_copy: std::time::Duration,
    /// All of it, from the call to `open` until the writer starts.
    pub total: std::time::Duration,
}

/// Called on the writer thread just before each durable append, with the number of
/// records in it; for tests and measurements (count the fsyncs, or hold an append
/// to show that readers do not wait for it). See [`CloudState::open_with_hook`].
pub type AppendHook = Arc<dyn Fn(usize) + Send + Sync>;

/// How often recovery reports its progress, in replayed events.
const RECOVERY_PROGRESS_EVERY: usize = 100_000;

/// The most records one group commit gathers before it appends; what is still
/// queued then goes in the next one.
const MAX_BATCH_RECORDS: usize = 8192;

/// What the writer publishes for readers: only durable state, and never behind a
/// lock held across IO.
#[derive(Debug)]
struct Published {
    /// The registry as of the last durable batch; write-locked only to apply that
    /// batch's (already durable) events in memory.
    registry: RwLock<Registry>,
    /// The credentials as of the last durable batch.
    credentials: ArcSwap<Credentials>,
    /// The audit trail as of the last durable batch; write-locked only to append
    /// that batch's entries.
    audit: RwLock<AuditTrail>,
    /// The live Link sessions' revocation listeners: kicked once a revocation or
    /// rotation is published, whichever node decided it.
    kicks: Arc<crate::link_ws::Kicks>,
}

/// Sends one command's answer once its batch is durable.
type Responder<T> = Box<dyn FnOnce(T) + Send>;

/// A change (or a snapshot) for the writer, with where to send the answer.
enum Command {
    Tenancy {
        events: Vec<Event>,
        now: Timestamp,
        /// The first event gates the rest: if it is refused, none of the others is
        /// applied (each answers its error). A Link's hello: a refused registration
        /// attaches no database.
        gated: bool,
        reply: Responder<Vec<Result<(), TenancyError>>>,
    },
    Policy {
        event: PolicyEvent,
        now: Timestamp,
        note: Note,
        reply: Responder<Result<(), PolicyError>>,
    },
    Credential {
        event: CredentialEvent,
        now: Timestamp,
        note: Note,
        reply: Responder<Result<(), CredentialError>>,
    },
    /// An audit entry that no event carries (a route denial sample); unanswered.
    Audit {
        entry: AuditEntry,
        now: Timestamp,
    },
    Snapshot {
        reply: Responder<Result<(), StoreError>>,
    },
    Capture {
        reply: Responder<Snapshot>,
    },
    /// Apply what other nodes appended to the shared log (cluster mode).
    CatchUp,
    /// Runs on the writer thread with the private state, after what came before is
    /// durable (tests compare the private state with the published one).
    #[cfg(test)]
    Inspect(Box<dyn FnOnce(&Writer) + Send>),
}

/// The writer's answer to one command: `.await` it in async code, or
/// [`wait`](Reply::wait) for it in synchronous code. The command is queued as soon
/// as the method returns, whether or not the reply is ever read.
#[must_use = "the change is queued either way; the reply says whether it was applied"]
pub struct Reply<T>(oneshot::Receiver<T>);

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").finish_non_exhaustive()
    }
}

impl<T> Reply<T> {
    /// Blocks this thread until the writer answers. For synchronous code only
    /// (tests, tools, benchmarks): in async code, `.await` the reply instead.
    ///
    /// # Panics
    /// When called from within an async runtime (tokio's rule for blocking waits).
    pub fn wait(self) -> T {
        self.0.blocking_recv().unwrap_or_else(|_| writer_gone())
    }
}

impl<T> Future for Reply<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or_else(|_| writer_gone()))
    }
}

/// The writer answers every command it received before it stops, and it stops only
/// when the state is dropped or when it aborts the process; so a missing answer
/// means it died, and nothing it held can be trusted.
fn writer_gone() -> ! {
    tracing::error!("the state writer stopped without answering; stopping");
    std::process::abort()
}

/// Aborts the process if the writer thread unwinds: the private state may be ahead
/// of the disk or of what readers see, and no one would answer the callers.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the state writer panicked; stopping");
            std::process::abort();
        }
    }
}

/// One group commit in the making: the accepted records, their effects to publish,
/// and the answers to send once they are durable.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    changes: Vec<Change>,
    tenancy: bool,
    policy: bool,
    credentials: bool,
    answers: Vec<Box<dyn FnOnce() + Send>>,
    /// Cluster mode: each staged change again, to decide it anew after another
    /// node appended first (see [`Writer::commit_shared`]).
    retries: Vec<Retry>,
}

/// Makes a change's command again, answering the same caller.
type Retry = Box<dyn FnMut() -> Command + Send>;

impl Writer {
    /// An empty writer: no store, nothing recovered, nothing published yet.
    fn new(snapshot_every: u64, router: &Arc<Router>, hook: Option<AppendHook>) -> Self {
        Self {
            registry: Registry::new(),
            grants: Grants::default(),
            credentials: Credentials::default(),
            store: None,
            snapshot_every,
            since_snapshot: 0,
            background: None,
            snapshotting: Arc::new(AtomicBool::new(false)),
            router: Arc::clone(router),
            // Filled in once recovered (`CloudState::open`).
            published: Arc::new(Published {
                registry: RwLock::new(Registry::new()),
                credentials: ArcSwap::from_pointee(Credentials::default()),
                audit: RwLock::new(AuditTrail::default()),
                kicks: Arc::default(),
            }),
            log_end: 0,
            audit_covers_next: false,
            hook,
            metrics: Arc::new(StateMetrics::default()),
            cluster: None,
        }
    }
}

/// A responder that several attempts share; the first answer wins, and only an
/// attempt that became durable answers.
fn shared<T: Send + 'static>(reply: Responder<T>) -> impl Fn() -> Responder<T> + Send {
    let slot = Arc::new(Mutex::new(Some(reply)));
    move || {
        let slot = Arc::clone(&slot);
        Box::new(move |answer| {
            if let Some(reply) = slot.lock().take() {
                reply(answer);
            }
        })
    }
}

/// Splits a change into its first attempt and a way to make it again; control
/// commands (snapshot, capture, catch-up) are never retried.
fn retryable(command: Command) -> (Command, Option<Retry>) {
    let mut retry: Retry = match command {
        Command::Tenancy {
            events,
            now,
            gated,
            reply,
        } => {
            let reply = shared(reply);
            Box::new(move || Command::Tenancy {
                events: events.clone(),
                now,
                gated,
                reply: reply(),
            })
        }
        Command::Policy {
            event,
            now,
            note,
            reply,
        } => {
            let reply = shared(reply);
            Box::new(move || Command::Policy {
                event: event.clone(),
                now,
                note: note.clone(),
                reply: reply(),
            })
        }
        Command::Credential {
            event,
            now,
            note,
            reply,
        } => {
            let reply = shared(reply);
            Box::new(move || Command::Credential {
                event: event.clone(),
                now,
                note: note.clone(),
                reply: reply(),
            })
        }
        Command::Audit { entry, now } => Box::new(move || Command::Audit {
            entry: entry.clone(),
            now,
        }),
        other => return (other, None),
    };
    (retry(), Some(retry))
}

/// The writer's part in a cluster: the durable grants to roll back to, and the
/// node's health.
struct SharedLog {
    health: Arc<ClusterHealth>,
    /// The grants as of the last durable record (the private ones may be ahead
    /// while a batch is being decided).
    durable_grants: Grants,
    /// Set while a catch-up is queued, so the follower queues at most one.
    catch_up_queued: Arc<AtomicBool>,
}

/// Sleeps `backoff`, then doubles it (at most 2 s): the writer's pause between
/// tries at the shared log.
fn pause(backoff: &mut std::time::Duration) {
    std::thread::sleep(*backoff);
    *backoff = (*backoff * 2).min(std::time::Duration::from_secs(2));
}

/// The private write side, owned by the writer thread.
struct Writer {
    registry: Registry,
    grants: Grants,
    credentials: Credentials,
    store: Option<CloudStore>,
    /// Snapshot setting (0: never).
    snapshot_every: u64,
    /// Events logged since the last snapshot (or since the start of the log).
    since_snapshot: u64,
    /// Writes periodic snapshots on a thread of its own, so that encoding and
    /// storing a large state does not hold up the writer; `None` without a data dir.
    background: Option<Arc<Mutex<StateWriter<Snapshot>>>>,
    /// Set while a background snapshot is being written (at most one at a time).
    snapshotting: Arc<AtomicBool>,
    /// The sequence number of the last record appended (counted without a store
    /// too): audit entries take their record's number as their id.
    log_end: u64,
    /// Whether record `log_end` is an audit entry covering the record after it
    /// (never at the end of a batch in practice: such an entry is appended with the
    /// record it covers); kept for the snapshot's copy of the trail.
    audit_covers_next: bool,
    /// Where to publish durable changes.
    router: Arc<Router>,
    published: Arc<Published>,
    hook: Option<AppendHook>,
    /// What the metrics endpoint reports about the log and snapshots.
    metrics: Arc<StateMetrics>,
    /// Cluster mode: the log is shared with other nodes; `None` on SQLite.
    cluster: Option<SharedLog>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("sites", &self.registry.site_count())
            .field("since_snapshot", &self.since_snapshot)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// The writer thread: takes a command, drains what else is queued, commits the
    /// batch; until every sender is gone.
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        let _abort = AbortOnUnwind;
        let mut batch = Batch::default();
        while let Ok(first) = commands.recv() {
            let mut next = Some(first);
            while let Some(command) = next {
                if self.cluster.is_some() {
                    let (command, retry) = retryable(command);
                    batch.retries.extend(retry);
                    self.stage(command, &mut batch);
                } else {
                    self.stage(command, &mut batch);
                }
                next = if batch.records.len() < MAX_BATCH_RECORDS {
                    commands.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(&mut batch);
        }
    }

    /// Applies one command to the private state and adds its records, effects and
    /// answer to the batch. A snapshot first commits what is staged, so it holds
    /// only durable events.
    fn stage(&mut self, command: Command, batch: &mut Batch) {
        match command {
            Command::Tenancy {
                events,
                now,
                gated,
                reply,
            } => {
                let mut results: Vec<Result<(), TenancyError>> = Vec::with_capacity(events.len());
                for event in events {
                    if gated && let Some(Err(refused)) = results.first() {
                        results.push(Err(refused.clone()));
                        continue;
                    }
                    // A Link's hello repeated unchanged (every reconnection, and every
                    // Link at once after a restart) is neither applied nor logged: no
                    // record, no fsync. Its liveness is the router's atomic.
                    if self.registry.changes_nothing(&event) {
                        results.push(Ok(()));
                        continue;
                    }
                    let promotion = audit::for_promotion(&event);
                    let first_change = batch.changes.len();
                    match self.registry.apply_into(&event, now, &mut batch.changes) {
                        Ok(()) => {
                            let authority = audit::for_authority(
                                &event,
                                &batch.changes[first_change..],
                                &self.registry,
                            );
                            if let Some(entry) = promotion {
                                batch.records.push(audit_record(now, true, entry));
                            }
                            batch
                                .records
                                .push(Record::Tenancy(LogEntry::new(now, event)));
                            for entry in authority {
                                batch.records.push(audit_record(now, false, entry));
                            }
                            batch.tenancy = true;
                            results.push(Ok(()));
                        }
                        Err(e) => results.push(Err(e)),
                    }
                }
                batch.answers.push(Box::new(move || reply(results)));
            }
            Command::Policy {
                event,
                now,
                note,
                reply,
            } => {
                let result = self.grants.apply(&event);
                if result.is_ok() {
                    let entry = audit::for_policy(&event, &note);
                    batch.records.push(audit_record(now, true, entry));
                    batch.records.push(Record::Policy {
                        version: RECORD_VERSION,
                        at: now,
                        event,
                    });
                    batch.policy = true;
                }
                batch.answers.push(Box::new(move || reply(result)));
            }
            Command::Credential {
                event,
                now,
                note,
                reply,
            } => {
                let result = self.credentials.apply(&event);
                if result.is_ok() {
                    let entry = audit::for_credential(&event, &note);
                    batch.records.push(audit_record(now, true, entry));
                    batch.records.push(Record::Credential {
                        version: RECORD_VERSION,
                        at: now,
                        event,
                    });
                    batch.credentials = true;
                }
                batch.answers.push(Box::new(move || reply(result)));
            }
            Command::Audit { entry, now } => {
                batch.records.push(audit_record(now, false, entry));
            }
            Command::Snapshot { reply } => {
                self.commit(batch);
                reply(self.snapshot());
            }
            Command::Capture { reply } => {
                self.commit(batch);
                reply(self.snapshot_form());
            }
            Command::CatchUp => {
                self.commit(batch);
                if let Some(cluster) = &self.cluster {
                    cluster.catch_up_queued.store(false, Ordering::Release);
                }
                match self.catch_up() {
                    Ok(()) => self.set_available(true),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot follow the shared log");
                        self.set_available(false);
                    }
                }
            }
            #[cfg(test)]
            Command::Inspect(f) => {
                self.commit(batch);
                f(self);
            }
        }
    }

    /// Makes the batch durable (one append, one fsync), then publishes it and
    /// answers its commands in order.
    fn commit(&mut self, batch: &mut Batch) {
        let batch = std::mem::take(batch);
        if self.cluster.is_some() {
            self.commit_shared(batch);
            return;
        }
        let base = self.log_end;
        self.persist(&batch.records);
        self.publish(batch, base);
    }

    /// Publishes a durable batch whose first record has sequence number
    /// `base + 1`, then answers its commands in order.
    fn publish(&mut self, batch: Batch, base: u64) {
        self.log_end = base + batch.records.len() as u64;
        if let Some(last) = batch.records.last() {
            self.audit_covers_next = matches!(
                last,
                Record::Audit {
                    covers_next: true,
                    ..
                }
            );
        }
        self.publish_audit(base, &batch.records);
        if batch.tenancy {
            self.router.apply_changes(&self.registry, &batch.changes);
            let mut published = self.published.registry.write();
            for record in &batch.records {
                if let Record::Tenancy(entry) = record {
                    if let Err(e) = published.apply(&entry.event, entry.at) {
                        // Determinism is property-tested in halo-tenancy; if it broke,
                        // readers would see a state the log does not give.
                        tracing::error!(error = %e, "the published registry refused a durable event; stopping");
                        std::process::abort();
                    }
                }
            }
        }
        if batch.credentials {
            self.published
                .credentials
                .store(Arc::new(self.credentials.clone()));
            // Now that a session's next check sees it: the Link bound to a revoked
            // or rotated credential re-checks at once. Looked up here, after every
            // earlier binding was applied, so a binding that raced the revocation
            // (a Link bound while the admin request ran, or on another node) is
            // kicked too.
            for record in &batch.records {
                if let Some(link) = self.revoked_link(record) {
                    self.published.kicks.kick(link);
                }
            }
        }
        if batch.policy {
            if let Some(cluster) = self.cluster.as_mut() {
                for record in &batch.records {
                    if let Record::Policy { event, .. } = record {
                        if let Err(e) = cluster.durable_grants.apply(event) {
                            tracing::error!(error = %e, "the durable grants refused a durable event; stopping");
                            std::process::abort();
                        }
                    }
                }
            }
            let previous = self.router.policy();
            self.router
                .set_policy(Arc::new(self.grants.compile_with(&previous)));
        }
        for answer in batch.answers {
            answer();
        }
    }

    /// The Link bound to the credential a revocation or rotation record ends.
    fn revoked_link(&self, record: &Record) -> Option<LinkGuid> {
        let Record::Credential { event, .. } = record else {
            return None;
        };
        let hash = match event {
            CredentialEvent::Revoked { token_hash, .. } => token_hash,
            // The binding moved to the new token.
            CredentialEvent::Rotated { to, .. } => to,
            _ => return None,
        };
        self.credentials.get(hash)?.link
    }

    /// Publishes the batch's audit entries (now durable); record `i` of the batch
    /// has sequence number `base + 1 + i`.
    fn publish_audit(&self, base: u64, records: &[Record]) {
        let mut entries = records
            .iter()
            .enumerate()
            .filter_map(|(i, record)| match record {
                Record::Audit { at, entry, .. } => Some(audit::Stored {
                    id: base + 1 + i as u64,
                    at: *at,
                    entry: entry.clone(),
                }),
                _ => None,
            })
            .peekable();
        if entries.peek().is_none() {
            return;
        }
        let mut trail = self.published.audit.write();
        for stored in entries {
            trail.push(stored);
        }
    }

    /// Appends records durably; stops the process if that fails (see module docs).
    fn persist(&mut self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if let Some(hook) = &self.hook {
            hook(records.len());
        }
        tracing::debug!(target: "halo_cloud::writer", records = records.len(), "group commit: one append, one fsync");
        let appending = std::time::Instant::now();
        if let Err(e) = store.append_batch(records) {
            tracing::error!(error = %e, "cannot append to the event log; stopping to avoid serving state a restart would lose");
            std::process::abort();
        }
        self.metrics
            .appended(records.len(), appending.elapsed(), store.last_commit_time());
        self.appended(records.len());
    }

    /// Counts appended records towards the next snapshot and starts one when due.
    fn appended(&mut self, records: usize) {
        self.since_snapshot += records as u64;
        self.metrics
            .since_snapshot
            .store(self.since_snapshot, Ordering::Relaxed);
        let interval = self.snapshot_every.max(self.registry.site_count() as u64);
        if self.snapshot_every > 0 && self.since_snapshot >= interval {
            self.snapshot_in_background();
        }
    }

    /// Cluster mode: appends the batch only if the shared log still ends where
    /// the batch was decided (`log_end`). If another node appended first, rolls
    /// the private state back to the durable one, catches up and decides every
    /// change of the batch again. While the database cannot be reached, keeps
    /// trying: nothing is acknowledged until it is durable (the HTTP layer refuses
    /// new changes meanwhile, see [`crate::cluster::fail_closed`]).
    fn commit_shared(&mut self, mut batch: Batch) {
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            let base = self.log_end;
            if batch.records.is_empty() {
                // Only refusals (or nothing): no append, so nothing learnt about the
                // store either.
                self.publish(batch, base);
                return;
            }
            match self.append_shared(&batch.records, base) {
                Ok(()) => {
                    self.set_available(true);
                    self.publish(batch, base);
                    return;
                }
                Err(StoreError::ConcurrentWriter { .. }) => {
                    if let Some(cluster) = &self.cluster {
                        cluster.health.conflicted();
                    }
                    tracing::debug!(target: "halo_cloud::writer", at = base, "another node appended first; deciding again");
                }
                Err(StoreError::Unavailable(reason) | StoreError::Postgres(reason)) => {
                    tracing::warn!(%reason, "cannot append to the shared log; retrying");
                    self.set_available(false);
                    pause(&mut backoff);
                    // An append whose answer was lost (a timeout) may have committed:
                    // then the batch is published as it was decided, not decided
                    // again (its events would now be refused, or repeated).
                    if self.committed_after_all(&batch.records, base, &mut backoff) {
                        tracing::info!(target: "halo_cloud::writer", at = base, "the append committed after all");
                        self.set_available(true);
                        self.appended(batch.records.len());
                        self.publish(batch, base);
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot append to the shared log; stopping");
                    std::process::abort();
                }
            }
            // The batch's outcome is unknown or refused: start again from what is
            // durable, plus whatever the log holds now (an append that timed out
            // may have committed; then it comes back here as a followed record).
            self.rollback();
            while let Err(e) = self.catch_up() {
                tracing::warn!(error = %e, "cannot read the shared log; retrying");
                self.set_available(false);
                pause(&mut backoff);
            }
            let mut retries = std::mem::take(&mut batch.retries);
            let mut again = Batch::default();
            for retry in &mut retries {
                self.stage(retry(), &mut again);
            }
            again.retries = retries;
            batch = again;
        }
    }

    /// Whether the shared log holds exactly `records` right after `base`: an append
    /// whose outcome was unknown committed after all. Reads until the log answers.
    fn committed_after_all(
        &self,
        records: &[Record],
        base: u64,
        backoff: &mut std::time::Duration,
    ) -> bool {
        let Some(store) = self.store.as_ref() else {
            return false;
        };
        loop {
            let mut found = Vec::with_capacity(records.len());
            let read = store.log().read_from(Seq::new(base), &mut |_, bytes| {
                if found.len() < records.len() {
                    found.push(Record::from_log_bytes(bytes).ok());
                }
                Ok(())
            });
            match read {
                Ok(_) => {
                    return found.len() == records.len()
                        && found
                            .iter()
                            .zip(records)
                            .all(|(found, ours)| found.as_ref() == Some(ours));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the shared log; retrying");
                    pause(backoff);
                }
            }
        }
    }

    /// Appends `records` at `base` on the shared log.
    fn append_shared(&mut self, records: &[Record], base: u64) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        if let Some(hook) = &self.hook {
            hook(records.len());
        }
        let appending = std::time::Instant::now();
        store.append_batch_at(Seq::new(base), records)?;
        #[cfg(test)]
        if tests::LOSE_ACKS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable(
                "test: the answer to a committed append was lost".to_owned(),
            ));
        }
        self.metrics
            .appended(records.len(), appending.elapsed(), store.last_commit_time());
        self.appended(records.len());
        Ok(())
    }

    /// Puts the private state back to the published (durable) one, undoing a batch
    /// that was decided but not appended.
    fn rollback(&mut self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        self.grants = cluster.durable_grants.clone();
        self.registry = self.published.registry.read().clone();
        self.credentials = Credentials::clone(&self.published.credentials.load());
    }

    /// Applies, and publishes, every record other nodes appended after `log_end`.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let Some(store) = self.store.as_ref() else {
            return Ok(());
        };
        let mut records = Vec::new();
        let read = store
            .log()
            .read_from(Seq::new(self.log_end), &mut |_, bytes| {
                let record = Record::from_log_bytes(bytes)
                    .map_err(|e| halo_store::Rejected(e.to_string()))?;
                records.push(record);
                Ok(())
            })?;
        if let Some(damage) = read.stopped_at {
            // Another node wrote what this build cannot read (or the table was
            // damaged): following past it would fork the state.
            tracing::error!(%damage, "the shared log is unreadable past the last good record; stopping");
            std::process::abort();
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for record in &records {
            if let Err(e) = self.follow(record, &mut batch) {
                tracing::error!(error = %e, "a followed record does not apply; stopping");
                std::process::abort();
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.health.add_followed(records.len() as u64);
        }
        batch.records = records;
        let base = self.log_end;
        self.publish(batch, base);
        Ok(())
    }

    /// Applies one record another node appended to the private state, noting in
    /// `batch` what it changed. An error means this node must stop following: its
    /// state would fork from the log's (a tenancy record of a format version this
    /// build does not know, or a tenancy or policy event that does not apply). A
    /// refused credential event is skipped, as the node that wrote it did.
    fn follow(&mut self, record: &Record, batch: &mut Batch) -> Result<(), String> {
        match record {
            Record::Tenancy(entry) => {
                entry.check_version().map_err(|e| e.to_string())?;
                self.registry
                    .apply_into(&entry.event, entry.at, &mut batch.changes)
                    .map_err(|e| format!("tenancy: {e}"))?;
                batch.tenancy = true;
            }
            Record::Policy { event, .. } => {
                self.grants
                    .apply(event)
                    .map_err(|e| format!("policy: {e}"))?;
                batch.policy = true;
            }
            Record::Credential { event, .. } => {
                if let Err(e) = self.credentials.apply(event) {
                    tracing::warn!(error = %e, "followed credential event refused; skipped");
                }
                batch.credentials = true;
            }
            Record::Audit { .. } => {}
        }
        Ok(())
    }

    fn set_available(&self, now: bool) {
        if let Some(cluster) = &self.cluster {
            cluster.health.set_available(now);
        }
    }

    /// Takes the state's snapshot form on the writer thread (cheap: no encoding) and
    /// hands encoding and storing to a thread. Skipped while the previous one still
    /// runs; the log is intact either way, a missing snapshot only makes recovery
    /// longer.
    fn snapshot_in_background(&mut self) {
        let (Some(store), Some(background)) = (self.store.as_ref(), self.background.as_ref())
        else {
            return;
        };
        if self.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        // Called right after an append, before `log_end` moves: the private state
        // is as of the end of that append (in a cluster too: `append_at` just set it).
        let upto = store.last_seq();
        let snapshot = self.snapshot_form();
        let background = Arc::clone(background);
        let busy = Arc::clone(&self.snapshotting);
        self.since_snapshot = 0;
        self.metrics.since_snapshot.store(0, Ordering::Relaxed);
        let metrics = Arc::clone(&self.metrics);
        let spawned = std::thread::Builder::new()
            .name("halo-snapshot".into())
            .spawn(move || {
                let _span = tracing::info_span!("snapshot", upto = ?upto).entered();
                let started = std::time::Instant::now();
                tracing::info!("writing a snapshot in the background");
                match background.lock().write(&snapshot, upto) {
                    Ok(()) => {
                        metrics.snapshot_written();
                        tracing::info!(took_ms = started.elapsed().as_millis(), "snapshot written");
                    }
                    Err(e) => tracing::warn!(error = %e, "snapshot failed"),
                }
                busy.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the snapshot thread");
            self.snapshotting.store(false, Ordering::Release);
        }
    }

    fn snapshot_form(&self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            registry: self.registry.to_snapshot(),
            grants: self.grants.to_snapshot(),
            credentials: self.credentials.clone(),
            // The published trail is as of `log_end` (it moves with each published
            // batch), which a background snapshot's `upto` may be past: recovery
            // reads the records after `log_end` from the log.
            audit: Some(AuditSnapshot::encode(
                &self.published.audit.read(),
                self.log_end,
                self.audit_covers_next,
            )),
        }
    }

    /// Writes a snapshot of the whole state as of the last logged event, now.
    fn snapshot(&mut self) -> Result<(), StoreError> {
        let snapshot = self.snapshot_form();
        let upto = Seq::new(self.log_end);
        if let Some(store) = self.store.as_mut() {
            store.snapshot(&snapshot, upto)?;
            self.since_snapshot = 0;
            self.metrics.since_snapshot.store(0, Ordering::Relaxed);
            self.metrics.snapshot_written();
        }
        Ok(())
    }
}

/// The Cloud's state, shared by every handler: the writer's queue and the views
/// readers use.
pub struct CloudState {
    /// The writer's queue; `None` only while dropping.
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    published: Arc<Published>,
    router: Arc<Router>,
    availability: AvailabilityConfig,
    recovery: Option<RecoveryReport>,
    timings: RecoveryTimings,
    metrics: Arc<StateMetrics>,
    /// Cluster mode: whether the shared store is reachable, and counters.
    health: Option<Arc<ClusterHealth>>,
    /// Cluster mode: the thread that wakes the writer to follow the shared log.
    follower: Option<JoinHandle<()>>,
    stop_follower: Arc<AtomicBool>,
}

impl fmt::Debug for CloudState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudState")
            .field("router", &self.router)
            .field("availability", &self.availability)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl CloudState {
    /// Opens the state: recovers it from the data directory (if any), publishes it
    /// to `router` and starts the writer thread.
    ///
    /// # Errors
    /// [`StateError`] when the log cannot be read or replayed.
    pub fn open(config: &StateConfig, router: Arc<Router>) -> Result<Self, StateError> {
        Self::open_with_hook(config, router, None)
    }

    /// [`CloudState::open`], calling `hook` before each durable append (see
    /// [`AppendHook`]).
    ///
    /// # Errors
    /// As [`CloudState::open`].
    pub fn open_with_hook(
        config: &StateConfig,
        router: Arc<Router>,
        hook: Option<AppendHook>,
    ) -> Result<Self, StateError> {
        Self::open_inner(config, None, router, hook)
    }

    /// Opens the state of one node of a cluster: recovers it from the newest
    /// snapshot in PostgreSQL plus the tail after it, starts the writer, and a
    /// follower that keeps it up to date with what other nodes append (see
    /// [`crate::cluster`]). `config.data_dir` is not used for this state.
    ///
    /// # Errors
    /// [`StateError`] when the database cannot be reached or its log cannot be
    /// read or replayed.
    pub fn open_cluster(
        config: &StateConfig,
        cluster: &ClusterConfig,
        router: Arc<Router>,
    ) -> Result<Self, StateError> {
        Self::open_inner(config, Some(cluster), router, None)
    }

    fn open_inner(
        config: &StateConfig,
        cluster: Option<&ClusterConfig>,
        router: Arc<Router>,
        hook: Option<AppendHook>,
    ) -> Result<Self, StateError> {
        let mut writer = Writer::new(config.snapshot_every, &router, hook);
        let mut recovery = None;
        let mut trail = AuditTrail::default();
        let mut timings = RecoveryTimings::default();
        let opening = std::time::Instant::now();
        let opened = match (cluster, &config.data_dir) {
            (Some(cluster), _) => Some(open_shared(cluster, &mut timings)?),
            (None, Some(dir)) => {
                let (store, recovered) = open_store(dir, config.accept_damaged_log)?;
                let background = store.snapshot_writer()?;
                timings.read = opening.elapsed();
                // The audit trail is recovered below, beside the registry.
                Some((store, recovered, background, None))
            }
            (None, None) => None,
        };
        if let Some((store, mut recovered, background, rebuilt)) = opened {
            let restoring = std::time::Instant::now();
            // The snapshot's audit trail is decoded on another thread while this one
            // rebuilds the registry; the log after it is read once both are done.
            let part = match rebuilt {
                Some(_) => None,
                None => Some(recovered.snapshot.as_mut().and_then(|s| s.audit.take())),
            };
            let (restored, decoded) = std::thread::scope(|scope| {
                let decoding = part.map(|part| {
                    scope.spawn(move || {
                        let started = std::time::Instant::now();
                        let decoded = part.map(|part| {
                            let trail = part.decode();
                            (part, trail)
                        });
                        (decoded, started.elapsed())
                    })
                });
                let restored = match recovered.snapshot.take() {
                    Some(snapshot) => restore(&mut writer, snapshot),
                    None => Ok(()),
                };
                (restored, decoding.map(|d| d.join()))
            });
            restored?;
            timings.restore = restoring.elapsed();
            // Without a snapshot, a complete recovery holds every record of the log
            // (record n at index n - 1), decoded: the audit trail is indexed from
            // them rather than from a second read of the log.
            let whole_log = recovered.report.snapshot_seq.is_none()
                && recovered.report.is_complete()
                && recovered.report.last_seq == store.last_seq()
                && recovered.tail.len() as u64 == store.last_seq().get();
            let rebuilt = match (rebuilt, decoded) {
                (Some(trail), _) => trail,
                (None, Some(Ok((None, took)))) if whole_log => {
                    let started = std::time::Instant::now();
                    let mut trail = AuditTrail::default();
                    let mut covered = false;
                    for (index, record) in recovered.tail.iter().enumerate() {
                        trail.index(Seq::new(index as u64 + 1), record, &mut covered);
                    }
                    timings.audit = took + started.elapsed();
                    trail
                }
                (None, Some(Ok((decoded, took)))) => {
                    let started = std::time::Instant::now();
                    let trail = finish_audit(store.log(), decoded, store.last_seq())?;
                    timings.audit = took + started.elapsed();
                    trail
                }
                (None, _) => {
                    tracing::warn!(
                        "decoding the snapshot's audit trail failed; rebuilding it from the whole log"
                    );
                    AuditTrail::rebuild_upto(store.log(), store.last_seq())?
                }
            };
            writer.since_snapshot = recovered.tail.len() as u64;
            writer.background = Some(Arc::new(Mutex::new(background)));
            let total = recovered.tail.len();
            let started = std::time::Instant::now();
            tracing::info!(
                events = total,
                from_snapshot = writer.registry.site_count() > 0,
                "recovering: replaying the log after the snapshot"
            );
            for (index, record) in recovered.tail.iter().enumerate() {
                replay(&mut writer, record)
                    .map_err(|message| StateError::Replay { index, message })?;
                if (index + 1) % RECOVERY_PROGRESS_EVERY == 0 {
                    tracing::info!(done = index + 1, total, "recovering: replaying");
                }
            }
            timings.replay = started.elapsed();
            trail = rebuilt;
            writer.log_end = if cluster.is_some() {
                // The shared log may have grown since it was read; the follower
                // catches up from here.
                recovered.report.last_seq.get()
            } else {
                store.last_seq().get()
            };
            tracing::info!(
                events = total,
                sites = writer.registry.site_count(),
                took_ms = started.elapsed().as_millis(),
                "recovered"
            );
            writer.store = Some(store);
            writer
                .metrics
                .since_snapshot
                .store(writer.since_snapshot, Ordering::Relaxed);
            recovery = Some(recovered.report);
        }
        // The router's table is built in one pass and published in one swap, while
        // another thread copies the registry for readers (see `registry`).
        let publishing = std::time::Instant::now();
        let (readers_copy, took) = std::thread::scope(|scope| {
            let copy = scope.spawn(|| {
                let started = std::time::Instant::now();
                let copy = writer.registry.clone();
                (copy, started.elapsed())
            });
            let started = std::time::Instant::now();
            router.load_sites(&writer.registry);
            timings.router = started.elapsed();
            copy.join()
        })
        .unwrap_or_else(|_| (writer.registry.clone(), std::time::Duration::ZERO));
        timings.readers_copy = took;
        timings.publish = publishing.elapsed();
        router.set_policy(Arc::new(writer.grants.compile()));
        let published = Arc::new(Published {
            registry: RwLock::new(readers_copy),
            credentials: ArcSwap::from_pointee(writer.credentials.clone()),
            audit: RwLock::new(trail),
            kicks: Arc::default(),
        });
        writer.published = Arc::clone(&published);
        let health = cluster.map(|_| Arc::new(ClusterHealth::new()));
        let catch_up_queued = Arc::new(AtomicBool::new(false));
        if let Some(health) = &health {
            writer.cluster = Some(SharedLog {
                health: Arc::clone(health),
                durable_grants: writer.grants.clone(),
                catch_up_queued: Arc::clone(&catch_up_queued),
            });
        }
        let metrics = Arc::clone(&writer.metrics);
        timings.total = opening.elapsed();
        if recovery.is_some() {
            tracing::info!(?timings, "state opened");
        }
        let (commands, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("halo-state-writer".into())
            .spawn(move || writer.run(&queue))
            .map_err(|source| {
                StateError::Store(StoreError::Io {
                    path: "(the state writer thread)".to_owned(),
                    source,
                })
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let follower = match cluster {
            Some(cluster) => {
                let cluster = cluster.clone();
                let stop = Arc::clone(&stop);
                let wake = commands.clone();
                let spawned = std::thread::Builder::new()
                    .name("halo-cluster-follower".into())
                    .spawn(move || {
                        crate::cluster::follow(&cluster, &stop, || {
                            if !catch_up_queued.swap(true, Ordering::AcqRel) {
                                let _ = wake.send(Command::CatchUp);
                            }
                        });
                    })
                    .map_err(|source| {
                        StateError::Store(StoreError::Io {
                            path: "(the cluster follower thread)".to_owned(),
                            source,
                        })
                    })?;
                Some(spawned)
            }
            None => None,
        };
        Ok(Self {
            commands: Some(commands),
            writer: Some(thread),
            published,
            router,
            availability: config.availability,
            recovery,
            timings,
            metrics,
            health,
            follower,
            stop_follower: stop,
        })
    }

    /// This node's view of the cluster store, when it runs as part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<ClusterHealth>> {
        self.health.as_ref()
    }

    /// What the writer measures: log append and fsync times, snapshot age.
    pub fn metrics(&self) -> &Arc<StateMetrics> {
        &self.metrics
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The availability thresholds.
    pub fn availability(&self) -> &AvailabilityConfig {
        &self.availability
    }

    /// What recovery found at start, when there is a data directory.
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// How long each part of opening the state took.
    pub fn recovery_timings(&self) -> RecoveryTimings {
        self.timings
    }

    /// The registry as of the last durable change. The writer write-locks it only
    /// after an fsync, for as long as applying that batch in memory takes. Hold the
    /// guard briefly, across no `.await` (it is not `Send`), and take it at most once
    /// per thread at a time.
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.published.registry.read()
    }

    /// The Link credentials as of the last durable change (lock-free).
    pub fn credentials(&self) -> Arc<Credentials> {
        self.published.credentials.load_full()
    }

    /// The audit trail as of the last durable change (see [`crate::audit`]). The
    /// writer write-locks it only to append a durable batch's entries; hold the
    /// guard briefly and across no `.await`.
    pub fn audit(&self) -> RwLockReadGuard<'_, AuditTrail> {
        self.published.audit.read()
    }

    /// Whether `site` can be reached at `now`: from the later of its last durable
    /// registration and, while it is live, its Link's last heartbeat (the router's
    /// atomic, which heartbeats update without the writer), with thresholds that
    /// allow for the interval the Link's attached session was asked for.
    pub fn availability_of(&self, site: &Site, now: Timestamp) -> Availability {
        let heard = site.last_heard();
        if !site.status().is_live() {
            return Availability::derive(heard, now, &self.availability);
        }
        self.link_availability(site.link_guid(), heard, now)
    }

    /// Whether `link` can be reached at `now`, given `heard`, when the registry last
    /// heard from it: from the later of that and its last heartbeat, offline after
    /// the configured threshold or, while a session is attached, after
    /// [`crate::heartbeat::MISSED_BEATS`] of the intervals it was asked for, if
    /// longer ([`crate::heartbeat::thresholds`]).
    pub fn link_availability(
        &self,
        link: LinkGuid,
        heard: Timestamp,
        now: Timestamp,
    ) -> Availability {
        let (heard, every) = match self.router.liveness(link) {
            Some(live) => (heard.max(live.last_heard), live.heartbeat),
            None => (heard, None),
        };
        let cfg = crate::heartbeat::thresholds(&self.availability, every);
        Availability::derive(heard, now, &cfg)
    }

    fn send(&self, command: Command) {
        match &self.commands {
            Some(commands) if commands.send(command).is_ok() => {}
            _ => writer_gone(),
        }
    }

    fn ask<T: Send + 'static>(&self, command: impl FnOnce(Responder<T>) -> Command) -> Reply<T> {
        let (tx, rx) = oneshot::channel();
        self.send(command(Box::new(move |answer| {
            // The caller may have stopped waiting; the change stands either way.
            let _ = tx.send(answer);
        })));
        Reply(rx)
    }

    /// Applies tenancy events in order, each on its own: a refused event changes
    /// nothing and does not stop the others. The accepted ones are made durable,
    /// then published to the router. Answers one result per event.
    pub fn apply_tenancy(
        &self,
        events: Vec<Event>,
        now: Timestamp,
    ) -> Reply<Vec<Result<(), TenancyError>>> {
        self.ask(|reply| Command::Tenancy {
            events,
            now,
            gated: false,
            reply,
        })
    }

    /// Applies a Link's hello ([`Registration::events`]): like
    /// [`CloudState::apply_tenancy`], except that when the Link's own registration
    /// (the first event) is refused, no database is attached: every other event
    /// answers the same refusal.
    pub fn apply_registration(
        &self,
        registration: &Registration,
        now: Timestamp,
    ) -> Reply<Vec<Result<(), TenancyError>>> {
        let events = registration.events().to_vec();
        self.ask(|reply| Command::Tenancy {
            events,
            now,
            gated: true,
            reply,
        })
    }

    /// Applies one tenancy event; answers the [`TenancyError`] that refused it, if
    /// one did.
    pub fn apply_one(&self, event: Event, now: Timestamp) -> Reply<Result<(), TenancyError>> {
        self.ask(
            |reply: Responder<Result<(), TenancyError>>| Command::Tenancy {
                events: vec![event],
                now,
                gated: false,
                reply: Box::new(move |mut results| reply(results.pop().unwrap_or(Ok(())))),
            },
        )
    }

    /// Records a heartbeat: one atomic update in the router, neither logged nor sent
    /// to the writer (a restart starts every site as not yet heard, which is the
    /// truth).
    pub fn heartbeat(&self, link: LinkGuid, now: Timestamp) {
        self.router.heard(link, now);
    }

    /// Applies a policy event, makes it durable and publishes the new policy;
    /// answers the [`PolicyError`] that refused it, if one did.
    pub fn apply_policy(
        &self,
        event: PolicyEvent,
        now: Timestamp,
    ) -> Reply<Result<(), PolicyError>> {
        self.apply_policy_noted(event, now, Note::default())
    }

    /// [`CloudState::apply_policy`], recording `note` (who and why) in the audit
    /// entry for the event.
    pub fn apply_policy_noted(
        &self,
        event: PolicyEvent,
        now: Timestamp,
        note: Note,
    ) -> Reply<Result<(), PolicyError>> {
        self.ask(|reply| Command::Policy {
            event,
            now,
            note,
            reply,
        })
    }

    /// Appends an audit entry that no event carries (a sampled route denial). It is
    /// queued and made durable with the next batch; nobody waits for it.
    pub fn record_audit(&self, entry: AuditEntry, now: Timestamp) {
        self.send(Command::Audit { entry, now });
    }

    /// Applies a credential event, makes it durable and publishes the credentials;
    /// answers the [`CredentialError`] that refused it (nothing is logged then).
    pub fn apply_credential(
        &self,
        event: CredentialEvent,
        now: Timestamp,
    ) -> Reply<Result<(), CredentialError>> {
        self.apply_credential_noted(event, now, Note::default())
    }

    /// [`CloudState::apply_credential`], recording `note` (who and why) in the audit
    /// entry where the event itself names no actor or reason.
    pub fn apply_credential_noted(
        &self,
        event: CredentialEvent,
        now: Timestamp,
        note: Note,
    ) -> Reply<Result<(), CredentialError>> {
        self.ask(|reply| Command::Credential {
            event,
            now,
            note,
            reply,
        })
    }

    /// Writes a snapshot now, after every change queued before (for operators and
    /// benchmarks); answers [`StoreError`] if it cannot be written (the log is
    /// unaffected).
    pub fn snapshot_now(&self) -> Reply<Result<(), StoreError>> {
        self.ask(|reply| Command::Snapshot { reply })
    }

    /// The whole state in its snapshot form, once everything queued before is durable
    /// (what a snapshot would store; for tools, tests and a node that starts another).
    pub fn capture(&self) -> Reply<Snapshot> {
        self.ask(|reply| Command::Capture { reply })
    }

    /// Runs `f` on the writer thread with the private state, once everything queued
    /// before is durable.
    #[cfg(test)]
    fn inspect<T: Send + 'static>(&self, f: impl FnOnce(&Writer) -> T + Send + 'static) -> T {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Inspect(Box::new(move |w| {
            let _ = tx.send(f(w));
        })));
        Reply(rx).wait()
    }

    /// The current compiled policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.router.policy()
    }

    /// Checks a presented Link token against the published credentials: issued and
    /// not revoked (lock-free).
    ///
    /// # Errors
    /// [`CredentialError::Unknown`] or [`CredentialError::Revoked`].
    pub fn check_credential(&self, token_hash: &KeyHash) -> Result<(), CredentialError> {
        self.published
            .credentials
            .load()
            .check(token_hash)
            .map(drop)
    }

    /// The revocation listeners of this node's Link sessions (kicked when a
    /// revocation is published, see `publish`).
    pub fn kicks(&self) -> &Arc<crate::link_ws::Kicks> {
        &self.published.kicks
    }
}

impl Drop for CloudState {
    /// Closes the queue and waits for the writer to answer what is queued and stop,
    /// so the data directory can be opened again at once.
    fn drop(&mut self) {
        // The follower holds a sender: stop it first so that the queue closes.
        self.stop_follower.store(true, Ordering::Release);
        if let Some(follower) = self.follower.take() {
            let _ = follower.join();
        }
        self.commands = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The audit trail as of record `upto`: the snapshot's copy (taken out of it) and
/// the log's records after it, or, for a snapshot without one (formats 1 to 3) or
/// no snapshot, one pass over the whole log.
fn recover_audit<L: halo_store::EventLog>(
    log: &L,
    snapshot: Option<&mut Snapshot>,
    upto: Seq,
) -> Result<AuditTrail, StateError> {
    let decoded = snapshot.and_then(|s| s.audit.take()).map(|part| {
        let trail = part.decode();
        (part, trail)
    });
    finish_audit(log, decoded, upto)
}

/// [`recover_audit`] once the snapshot's part (if any) is decoded.
fn finish_audit<L: halo_store::EventLog>(
    log: &L,
    decoded: Option<(
        AuditSnapshot,
        Result<AuditTrail, crate::audit_form::AuditFormError>,
    )>,
    upto: Seq,
) -> Result<AuditTrail, StateError> {
    if let Some((part, decoded)) = decoded {
        match decoded {
            Ok(trail) if part.through() <= upto.get() => {
                return Ok(AuditTrail::rebuild_after(
                    log,
                    trail,
                    Seq::new(part.through()),
                    part.covers_next(),
                    upto,
                )?);
            }
            Ok(_) => {
                tracing::warn!(
                    through = part.through(),
                    "the snapshot's audit trail reaches past the log; rebuilding it from the whole log"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "rebuilding the audit trail from the whole log");
            }
        }
    }
    Ok(AuditTrail::rebuild_upto(log, upto)?)
}

/// Loads a snapshot into an empty writer.
fn restore(w: &mut Writer, snapshot: Snapshot) -> Result<(), StateError> {
    // Version 2 differs from 1 only in holding a version-2 grants snapshot, 3 from 2
    // only in the registry's encoding (read by its form), 4 from 3 only in also
    // holding the audit trail (read before, by `recover_audit`), and 5 from 4 only in
    // compressing both parts' bytes (read by `packed.rs`, which reads either); each
    // part is read by its own version, so all load.
    if !(1..=SNAPSHOT_VERSION).contains(&snapshot.version) {
        return Err(StateError::Snapshot(format!(
            "snapshot format {} is not supported",
            snapshot.version
        )));
    }
    w.registry = Registry::from_snapshot(snapshot.registry)
        .map_err(|e| StateError::Snapshot(e.to_string()))?;
    w.grants =
        Grants::from_snapshot(snapshot.grants).map_err(|e| StateError::Snapshot(e.to_string()))?;
    w.credentials = snapshot.credentials;
    Ok(())
}

/// What opening a log yields: the store, what it recovered, a snapshot writer for
/// another thread, and the audit trail if it was recovered already (`None`: the
/// caller recovers it).
type Opened = (
    CloudStore,
    halo_store::Recovered<Record, Snapshot>,
    StateWriter<Snapshot>,
    Option<AuditTrail>,
);

/// Opens the shared PostgreSQL log and recovers from it. Runs on a thread of its
/// own: the client blocks, and the Cloud may be opened from async code.
fn open_shared(
    cluster: &ClusterConfig,
    timings: &mut RecoveryTimings,
) -> Result<Opened, StateError> {
    let opening = std::time::Instant::now();
    let options = cluster.pg_options();
    let node = cluster.node_id.clone();
    let opened = std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<Opened, StateError> {
                let config = StoreConfig {
                    snapshot_every: 0,
                    keep_snapshots: 2,
                };
                let log = halo_store::PgLog::open(options)?;
                let (store, mut recovered) = Store::with_log(AnyLog::Postgres(log), config)?;
                if let Some(c) = &recovered.report.stopped_at {
                    // A shared log is never set aside by one node: an operator decides.
                    return Err(StateError::Damaged(c.to_string()));
                }
                let background = store.snapshot_writer()?;
                let read = opening.elapsed();
                let upto = recovered.report.last_seq;
                let trail = recover_audit(store.log(), recovered.snapshot.as_mut(), upto)?;
                *timings = RecoveryTimings {
                    read,
                    audit: opening.elapsed() - read,
                    ..RecoveryTimings::default()
                };
                let trail = Some(trail);
                tracing::info!(report = %recovered.report, node = %node, "recovered state from the cluster store");
                Ok((store, recovered, background, trail))
            })
            .join()
    });
    match opened {
        Ok(result) => result,
        Err(_) => Err(StateError::Store(StoreError::Unavailable(
            "the thread opening the cluster store panicked".to_owned(),
        ))),
    }
}

fn open_store(
    dir: &Path,
    accept_damaged_log: bool,
) -> Result<(CloudStore, halo_store::Recovered<Record, Snapshot>), StateError> {
    // The writer decides when to snapshot (see `StateConfig::snapshot_every`).
    let config = StoreConfig {
        snapshot_every: 0,
        keep_snapshots: 2,
    };
    let open = |dir: &Path| Store::with_log(AnyLog::Sqlite(SqliteLog::open(dir)?), config);
    let (mut store, recovered) = match open(dir) {
        Ok(opened) => opened,
        Err(StoreError::StorageDamaged { path, reason }) if !accept_damaged_log => {
            return Err(StateError::StorageDamaged {
                path,
                reason,
                dir: dir.display().to_string(),
            });
        }
        Err(StoreError::StorageDamaged { path, reason }) => {
            // Record-level damage can be set aside inside the file; page-level damage
            // cannot, so every readable record goes into a fresh file instead.
            tracing::error!(file = %path, %reason, "the event log's storage is damaged; --accept-damaged-log: salvaging every readable record into a fresh log");
            let salvaged = halo_store::salvage_in_place(dir, &mut |p| {
                tracing::info!(progress = %p, "salvaging the event log");
            })?;
            let report = &salvaged.report;
            tracing::error!(
                records_read = report.records_read,
                records_lost = report.records_lost,
                set_aside = %salvaged.set_aside.display(),
                report = %report,
                "salvaged the damaged event log; the damaged files are kept"
            );
            open(dir)?
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(c) = &recovered.report.stopped_at {
        if !accept_damaged_log {
            return Err(StateError::Damaged(c.to_string()));
        }
        tracing::error!(corruption = %c, "event log damaged: recovered up to the last good event; the damaged tail is kept aside");
        store.quarantine_unreplayed()?;
    }
    tracing::info!(report = %recovered.report, dir = %dir.display(), "recovered state");
    Ok((store, recovered))
}

/// Applies one recovered record (the result is published whole afterwards, so no
/// changes are kept; a tenancy entry of an unknown format version stops recovery).
fn replay(w: &mut Writer, record: &Record) -> Result<(), String> {
    match record {
        Record::Tenancy(entry) => w.registry.replay_entry(entry).map_err(|e| e.to_string()),
        Record::Policy { event, .. } => w.grants.apply(event).map_err(|e| e.to_string()),
        Record::Credential { event, .. } => {
            // Logs written before the one-to-one rule may hold a binding that the
            // rule now refuses (a hijack): skipping it is the safe reading.
            if let Err(e) = w.credentials.apply(event) {
                tracing::warn!(error = %e, "logged credential event refused on replay; skipped");
            }
            Ok(())
        }
        // The audit trail changes no state; it is rebuilt from the whole log.
        Record::Audit { .. } => Ok(()),
    }
}

/// An audit record written now; `covers_next` when the event it describes follows.
fn audit_record(at: Timestamp, covers_next: bool, entry: AuditEntry) -> Record {
    Record::Audit {
        version: audit::AUDIT_VERSION,
        at,
        covers_next,
        entry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halo_ids::{Crn, Environment, HaloGuid, PmsId, PmsType};
    use halo_policy::IntegratorId;
    use halo_router::RouterConfig;
    use halo_tenancy::{Catalogue, SiteIdentity, SiteRegistration};
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Duration;

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    /// Successful shared-log appends still to answer as lost (a timeout after the
    /// commit); only [`a_shared_append_whose_answer_was_lost_is_published_once`]
    /// sets it (no other test here writes to a shared log).
    pub(super) static LOSE_ACKS: AtomicUsize = AtomicUsize::new(0);

    /// An append that committed but whose answer was lost is published as decided:
    /// every event accepted, each in the log once. Deciding the batch again after
    /// catching up (the earlier behaviour) refused every `SiteReady` as a repeat.
    #[test]
    fn a_shared_append_whose_answer_was_lost_is_published_once() {
        use halo_store::EventLog as _;
        let server = halo_test_support::postgres_server::PgServer::start();
        let mut cluster = ClusterConfig::new(server.url(), "a");
        cluster.timeout = Duration::from_secs(5);
        let node = CloudState::open_cluster(
            &StateConfig {
                data_dir: None,
                snapshot_every: 0,
                availability: AvailabilityConfig::default(),
                accept_damaged_log: false,
            },
            &cluster,
            Arc::new(Router::new(RouterConfig::standard())),
        )
        .unwrap();
        let events = site_events(3);
        LOSE_ACKS.store(1, Ordering::Release);
        for r in node.apply_tenancy(events.clone(), NOW).wait() {
            r.unwrap();
        }
        assert_eq!(LOSE_ACKS.load(Ordering::Acquire), 0, "an answer was lost");
        assert_eq!(node.registry().site_count(), 3);
        let log = halo_store::PgLog::open(halo_store::PgOptions::new(server.url())).unwrap();
        let mut logged = Vec::new();
        log.read_from(Seq::ZERO, &mut |_, bytes| {
            if let Ok(Record::Tenancy(entry)) = Record::from_log_bytes(bytes) {
                logged.push(entry.event);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(logged, events);
    }

    fn config(dir: &Path, snapshot_every: u64, accept_damaged_log: bool) -> StateConfig {
        StateConfig {
            data_dir: Some(dir.to_path_buf()),
            snapshot_every,
            availability: AvailabilityConfig::default(),
            accept_damaged_log,
        }
    }

    fn open(dir: &Path, snapshot_every: u64) -> Result<CloudState, StateError> {
        CloudState::open(
            &config(dir, snapshot_every, false),
            Arc::new(Router::new(RouterConfig::standard())),
        )
    }

    fn site_events(n: u128) -> Vec<Event> {
        let link = LinkGuid::from_u128(7).unwrap();
        let mut events = vec![Event::LinkRegistered {
            link,
            environment: Environment::Stage,
            version: "1".into(),
        }];
        for i in 0..n {
            let site = HaloGuid::from_u128(100 + i).unwrap();
            events.push(Event::SiteAttached {
                link,
                halo_guid: site,
                identity: SiteIdentity {
                    pms_type: PmsType::D4w,
                    // Two sites per CRN, so groups have a holder and a follower.
                    parent_crn: format!("CRN{}", i / 2).parse::<Crn>().unwrap(),
                    branch_crns: Vec::new(),
                    practice_name: format!("Practice {i}"),
                    pms_version: "15".into(),
                    catalogues: vec![Catalogue {
                        name: "d4w".into(),
                        is_default: true,
                    }],
                    is_demo: false,
                },
            });
            events.push(Event::SiteReady {
                link,
                halo_guid: site,
            });
        }
        events
    }

    /// A restart from the log alone indexes the audit trail from the records
    /// recovery read: the same trail as before the restart and as a rebuild from a
    /// second read of the log, every entry once (noted changes are covered by their
    /// audit record, an un-noted promotion is derived from its event).
    #[test]
    fn restart_from_the_log_alone_keeps_the_audit_trail_whole_without_doubles() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path(), 0).unwrap();
        for r in state.apply_tenancy(site_events(4), NOW).wait() {
            r.unwrap();
        }
        let note = Note {
            actor: Some("alice".into()),
            reason: Some("contract".into()),
        };
        state
            .apply_policy_noted(grant(0), NOW, note)
            .wait()
            .unwrap();
        state.apply_policy(grant(1), NOW).wait().unwrap();
        state
            .apply_one(
                Event::Promoted {
                    halo_guid: HaloGuid::from_u128(101).unwrap(),
                    actor: "support".into(),
                    reason: "move".into(),
                },
                NOW,
            )
            .wait()
            .unwrap();
        let live: Vec<_> = state.audit().iter().cloned().collect();
        assert!(live.len() >= 3, "{live:?}");
        drop(state);
        let rebuilt: Vec<_> = {
            let log = SqliteLog::open(dir.path()).unwrap();
            AuditTrail::rebuild(&log).unwrap().iter().cloned().collect()
        };
        assert_eq!(rebuilt, live);
        let state = open(dir.path(), 0).unwrap();
        assert!(state.recovery().unwrap().snapshot_seq.is_none());
        let recovered: Vec<_> = state.audit().iter().cloned().collect();
        assert_eq!(recovered, live);
    }

    /// This build writes tenancy records in the binary form and the others as JSON,
    /// and recovers from what it wrote.
    #[test]
    fn tenancy_records_are_written_in_binary_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        {
            let state = open(dir.path(), 0).unwrap();
            assert!(
                state
                    .apply_tenancy(site_events(3), NOW)
                    .wait()
                    .iter()
                    .all(Result::is_ok)
            );
            state.apply_policy(grant(0), NOW).wait().unwrap();
        }
        let log = SqliteLog::open(dir.path()).unwrap();
        let mut firsts = Vec::new();
        log.read_from(Seq::ZERO, &mut |_, bytes| {
            firsts.push(bytes[0]);
            Ok(())
        })
        .unwrap();
        drop(log);
        let binary = firsts
            .iter()
            .filter(|b| **b == crate::record::BINARY_RECORD)
            .count();
        assert_eq!(binary, 7, "every tenancy record binary: {firsts:?}");
        assert!(firsts.contains(&b'{'), "policy and audit records stay JSON");
        let state = open(dir.path(), 0).unwrap();
        let report = state.recovery().unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!(report.events_replayed, firsts.len() as u64);
        assert_eq!(state.registry().site_count(), 3);
    }

    /// Following another node's records: a tenancy record of a format version this
    /// build does not know stops the follower (applied as if understood, the
    /// node's state could fork from the log's) and changes nothing; the same event
    /// in the current version applies.
    #[test]
    fn following_refuses_a_tenancy_record_of_an_unknown_version() {
        let router = Arc::new(Router::new(RouterConfig::standard()));
        let mut writer = Writer::new(0, &router, None);
        let events = site_events(2);
        let mut batch = Batch::default();
        writer
            .follow(
                &Record::Tenancy(LogEntry::new(NOW, events[0].clone())),
                &mut batch,
            )
            .unwrap();
        assert!(batch.tenancy);
        let before = writer.registry.clone();
        let mut entry = LogEntry::new(NOW, events[1].clone());
        entry.version = halo_tenancy::EVENT_VERSION + 1;
        let mut batch = Batch::default();
        let refused = writer
            .follow(&Record::Tenancy(entry.clone()), &mut batch)
            .unwrap_err();
        assert!(refused.contains("version"), "{refused}");
        assert_eq!(writer.registry, before);
        assert!(batch.changes.is_empty() && !batch.tenancy);
        entry.version = halo_tenancy::EVENT_VERSION;
        writer.follow(&Record::Tenancy(entry), &mut batch).unwrap();
        assert_ne!(writer.registry, before);
    }

    fn grant(i: usize) -> PolicyEvent {
        PolicyEvent::PracticeEnabled {
            integrator: "acme".parse::<IntegratorId>().unwrap(),
            pms_id: PmsId::new(PmsType::D4w, format!("CRN{i}").parse().unwrap()),
        }
    }

    /// The audit trail after a restart from a snapshot (the snapshot's copy of the
    /// trail, then the log after it) equals the live one, every entry once: for a
    /// background snapshot (taken right after an append, before that batch's entries
    /// are published, so its copy stops short of the snapshot) and for one taken on
    /// request, each with records after it.
    #[test]
    fn restart_from_a_snapshot_keeps_the_audit_trail_whole_without_doubles() {
        let dir = tempfile::tempdir().unwrap();
        let promote = |state: &CloudState, n: u128| {
            state
                .apply_one(
                    Event::Promoted {
                        halo_guid: site(n),
                        actor: "support".into(),
                        reason: format!("move {n}"),
                    },
                    NOW,
                )
                .wait()
                .unwrap();
        };
        let live = |state: &CloudState| state.audit().iter().cloned().collect::<Vec<_>>();
        let state = open(dir.path(), 5).unwrap();
        // An audited record, published before the first background snapshot (due
        // after the first chunk of sites), so that snapshot's copy of the trail is
        // never empty however late its thread runs.
        state.apply_policy(grant(0), NOW).wait().unwrap();
        for chunk in site_events(20).chunks(7) {
            for r in state.apply_tenancy(chunk.to_vec(), NOW).wait() {
                r.unwrap();
            }
        }
        for i in 1..3 {
            state.apply_policy(grant(i), NOW).wait().unwrap();
        }
        promote(&state, 101);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while state.metrics().last_snapshot_ms.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no background snapshot"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let before = live(&state);
        assert!(
            before
                .iter()
                .any(|s| s.entry.kind == crate::audit::AuditKind::SitePromoted)
        );
        drop(state);
        // The background snapshot's copy of the trail stops short of its record.
        {
            let config = StoreConfig {
                snapshot_every: 0,
                keep_snapshots: 2,
            };
            let log = SqliteLog::open(dir.path()).unwrap();
            let (_, recovered) = Store::<Record, Snapshot, AnyLog, RecordCodec>::with_log(
                AnyLog::Sqlite(log),
                config,
            )
            .unwrap();
            let upto = recovered.report.snapshot_seq.expect("a snapshot").get();
            let part = recovered
                .snapshot
                .unwrap()
                .audit
                .expect("format 4 holds the trail");
            assert!(part.through() < upto, "{} < {upto}", part.through());
            assert!(part.through() > 0);
        }
        let state = open(dir.path(), 0).unwrap();
        assert!(state.recovery().unwrap().snapshot_seq.is_some());
        assert_eq!(live(&state), before, "after a background snapshot");

        // On request, then more entries after it.
        state.snapshot_now().wait().unwrap();
        promote(&state, 103);
        state.apply_policy(grant(7), NOW).wait().unwrap();
        let before = live(&state);
        drop(state);
        let state = open(dir.path(), 0).unwrap();
        let report = state.recovery().unwrap().clone();
        assert!(report.events_replayed > 0, "{report}");
        assert_eq!(live(&state), before, "after a snapshot on request");
        let ids: Vec<u64> = before.iter().map(|s| s.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "each entry once, in order"
        );
    }

    #[test]
    fn a_refused_link_registration_attaches_none_of_its_databases() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path(), 1000).unwrap();
        for r in state.apply_tenancy(site_events(1), NOW).wait() {
            r.unwrap();
        }
        let link = LinkGuid::from_u128(7).unwrap();
        let newcomer = HaloGuid::from_u128(900).unwrap();
        let Some(Event::SiteAttached { identity, .. }) = site_events(1).into_iter().nth(1) else {
            unreachable!("site_events attaches a site second")
        };
        // The Link serves a Stage site, so moving it to Production is refused.
        let hello = Registration::new(
            link,
            Environment::Production,
            "2".into(),
            [(newcomer, identity)],
        );
        let results = state.apply_registration(&hello, NOW).wait();
        assert_eq!(results.len(), 3);
        assert!(
            results
                .iter()
                .all(|r| *r == Err(TenancyError::EnvironmentChanged(link))),
            "{results:?}"
        );
        assert!(
            state.registry().site(newcomer).is_none(),
            "a refused hello attached a database"
        );
        assert!(hello.outcomes(results).is_err());
    }

    #[test]
    fn restart_recovers_snapshot_plus_tail_equal_to_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path(), 5).unwrap();
        for r in state.apply_tenancy(site_events(30), NOW).wait() {
            r.unwrap();
        }
        for i in 0..4 {
            state.apply_policy(grant(i), NOW).wait().unwrap();
        }
        state.snapshot_now().wait().unwrap();
        for i in 4..8 {
            state.apply_policy(grant(i), NOW).wait().unwrap();
        }
        state
            .apply_one(
                Event::Promoted {
                    halo_guid: HaloGuid::from_u128(101).unwrap(),
                    actor: "support".into(),
                    reason: "migration".into(),
                },
                NOW,
            )
            .wait()
            .unwrap();
        let (registry, grants) = state.inspect(|w| (w.registry.clone(), w.grants.clone()));
        assert!(
            *state.registry() == registry,
            "readers see the writer's registry"
        );
        drop(state);
        let again = open(dir.path(), 5).unwrap();
        let report = again.recovery().unwrap().clone();
        assert!(
            report.snapshot_seq.is_some(),
            "a snapshot was used: {report}"
        );
        assert!(report.events_replayed > 0, "and a tail replayed: {report}");
        assert!(
            *again.registry() == registry,
            "registry differs after recovery"
        );
        let recovered = again.inspect(|w| w.grants.clone());
        assert!(recovered == grants, "grants differ after recovery");
        assert_eq!(
            again
                .router()
                .resolve(HaloGuid::from_u128(101).unwrap())
                .map(|r| r.is_authoritative()),
            Some(true),
            "the router is loaded with the recovered state"
        );
    }

    #[test]
    fn a_damaged_log_stops_the_start_unless_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path(), 0).unwrap();
        for r in state.apply_tenancy(site_events(4), NOW).wait() {
            r.unwrap();
        }
        drop(state);
        let db = rusqlite::Connection::open(dir.path().join("halo.db")).unwrap();
        db.execute(
            "UPDATE log SET payload = CAST('{\"kind\":\"garbage' AS BLOB) WHERE seq = (SELECT max(seq) FROM log)",
            [],
        )
        .unwrap();
        drop(db);
        let err = open(dir.path(), 0).unwrap_err();
        assert!(matches!(err, StateError::Damaged(_)), "{err}");
        assert!(err.to_string().contains("--accept-damaged-log"), "{err}");
        let accepted = CloudState::open(
            &config(dir.path(), 0, true),
            Arc::new(Router::new(RouterConfig::standard())),
        )
        .unwrap();
        let report = accepted.recovery().unwrap();
        assert!(report.stopped_at.is_some(), "{report}");
        // Everything before the damaged record is there.
        assert_eq!(accepted.registry().site_count(), 4);
    }

    /// An [`AppendHook`] that counts appends and records, and, once armed, holds
    /// the next append (as a stuck fsync would) until released.
    struct Gate {
        armed: AtomicBool,
        appends: AtomicUsize,
        records: AtomicUsize,
        entered: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Gate {
        /// The gate, where it says that the writer is held, and how to release it.
        fn new() -> (Arc<Gate>, mpsc::Receiver<()>, mpsc::Sender<()>) {
            let (entered, held) = mpsc::channel();
            let (release, released) = mpsc::channel();
            let gate = Arc::new(Gate {
                armed: AtomicBool::new(false),
                appends: AtomicUsize::new(0),
                records: AtomicUsize::new(0),
                entered: Mutex::new(entered),
                release: Mutex::new(released),
            });
            (gate, held, release)
        }

        fn hook(self: &Arc<Self>) -> AppendHook {
            let gate = Arc::clone(self);
            Arc::new(move |records| {
                gate.appends.fetch_add(1, Ordering::SeqCst);
                gate.records.fetch_add(records, Ordering::SeqCst);
                if gate.armed.swap(false, Ordering::SeqCst) {
                    gate.entered.lock().send(()).unwrap();
                    gate.release.lock().recv().unwrap();
                }
            })
        }

        fn arm(&self) {
            self.armed.store(true, Ordering::SeqCst);
        }
    }

    fn open_gated(dir: &Path, gate: &Arc<Gate>) -> CloudState {
        CloudState::open_with_hook(
            &config(dir, 0, false),
            Arc::new(Router::new(RouterConfig::standard())),
            Some(gate.hook()),
        )
        .unwrap()
    }

    fn site(n: u128) -> HaloGuid {
        HaloGuid::from_u128(n).unwrap()
    }

    /// The writer is held inside an append (its fsync) while a status read, a
    /// credential check, a credential listing, a route lookup and a heartbeat run on
    /// another thread: they all complete, and none sees the change being appended.
    #[test]
    fn reads_and_heartbeats_never_wait_for_an_append_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, held, release) = Gate::new();
        let state = open_gated(dir.path(), &gate);
        for r in state.apply_tenancy(site_events(2), NOW).wait() {
            r.unwrap();
        }
        let token = KeyHash::of("lnk_reads_do_not_wait");
        state
            .apply_credential(
                CredentialEvent::Issued {
                    token_hash: token,
                    label: "test".into(),
                    scope: Some(halo_credentials::Scope::demo_only()),
                    actor: None,
                },
                NOW,
            )
            .wait()
            .unwrap();

        let link = LinkGuid::from_u128(7).unwrap();
        let mut events = site_events(3);
        let appended = site(102);
        events.retain(|e| match e {
            Event::SiteAttached {
                halo_guid: site, ..
            }
            | Event::SiteReady {
                halo_guid: site, ..
            } => *site == appended,
            _ => false,
        });
        gate.arm();
        let pending = state.apply_tenancy(events, NOW);
        held.recv_timeout(Duration::from_secs(60))
            .expect("the writer reaches the append");

        // Past the offline threshold since the registration: only the heartbeat
        // below makes the site online.
        let later = Timestamp::from_millis(NOW.as_millis() + 300_000);
        let (done, finished) = mpsc::channel();
        let state = &state;
        std::thread::scope(|s| {
            s.spawn(move || {
                {
                    let registry = state.registry();
                    assert!(registry.site(site(100)).is_some());
                    assert!(
                        registry.site(appended).is_none(),
                        "a change being appended is not visible yet"
                    );
                }
                assert!(state.router().resolve(appended).is_none());
                assert!(
                    state
                        .audit()
                        .iter()
                        .all(|s| s.entry.halo_guid != Some(appended)),
                    "the audit entry of a change being appended is not visible yet"
                );
                state.check_credential(&token).unwrap();
                assert_eq!(state.credentials().iter().count(), 1);
                state.heartbeat(link, later);
                let registry = state.registry();
                let heard = registry.site(site(100)).unwrap();
                assert_eq!(state.availability_of(heard, later), Availability::Online);
                done.send(()).unwrap();
            });
            let outcome = finished.recv_timeout(Duration::from_secs(30));
            release.send(()).unwrap();
            // Disconnected: the reader panicked, and the scope reports its panic.
            assert!(
                !matches!(outcome, Err(RecvTimeoutError::Timeout)),
                "a reader or a heartbeat waited for the writer's append"
            );
        });

        for r in pending.wait() {
            r.unwrap();
        }
        assert!(state.registry().site(appended).is_some());
        assert!(state.router().resolve(appended).is_some());
        assert!(
            state
                .audit()
                .iter()
                .any(|s| s.entry.halo_guid == Some(appended)
                    && s.entry.kind == crate::audit::AuditKind::AuthorityChanged),
            "once durable, the new group's first holder is in the audit trail"
        );
    }

    /// A Link that says the same hello again (a reconnection, or every Link after a
    /// restart) writes no record and no fsync; one that changes a detail or its
    /// version writes just that; and the state after a restart equals the live one.
    #[test]
    fn a_hello_repeated_unchanged_writes_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, _held, _release) = Gate::new();
        let state = open_gated(dir.path(), &gate);
        let hello = halo_tenancy::Registration::new(
            LinkGuid::from_u128(7).unwrap(),
            Environment::Stage,
            "1".into(),
            site_events(2).into_iter().filter_map(|e| match e {
                Event::SiteAttached {
                    halo_guid,
                    identity,
                    ..
                } => Some((halo_guid, identity)),
                _ => None,
            }),
        );
        let register = |events: Vec<Event>| {
            let outcomes = hello_outcomes(&state, &hello, events);
            (
                outcomes,
                gate.appends.load(Ordering::SeqCst),
                gate.records.load(Ordering::SeqCst),
            )
        };
        let (first, appends, records) = register(hello.events().to_vec());
        assert!(first.iter().all(|o| *o == SiteRegistration::Registered));
        // Five events and the audit entry of the new group's first holder.
        assert_eq!((appends, records), (1, 6));

        // The same hello, three times over: nothing is written.
        for _ in 0..3 {
            let (again, appends_now, records_now) = register(hello.events().to_vec());
            assert!(again.iter().all(|o| *o == SiteRegistration::AlreadyActive));
            assert_eq!((appends_now, records_now), (1, 6), "no event, no fsync");
        }

        // A changed practice name is one event; a new Link version is one event.
        let mut renamed = hello.events().to_vec();
        if let Event::SiteAttached { identity, .. } = &mut renamed[1] {
            identity.practice_name = "Renamed".into();
        }
        let (_, appends, records) = register(renamed.clone());
        assert_eq!((appends, records), (2, 7));
        assert_eq!(
            state.registry().site(site(100)).unwrap().practice_name(),
            "Renamed"
        );
        if let Event::LinkRegistered { version, .. } = &mut renamed[0] {
            *version = "2".into();
        }
        let (_, appends, records) = register(renamed.clone());
        assert_eq!((appends, records), (3, 8));
        let (_, appends, records) = register(renamed);
        assert_eq!((appends, records), (3, 8));

        let registry = state.registry().clone();
        drop(state);
        let again = open(dir.path(), 0).unwrap();
        assert!(*again.registry() == registry);
    }

    fn hello_outcomes(
        state: &CloudState,
        hello: &halo_tenancy::Registration,
        events: Vec<Event>,
    ) -> Vec<SiteRegistration> {
        let results = state.apply_tenancy(events, NOW).wait();
        hello
            .outcomes(results)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    /// Changes queued while the writer is busy are acknowledged after one shared
    /// append (group commit), in order, and all survive a restart; a refused one in
    /// the middle is refused alone.
    #[test]
    fn changes_queued_together_share_one_append() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, held, release) = Gate::new();
        let state = open_gated(dir.path(), &gate);
        gate.arm();
        let first = state.apply_policy(grant(0), NOW);
        held.recv_timeout(Duration::from_secs(60))
            .expect("the writer reaches the append");
        let queued: Vec<_> = (1..=50)
            .map(|i| state.apply_policy(grant(i), NOW))
            .collect();
        let refused = state.apply_credential(
            CredentialEvent::Revoked {
                token_hash: KeyHash::of("never issued"),
                actor: None,
                reason: None,
            },
            NOW,
        );
        let sites = state.apply_tenancy(site_events(3), NOW);
        release.send(()).unwrap();

        first.wait().unwrap();
        for reply in queued {
            reply.wait().unwrap();
        }
        assert!(matches!(refused.wait(), Err(CredentialError::Unknown)));
        for r in sites.wait() {
            r.unwrap();
        }
        assert_eq!(
            gate.appends.load(Ordering::SeqCst),
            2,
            "the first change alone, then everything queued behind it in one append"
        );
        // Each policy change with its audit entry; the tenancy events, and an
        // audit entry for each of the two groups' first holder.
        assert_eq!(gate.records.load(Ordering::SeqCst), 2 * (1 + 50) + 7 + 2);

        let grants = state.inspect(|w| w.grants.clone());
        let registry = state.registry().clone();
        drop(state);
        let again = open(dir.path(), 0).unwrap();
        assert!(again.inspect(|w| w.grants.clone()) == grants);
        assert!(*again.registry() == registry);
        assert_eq!(again.registry().site_count(), 3);
    }

    /// A batch of credential changes is published whole: a reader sampling the
    /// published credentials while a group commit lands sees the state before it or
    /// after it, never part of it. And while the writer holds a change in its own
    /// copy (which shares its structure with the published one), readers do not see
    /// it.
    #[test]
    fn credentials_are_published_one_whole_batch_at_a_time() {
        const BATCH: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let (gate, held, release) = Gate::new();
        let state = open_gated(dir.path(), &gate);
        let issue = |i: usize| CredentialEvent::Issued {
            token_hash: KeyHash::of(&format!("lnk_batch_{i}")),
            label: format!("batch {i}"),
            scope: Some(halo_credentials::Scope::demo_only()),
            actor: None,
        };
        gate.arm();
        let first = state.apply_credential(issue(0), NOW);
        held.recv_timeout(Duration::from_secs(60))
            .expect("the writer reaches the append");
        assert_eq!(
            state.credentials().len(),
            0,
            "a change being appended is not visible yet"
        );
        let queued: Vec<_> = (1..=BATCH)
            .map(|i| state.apply_credential(issue(i), NOW))
            .collect();
        let state = &state;
        let seen = std::thread::scope(|s| {
            let sampler = s.spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                loop {
                    let credentials = state.credentials();
                    let n = credentials.len();
                    assert_eq!(credentials.iter().count(), n, "a torn view");
                    seen.insert(n);
                    if n == BATCH + 1 {
                        return seen;
                    }
                    std::hint::spin_loop();
                }
            });
            release.send(()).unwrap();
            sampler.join().unwrap()
        });
        first.wait().unwrap();
        for reply in queued {
            reply.wait().unwrap();
        }
        assert_eq!(
            gate.appends.load(Ordering::SeqCst),
            2,
            "the first change alone, then the whole batch in one append"
        );
        assert!(
            seen.iter().all(|n| [0, 1, BATCH + 1].contains(n)),
            "a reader saw part of a batch: {seen:?}"
        );
    }
}

//! The Cloud's shared state: one writer that applies events, makes them durable and
//! only then publishes them to the lock-free router.
//!
//! Write path: take the writer lock, apply the event to the private registry /
//! grants (a refused event changes nothing), append it to the durable log (fsync),
//! and only then publish the change to the router and answer the client. If the
//! append fails the in-memory state is ahead of the disk, so the process stops
//! (fail-stop) rather than serve state that a restart would lose.
//!
//! Read paths: routing never takes the writer lock (the router is lock-free); the
//! status endpoints (find sites, site status) take it briefly, so they can never see
//! an event that is not yet durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use halo_ids::{LinkGuid, Timestamp};
use halo_policy::GrantsSnapshot;
use halo_policy::{Grants, KeyHash, Policy, PolicyError, PolicyEvent};
use halo_router::Router;
use halo_store::{RecoveryReport, StateWriter, Store, StoreConfig, StoreError};
use halo_tenancy::{
    AvailabilityConfig, Change, Event, LogEntry, Registry, RegistrySnapshot, TenancyError,
};
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

use halo_credentials::{CredentialError, Credentials};
use crate::record::{CredentialEvent, RECORD_VERSION, Record};

/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The full state, as stored in a snapshot: each part in its own crate's versioned
/// snapshot form.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// The tenancy registry.
    pub registry: RegistrySnapshot,
    /// The access-policy grants.
    pub grants: GrantsSnapshot,
    /// The Link credentials.
    pub credentials: Credentials,
}

type CloudStore = Store<Record, Snapshot>;

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

/// The private write side.
#[derive(Debug)]
pub struct Writer {
    registry: Registry,
    grants: Grants,
    credentials: Credentials,
    store: Option<CloudStore>,
    /// Snapshot setting (0: never).
    snapshot_every: u64,
    /// Events logged since the last snapshot (or since the start of the log).
    since_snapshot: u64,
    /// Writes periodic snapshots on a thread of its own, so that encoding and
    /// storing a large state does not hold up writers; `None` without a data dir.
    background: Option<Arc<Mutex<StateWriter<Snapshot>>>>,
    /// Set while a background snapshot is being written (at most one at a time).
    snapshotting: Arc<AtomicBool>,
}

impl Writer {
    /// The registry, as durable as the log.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The grants.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The Link credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Appends records durably; stops the process if that fails (see module docs).
    fn persist(&mut self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = store.append_batch(records) {
            tracing::error!(error = %e, "cannot append to the event log; stopping to avoid serving state a restart would lose");
            std::process::abort();
        }
        self.since_snapshot += records.len() as u64;
        let interval = self.snapshot_every.max(self.registry.site_count() as u64);
        if self.snapshot_every > 0 && self.since_snapshot >= interval {
            self.snapshot_in_background();
        }
    }

    /// Takes the state's snapshot form under the lock (cheap: no encoding) and hands
    /// encoding and storing to a thread. Skipped while the previous one still runs;
    /// the log is intact either way, a missing snapshot only makes recovery longer.
    fn snapshot_in_background(&mut self) {
        let (Some(store), Some(background)) = (self.store.as_ref(), self.background.as_ref())
        else {
            return;
        };
        if self.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        let upto = store.last_seq();
        let snapshot = self.snapshot_form();
        let background = Arc::clone(background);
        let busy = Arc::clone(&self.snapshotting);
        self.since_snapshot = 0;
        let spawned = std::thread::Builder::new()
            .name("halo-snapshot".into())
            .spawn(move || {
                if let Err(e) = background.lock().write(&snapshot, upto) {
                    tracing::warn!(error = %e, "snapshot failed");
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
        }
    }

    /// Writes a snapshot of the whole state as of the last logged event, now.
    fn snapshot(&mut self) -> Result<(), StoreError> {
        let snapshot = self.snapshot_form();
        if let Some(store) = self.store.as_mut() {
            let upto = store.last_seq();
            store.snapshot(&snapshot, upto)?;
            self.since_snapshot = 0;
        }
        Ok(())
    }
}

/// The Cloud's state, shared by every handler.
#[derive(Debug)]
pub struct CloudState {
    writer: Mutex<Writer>,
    router: Arc<Router>,
    availability: AvailabilityConfig,
    recovery: Option<RecoveryReport>,
}

impl CloudState {
    /// Opens the state: recovers it from the data directory (if any) and publishes it
    /// to `router`.
    ///
    /// # Errors
    /// [`StateError`] when the log cannot be read or replayed.
    pub fn open(config: &StateConfig, router: Arc<Router>) -> Result<Self, StateError> {
        let mut writer = Writer {
            registry: Registry::new(),
            grants: Grants::default(),
            credentials: Credentials::default(),
            store: None,
            snapshot_every: config.snapshot_every,
            since_snapshot: 0,
            background: None,
            snapshotting: Arc::new(AtomicBool::new(false)),
        };
        let mut recovery = None;
        if let Some(dir) = &config.data_dir {
            let (store, recovered) = open_store(dir, config.accept_damaged_log)?;
            if let Some(snapshot) = recovered.snapshot {
                restore(&mut writer, snapshot)?;
            }
            writer.since_snapshot = recovered.tail.len() as u64;
            writer.background = Some(Arc::new(Mutex::new(store.snapshot_writer()?)));
            for (index, record) in recovered.tail.iter().enumerate() {
                replay(&mut writer, record)
                    .map_err(|message| StateError::Replay { index, message })?;
            }
            writer.store = Some(store);
            recovery = Some(recovered.report);
        }
        let all: Vec<Change> = writer
            .registry
            .sites()
            .map(|s| Change::SiteUpserted(s.halo_guid()))
            .collect();
        router.apply_changes(&writer.registry, &all);
        router.set_policy(Arc::new(writer.grants.compile()));
        Ok(Self {
            writer: Mutex::new(writer),
            router,
            availability: config.availability,
            recovery,
        })
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

    /// Reads the durable state (briefly locks out writers).
    pub fn read(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock()
    }

    /// Applies tenancy events in order, each on its own: a refused event changes
    /// nothing and does not stop the others. The accepted ones are made durable in
    /// one batch, then published to the router. Returns one result per event.
    pub fn apply_tenancy(&self, events: &[Event], now: Timestamp) -> Vec<Result<(), TenancyError>> {
        let mut w = self.writer.lock();
        let mut results = Vec::with_capacity(events.len());
        let mut records = Vec::new();
        let mut changes = Vec::new();
        for event in events {
            match w.registry.apply(event, now) {
                Ok(c) => {
                    changes.extend(c);
                    records.push(Record::Tenancy(LogEntry::new(now, event.clone())));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        w.persist(&records);
        self.router.apply_changes(&w.registry, &changes);
        results
    }

    /// Applies one tenancy event.
    ///
    /// # Errors
    /// The [`TenancyError`] that refused it.
    pub fn apply_one(&self, event: Event, now: Timestamp) -> Result<(), TenancyError> {
        self.apply_tenancy(std::slice::from_ref(&event), now)
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Records a heartbeat: liveness only, not logged (a restart starts every site
    /// as not yet heard, which is the truth).
    pub fn heartbeat(&self, link: LinkGuid, now: Timestamp) {
        let mut w = self.writer.lock();
        if let Ok(changes) = w.registry.apply(&Event::Heartbeat { link }, now) {
            self.router.apply_changes(&w.registry, &changes);
        }
    }

    /// Applies a policy event, makes it durable and publishes the new policy.
    ///
    /// # Errors
    /// The [`PolicyError`] that refused it.
    pub fn apply_policy(&self, event: PolicyEvent, now: Timestamp) -> Result<(), PolicyError> {
        let mut w = self.writer.lock();
        w.grants.apply(&event)?;
        w.persist(&[Record::Policy {
            version: RECORD_VERSION,
            at: now,
            event,
        }]);
        let previous = self.router.policy();
        self.router
            .set_policy(Arc::new(w.grants.compile_with(&previous)));
        Ok(())
    }

    /// Applies a credential event and makes it durable.
    ///
    /// # Errors
    /// The [`CredentialError`] that refused it (nothing is logged then).
    pub fn apply_credential(
        &self,
        event: CredentialEvent,
        now: Timestamp,
    ) -> Result<(), CredentialError> {
        let mut w = self.writer.lock();
        w.credentials.apply(&event)?;
        w.persist(&[Record::Credential {
            version: RECORD_VERSION,
            at: now,
            event,
        }]);
        Ok(())
    }

    /// Writes a snapshot now (for operators and benchmarks).
    ///
    /// # Errors
    /// [`StoreError`] if it cannot be written; the log is unaffected.
    pub fn snapshot_now(&self) -> Result<(), StoreError> {
        self.writer.lock().snapshot()
    }

    /// The current compiled policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.router.policy()
    }

    /// Checks a presented Link token: issued and not revoked.
    ///
    /// # Errors
    /// [`CredentialError::Unknown`] or [`CredentialError::Revoked`].
    pub fn check_credential(&self, token_hash: &KeyHash) -> Result<(), CredentialError> {
        self.writer.lock().credentials.check(token_hash).map(drop)
    }
}

/// Loads a snapshot into an empty writer.
fn restore(w: &mut Writer, snapshot: Snapshot) -> Result<(), StateError> {
    if snapshot.version != SNAPSHOT_VERSION {
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

fn open_store(
    dir: &Path,
    accept_damaged_log: bool,
) -> Result<(CloudStore, halo_store::Recovered<Record, Snapshot>), StateError> {
    // The writer decides when to snapshot (see `StateConfig::snapshot_every`).
    let config = StoreConfig {
        snapshot_every: 0,
        keep_snapshots: 2,
    };
    let (mut store, recovered) = Store::open(dir, config)?;
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

fn replay(w: &mut Writer, record: &Record) -> Result<(), String> {
    match record {
        Record::Tenancy(entry) => w
            .registry
            .apply(&entry.event, entry.at)
            .map(drop)
            .map_err(|e| e.to_string()),
        Record::Policy { event, .. } => w.grants.apply(event).map_err(|e| e.to_string()),
        Record::Credential { event, .. } => {
            // Logs written before the one-to-one rule may hold a binding that the
            // rule now refuses (a hijack): skipping it is the safe reading.
            if let Err(e) = w.credentials.apply(event) {
                tracing::warn!(error = %e, "logged credential event refused on replay; skipped");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halo_ids::{Crn, Environment, HaloGuid, PmsId, PmsType};
    use halo_policy::IntegratorId;
    use halo_router::RouterConfig;
    use halo_tenancy::{Catalogue, SiteIdentity};

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

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
            events.push(Event::SiteReady { link, halo_guid: site });
        }
        events
    }

    fn grant(i: usize) -> PolicyEvent {
        PolicyEvent::PracticeEnabled {
            integrator: "acme".parse::<IntegratorId>().unwrap(),
            pms_id: PmsId::new(PmsType::D4w, format!("CRN{i}").parse().unwrap()),
        }
    }

    #[test]
    fn restart_recovers_snapshot_plus_tail_equal_to_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(dir.path(), 5).unwrap();
        for r in state.apply_tenancy(&site_events(30), NOW) {
            r.unwrap();
        }
        for i in 0..4 {
            state.apply_policy(grant(i), NOW).unwrap();
        }
        state.snapshot_now().unwrap();
        for i in 4..8 {
            state.apply_policy(grant(i), NOW).unwrap();
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
            .unwrap();
        let (registry, grants) = {
            let w = state.read();
            (w.registry().clone(), w.grants().clone())
        };
        drop(state);
        let again = open(dir.path(), 5).unwrap();
        let report = again.recovery().unwrap().clone();
        assert!(
            report.snapshot_seq.is_some(),
            "a snapshot was used: {report}"
        );
        assert!(report.events_replayed > 0, "and a tail replayed: {report}");
        let w = again.read();
        assert!(*w.registry() == registry, "registry differs after recovery");
        assert!(*w.grants() == grants, "grants differ after recovery");
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
        for r in state.apply_tenancy(&site_events(4), NOW) {
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
        assert_eq!(accepted.read().registry().site_count(), 4);
    }
}

//! The typed helper: events (through an [`EventCodec`], JSON by default) and state
//! (JSON) over any [`EventLog`].

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::log::{EventLog, Rejected, SnapshotRead};
use crate::{AnyLog, Corruption, Seq, SkippedSnapshot, SnapshotSink, SqliteLog, StoreError};

/// How a [`Store`] turns its events into log records and back. The store never
/// looks inside a record: a codec may write any bytes, and may read more than one
/// form (an older build's JSON and a newer compact form, say), as long as what it
/// wrote it reads back equal.
pub trait EventCodec<E> {
    /// Appends the record for `event` to `out` (empty when called).
    ///
    /// # Errors
    /// Why the event cannot be written; [`Store`] returns it as
    /// [`StoreError::Encode`].
    fn encode(event: &E, out: &mut Vec<u8>) -> Result<(), String>;

    /// Reads an event from one whole record.
    ///
    /// # Errors
    /// Why the record is not an event; recovery stops there
    /// ([`RecoveryReport::stopped_at`]).
    fn decode(record: &[u8]) -> Result<E, String>;
}

/// The default [`EventCodec`]: each event is one JSON document (serde).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json;

impl<E: Serialize + DeserializeOwned> EventCodec<E> for Json {
    fn encode(event: &E, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, event).map_err(|e| e.to_string())
    }

    fn decode(record: &[u8]) -> Result<E, String> {
        serde_json::from_slice(record).map_err(|e| e.to_string())
    }
}

/// When the caller should take snapshots and how many to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// [`Store::snapshot_due`] turns true once this many events were appended since
    /// the latest snapshot; 0 means never.
    pub snapshot_every: u64,
    /// How many snapshots to keep (at least 1 is always kept). With 2, a damaged
    /// latest snapshot falls back to the one before plus a longer tail.
    pub keep_snapshots: usize,
}

impl StoreConfig {
    /// A snapshot every 100 000 events, keeping the last 2. Replaying 100 000
    /// small events takes about 0.3 s, well under loading a 1M-site snapshot
    /// (about 2.5 s), so the tail never dominates start-up; see `store_bench`.
    pub const RECOMMENDED: StoreConfig = StoreConfig {
        snapshot_every: 100_000,
        keep_snapshots: 2,
    };
}

/// What recovery found: the newest usable snapshot, the events after it, and a
/// report of what was read and skipped.
#[derive(Debug)]
pub struct Recovered<E, S> {
    /// The newest snapshot that passed its checksum and decoded, if any.
    pub snapshot: Option<S>,
    /// The events after the snapshot (after the start of the log if none), in order,
    /// up to the last good one.
    pub tail: Vec<E>,
    /// What happened.
    pub report: RecoveryReport,
}

/// How recovery went. Log it at start-up; act on [`stopped_at`](Self::stopped_at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The sequence number of the snapshot used, if any.
    pub snapshot_seq: Option<Seq>,
    /// Newer snapshots that were damaged or undecodable and so were passed over.
    pub snapshots_skipped: Vec<SkippedSnapshot>,
    /// How many events were replayed after the snapshot.
    pub events_replayed: u64,
    /// The recovered state is as of this sequence number.
    pub last_seq: Seq,
    /// Where replay stopped early, if it did. `None` means the whole log was read.
    pub stopped_at: Option<Corruption>,
}

impl RecoveryReport {
    /// True when every stored event was recovered (snapshots may still have been
    /// skipped in favour of an older one).
    pub fn is_complete(&self) -> bool {
        self.stopped_at.is_none()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.snapshot_seq {
            Some(s) => write!(f, "snapshot at {s}")?,
            None => write!(f, "no snapshot")?,
        }
        write!(
            f,
            " + {} event(s) replayed, state as of {}",
            self.events_replayed, self.last_seq
        )?;
        for s in &self.snapshots_skipped {
            write!(f, "; {s}")?;
        }
        if let Some(c) = &self.stopped_at {
            write!(f, "; STOPPED EARLY: {c}")?;
        }
        Ok(())
    }
}

/// A durable event log of `E` with snapshots of `S`: events written and read by
/// the codec `C` ([`Json`] unless said otherwise), snapshots as JSON.
///
/// Opening recovers (there is no way to write before having read), and a store
/// whose recovery stopped at corruption refuses to write until the caller resolves
/// it with [`Store::quarantine_unreplayed`].
pub struct Store<E, S, L = SqliteLog, C = Json> {
    log: L,
    config: StoreConfig,
    since_snapshot: u64,
    unresolved: Option<Corruption>,
    _types: PhantomData<Types<E, S, C>>,
}

/// What a [`Store`] holds only as types: its events, its state and its codec.
type Types<E, S, C> = fn() -> (E, S, C);

impl<E, S, L: fmt::Debug, C> fmt::Debug for Store<E, S, L, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("log", &self.log)
            .field("config", &self.config)
            .field("since_snapshot", &self.since_snapshot)
            .field("unresolved", &self.unresolved)
            .finish()
    }
}

impl<E, S, C> Store<E, S, SqliteLog, C>
where
    C: EventCodec<E>,
    S: Serialize + DeserializeOwned,
{
    /// Opens (creating if needed) the SQLite store in `dir`, fully durable, and
    /// recovers it.
    ///
    /// # Errors
    /// As [`SqliteLog::open`]; damage found during recovery is not an error but is
    /// in the returned report.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(Self, Recovered<E, S>), StoreError> {
        Self::with_log(SqliteLog::open(dir)?, config)
    }

    /// A typed snapshot writer with its own connection, to move to another thread
    /// so that a large snapshot does not hold up appends (see
    /// [`SnapshotWriter`](crate::SnapshotWriter)). Tell this store afterwards with
    /// [`Store::snapshot_written`].
    ///
    /// # Errors
    /// [`StoreError::Unresolved`]; SQLite fails.
    pub fn snapshot_writer(&self) -> Result<StateWriter<S>, StoreError> {
        self.check_resolved()?;
        Ok(StateWriter {
            inner: SnapshotSink::Sqlite(self.log.snapshot_writer()?),
            keep: self.config.keep_snapshots.max(1),
            _state: PhantomData,
        })
    }
}

impl<E, S, C> Store<E, S, AnyLog, C>
where
    C: EventCodec<E>,
    S: Serialize + DeserializeOwned,
{
    /// As [`Store::snapshot_writer`] on SQLite, for whichever engine is inside.
    ///
    /// # Errors
    /// [`StoreError::Unresolved`]; the engine cannot open a second connection.
    pub fn snapshot_writer(&self) -> Result<StateWriter<S>, StoreError> {
        self.check_resolved()?;
        Ok(StateWriter {
            inner: self.log.snapshot_sink()?,
            keep: self.config.keep_snapshots.max(1),
            _state: PhantomData,
        })
    }
}

/// Writes snapshots of `S` from another thread; made by [`Store::snapshot_writer`].
pub struct StateWriter<S> {
    inner: SnapshotSink,
    keep: usize,
    _state: PhantomData<fn(&S)>,
}

impl<S> fmt::Debug for StateWriter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateWriter")
            .field("inner", &self.inner)
            .field("keep", &self.keep)
            .finish()
    }
}

impl<S: Serialize> StateWriter<S> {
    /// Stores `state`, the result of applying every event up to and including
    /// `upto`, then drops snapshots beyond the store's `keep_snapshots`.
    ///
    /// # Errors
    /// [`StoreError::SnapshotAhead`] if `upto` is not yet committed; encoding and
    /// storage failures.
    pub fn write(&mut self, state: &S, upto: Seq) -> Result<(), StoreError> {
        let bytes = encode_state(state)?;
        self.inner.write(upto, &bytes)?;
        self.inner.retain(self.keep)?;
        Ok(())
    }
}

fn encode_events<E, C: EventCodec<E>>(events: &[E]) -> Result<Vec<Vec<u8>>, StoreError> {
    events
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            C::encode(e, &mut out).map_err(|reason| StoreError::Encode {
                what: "event",
                reason,
            })?;
            Ok(out)
        })
        .collect()
}

fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(state).map_err(|err| StoreError::Encode {
        what: "snapshot",
        reason: err.to_string(),
    })
}

impl<E, S, L, C> Store<E, S, L, C>
where
    C: EventCodec<E>,
    S: Serialize + DeserializeOwned,
    L: EventLog,
{
    /// Wraps an open log and recovers it.
    ///
    /// # Errors
    /// Storage failures while reading.
    pub fn with_log(log: L, config: StoreConfig) -> Result<(Self, Recovered<E, S>), StoreError> {
        let mut store = Store {
            log,
            config,
            since_snapshot: 0,
            unresolved: None,
            _types: PhantomData,
        };
        let recovered = store.recover()?;
        let base = recovered.report.snapshot_seq.unwrap_or(Seq::ZERO);
        store.since_snapshot = store.log.last_seq().get().saturating_sub(base.get());
        store.unresolved = recovered.report.stopped_at.clone();
        Ok((store, recovered))
    }

    /// Reads the newest usable snapshot and the events after it, stopping at the
    /// first damaged or undecodable event. Does not change the store.
    ///
    /// # Errors
    /// Storage failures only.
    pub fn recover(&self) -> Result<Recovered<E, S>, StoreError> {
        let mut snapshots_skipped = Vec::new();
        let mut base: Option<(Seq, S)> = None;
        for upto in self.log.snapshot_seqs()? {
            match self.log.read_snapshot(upto)? {
                SnapshotRead::Valid(bytes) => match serde_json::from_slice::<S>(&bytes) {
                    Ok(state) => {
                        base = Some((upto, state));
                        break;
                    }
                    Err(e) => snapshots_skipped.push(SkippedSnapshot {
                        upto,
                        reason: format!("undecodable state: {e}"),
                    }),
                },
                SnapshotRead::Damaged(reason) => {
                    snapshots_skipped.push(SkippedSnapshot { upto, reason });
                }
            }
        }
        let (snapshot_seq, snapshot) = match base {
            Some((seq, state)) => (Some(seq), Some(state)),
            None => (None, None),
        };
        let mut tail = Vec::new();
        let read = self
            .log
            .read_from(snapshot_seq.unwrap_or(Seq::ZERO), &mut |_, bytes| {
                let event = C::decode(bytes).map_err(Rejected)?;
                tail.push(event);
                Ok(())
            })?;
        Ok(Recovered {
            snapshot,
            tail,
            report: RecoveryReport {
                snapshot_seq,
                snapshots_skipped,
                events_replayed: read.delivered,
                last_seq: read.last_delivered,
                stopped_at: read.stopped_at,
            },
        })
    }

    /// Durably appends one event and returns its sequence number. Apply the event
    /// (make it visible, acknowledge it) only after this returns `Ok`.
    ///
    /// # Errors
    /// [`StoreError::Unresolved`] after a recovery that stopped early; encoding and
    /// storage failures.
    pub fn append(&mut self, event: &E) -> Result<Seq, StoreError> {
        self.append_batch(std::slice::from_ref(event))
    }

    /// Durably appends events in one transaction (all or none) and returns the
    /// sequence number of the last one.
    ///
    /// # Errors
    /// As [`Store::append`].
    pub fn append_batch(&mut self, events: &[E]) -> Result<Seq, StoreError> {
        self.check_resolved()?;
        let encoded = encode_events::<E, C>(events)?;
        let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let seq = self.log.append(&slices)?;
        self.since_snapshot += events.len() as u64;
        Ok(seq)
    }

    /// Durably appends events in one transaction only if the log still ends at
    /// `expected`, the position the caller decided them on (see
    /// [`EventLog::append_at`]); returns the sequence number of the last one.
    ///
    /// # Errors
    /// [`StoreError::ConcurrentWriter`] when another writer appended first (nothing
    /// was written); as [`Store::append`].
    pub fn append_batch_at(&mut self, expected: Seq, events: &[E]) -> Result<Seq, StoreError> {
        self.check_resolved()?;
        let encoded = encode_events::<E, C>(events)?;
        let slices: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let seq = self.log.append_at(expected, &slices)?;
        self.since_snapshot += events.len() as u64;
        Ok(seq)
    }

    /// True when [`StoreConfig::snapshot_every`] events were appended since the
    /// latest snapshot; the caller then calls [`Store::snapshot`] with its state.
    pub fn snapshot_due(&self) -> bool {
        self.config.snapshot_every > 0 && self.since_snapshot >= self.config.snapshot_every
    }

    /// Stores `state`, which must be the result of applying every event up to and
    /// including `upto`, then drops snapshots beyond
    /// [`StoreConfig::keep_snapshots`].
    ///
    /// # Errors
    /// [`StoreError::Unresolved`], [`StoreError::SnapshotAhead`], encoding and
    /// storage failures.
    pub fn snapshot(&mut self, state: &S, upto: Seq) -> Result<(), StoreError> {
        self.check_resolved()?;
        let bytes = encode_state(state)?;
        self.log.write_snapshot(upto, &bytes)?;
        self.log
            .retain_snapshots(self.config.keep_snapshots.max(1))?;
        self.snapshot_written(upto);
        Ok(())
    }

    /// Records that a snapshot up to `upto` was written elsewhere (by a
    /// [`StateWriter`]), so that [`Store::snapshot_due`] counts from there.
    pub fn snapshot_written(&mut self, upto: Seq) {
        let since = self.log.last_seq().get().saturating_sub(upto.get());
        self.since_snapshot = self.since_snapshot.min(since);
    }

    /// The sequence number of the last appended event.
    pub fn last_seq(&self) -> Seq {
        self.log.last_seq()
    }

    /// How long the durable commit (the fsync) of the last append took, when the
    /// log measures it; for metrics.
    pub fn last_commit_time(&self) -> Option<std::time::Duration> {
        self.log.last_commit_time()
    }

    /// The corruption that recovery stopped at, while it is unresolved.
    pub fn unresolved(&self) -> Option<&Corruption> {
        self.unresolved.as_ref()
    }

    /// Resolves the corruption recovery stopped at by moving every record after the
    /// last good one into the quarantine tables (kept, never replayed), so that
    /// writing can resume. Returns how many records were moved (0 if nothing was
    /// unresolved). Call only when an operator has decided that the state as of
    /// [`RecoveryReport::last_seq`] is the one to continue from.
    ///
    /// # Errors
    /// Storage failures.
    pub fn quarantine_unreplayed(&mut self) -> Result<u64, StoreError> {
        let Some(c) = self.unresolved.clone() else {
            return Ok(0);
        };
        let moved = self.log.quarantine_after(c.last_good, &c.to_string())?;
        self.unresolved = None;
        Ok(moved)
    }

    /// The underlying log.
    pub fn log(&self) -> &L {
        &self.log
    }

    fn check_resolved(&self) -> Result<(), StoreError> {
        match &self.unresolved {
            Some(c) => Err(StoreError::Unresolved(Box::new(c.clone()))),
            None => Ok(()),
        }
    }
}

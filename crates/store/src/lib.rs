//! Durable append-only event log with snapshots, on SQLite by default.
//!
//! The store knows nothing about tenancy or policy: records are opaque bytes
//! ([`EventLog`]) or opaque serde values ([`Store`]), so the state machines that
//! give them meaning live elsewhere and stay deterministic.
//!
//! - [`EventLog`] is the small trait a storage engine implements: durable batched
//!   appends, checksummed reads that stop at the first damage, checksummed snapshots.
//! - [`SqliteLog`] implements it on one SQLite file (`<dir>/halo.db`, WAL,
//!   `synchronous=FULL`: an append is fsync'd before it returns).
//! - `PgLog` (feature `postgres`) implements it on a PostgreSQL database shared
//!   by the nodes of a Cloud cluster, with optimistic appends
//!   ([`EventLog::append_at`]) and `NOTIFY` on every append.
//! - [`Store`] is the typed helper: events through an [`EventCodec`] (JSON by
//!   default; the records stay opaque bytes to the store) and JSON state, recovery as
//!   "newest good snapshot + tail", a snapshot policy the caller drives, and a
//!   refusal to write past unresolved corruption.
//! - [`salvage`](salvage()) (`halo-store salvage`) is the way out when SQLite reports
//!   the file itself as damaged ([`StoreError::StorageDamaged`]): it copies every
//!   readable record, and the newest readable snapshot, into a new log, reads the
//!   damaged file page by page where SQLite cannot, never writes it, and reports
//!   what was lost. [`salvage_in_place`] does the same inside a data directory and
//!   keeps the damaged files in `damaged-<time>/`.
//!
//! Recovery never guesses: a record whose CRC-32 fails, a gap in the sequence, a
//! log shorter than its committed mark, or an event that does not decode stops
//! replay at the last good event, and [`RecoveryReport::stopped_at`] says what and
//! where. Nothing is deleted unless the caller asks
//! ([`Store::quarantine_unreplayed`]). A damaged latest snapshot falls back to the
//! previous one and a longer tail.
//!
//! ```
//! use halo_store::{Store, StoreConfig};
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let config = StoreConfig { snapshot_every: 2, keep_snapshots: 2 };
//! {
//!     let (mut store, recovered) = Store::<String, Vec<String>>::open(dir.path(), config)?;
//!     assert!(recovered.snapshot.is_none() && recovered.tail.is_empty());
//!     store.append(&"a".to_owned())?;
//!     let upto = store.append(&"b".to_owned())?;
//!     assert!(store.snapshot_due());
//!     store.snapshot(&vec!["a".to_owned(), "b".to_owned()], upto)?;
//!     store.append(&"c".to_owned())?;
//! }
//! let (_store, recovered) = Store::<String, Vec<String>>::open(dir.path(), config)?;
//! assert_eq!(recovered.snapshot, Some(vec!["a".to_owned(), "b".to_owned()]));
//! assert_eq!(recovered.tail, vec!["c".to_owned()]);
//! assert!(recovered.report.is_complete());
//! # Ok::<(), halo_store::StoreError>(())
//! ```

mod any;
mod corruption;
mod error;
mod log;
mod pages;
#[cfg(feature = "postgres")]
mod postgres;
mod salvage;
mod seq;
mod sqlite;
mod store;
mod verify;

#[cfg(test)]
mod tests;

pub use any::{AnyLog, SnapshotSink};
pub use corruption::{Corruption, CorruptionKind, SkippedSnapshot};
pub use error::StoreError;
pub use log::{EventLog, ReadReport, Rejected, SnapshotRead, Visit};
#[cfg(feature = "postgres")]
pub use postgres::{
    CounterRound, LeaseRound, LiveLease, NOTIFY_CHANNEL, PG_SCHEMA_VERSION, PgCounters, PgLeases,
    PgListener, PgLog, PgOptions,
};
pub use salvage::{
    InPlaceSalvage, SalvageProgress, SalvageReport, SalvagedSnapshot, salvage, salvage_in_place,
};
pub use seq::Seq;
pub use sqlite::{Durability, FORMAT_VERSION, SnapshotWriter, SqliteLog};
pub use store::{EventCodec, Json, Recovered, RecoveryReport, StateWriter, Store, StoreConfig};
pub use verify::{VerifyReport, verify};

//! The crate's one error type.

use crate::{Corruption, Seq};

/// Everything that can go wrong while opening, appending to, snapshotting or
/// reading a store.
///
/// Corruption found while *recovering* is not an error: recovery stops at the last
/// good event and says what it found in its report (see
/// [`RecoveryReport::stopped_at`](crate::RecoveryReport::stopped_at)). It becomes an
/// error only when a caller tries to write past it ([`StoreError::Unresolved`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The underlying SQLite database failed (disk full, permissions, locked, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A filesystem operation outside SQLite failed (creating the data directory).
    #[error("io on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database file was written by an incompatible version of this crate, or is
    /// not a halo store at all.
    #[error("unsupported store format: {found} (this build reads format {supported})")]
    UnsupportedFormat {
        /// What the file says (or a short description of what is missing).
        found: String,
        /// The format this build reads and writes.
        supported: u32,
    },
    /// Another writer appended to the same database since this handle was opened;
    /// two processes must never write one data directory.
    #[error("concurrent writer: expected the log to end at {expected}, it ends at {found}")]
    ConcurrentWriter {
        /// Where this handle believed the log ended.
        expected: Seq,
        /// Where the database says it ends.
        found: Seq,
    },
    /// A snapshot was offered for a sequence number the log has not reached.
    #[error("snapshot at {upto} is ahead of the log, which ends at {last}")]
    SnapshotAhead {
        /// The snapshot's sequence number.
        upto: Seq,
        /// The last appended sequence number.
        last: Seq,
    },
    /// Recovery stopped at corruption that the caller has not resolved yet, so the
    /// store refuses to write after it (new events would sit behind the bad record
    /// and never be replayed). Call
    /// [`Store::quarantine_unreplayed`](crate::Store::quarantine_unreplayed) once an
    /// operator has decided.
    #[error("refusing to write: unresolved corruption in the log ({0})")]
    Unresolved(Box<Corruption>),
    /// An event or snapshot could not be encoded as JSON.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// `event` or `snapshot`.
        what: &'static str,
        /// The serializer's message.
        reason: String,
    },
    /// SQLite reports the database file itself as damaged (`SQLITE_CORRUPT`,
    /// `SQLITE_NOTADB`: "database disk image is malformed", "file is not a
    /// database"). A page of the file is unreadable, not one record, so the log can
    /// neither be replayed to its end nor have a damaged tail set aside. Nothing was
    /// changed; [`salvage`](crate::salvage()) (`halo-store salvage`) copies every
    /// readable record into a new log and says what was lost.
    #[error(
        "storage damaged: SQLite reports {path} as damaged ({reason}); the database file itself is damaged, not just one record. The file was left as it was. Run `halo-store salvage {path} <new-dir>` to copy every readable record into a new log and see what was lost"
    )]
    StorageDamaged {
        /// The database file.
        path: String,
        /// SQLite's message.
        reason: String,
    },
    /// A salvage of this data directory was interrupted while the salvaged log was
    /// being put in place of the damaged one (the damaged files are already set
    /// aside). Opening the directory for writing finishes it.
    #[error(
        "an interrupted salvage is pending in {dir}: start the Cloud on it (opening it for writing finishes the swap; see {dir}/salvage-swap)"
    )]
    SalvagePending {
        /// The data directory.
        dir: String,
    },
    /// The PostgreSQL server answered with an error (the cluster store).
    #[error("postgres: {0}")]
    Postgres(String),
    /// The store's server cannot be reached now (connection refused, lost or timed
    /// out). Nothing is known to have been written; retry once it is back.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A sequence number does not fit SQLite's signed 64-bit integer.
    #[error("sequence number overflow")]
    SeqOverflow,
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

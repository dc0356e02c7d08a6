//! Durable append-only event log with snapshots, on SQLite by default.

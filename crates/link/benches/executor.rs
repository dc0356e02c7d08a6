//! The Link's per-job cost against a direct SQLite query of the same statement.
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench -p halo-link --bench executor`
//!
//! - `direct_prepared`: baseline. One open connection, cached statement, rows to
//!   JSON: what a query costs with no Link checks at all.
//! - `direct_open`: a fresh read-only connection per query, no checks.
//! - `execute`: [`halo_link::execute`]: pooled read-only connection, its statement
//!   cache behind the authorizer gate, schema check, progress handler, epoch fence,
//!   rows to JSON.
//!
//! Results are in the crate's report (ratios against `direct_prepared`).

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use halo_ids::{Epoch, HaloGuid};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Database, execute};
use halo_protocol::{Allowlist, ExecutionMode, QueryJob};
use rusqlite::{Connection, OpenFlags};

const SQL: &str = "SELECT patient_id, first_name, last_name, suburb FROM patients \
                   WHERE patient_id BETWEEN 1 AND 10 ORDER BY patient_id";

fn rows_to_json(conn: &Connection) -> Vec<u8> {
    let mut stmt = conn.prepare_cached(SQL).unwrap();
    let rows: Vec<serde_json::Value> = stmt
        .query_map([], |r| {
            Ok(serde_json::json!({
                "patient_id": r.get::<_, i64>(0)?,
                "first_name": r.get::<_, String>(1)?,
                "last_name": r.get::<_, String>(2)?,
                "suburb": r.get::<_, String>(3)?,
            }))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    serde_json::to_vec(&rows).unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    generate(
        &path,
        &DemoPractice::new("AB1".parse().unwrap(), "Bench Dental"),
    )
    .unwrap();
    let halo = HaloGuid::from_u128(1).unwrap();
    let db = Database::open(&path, halo, Epoch::ZERO).unwrap();
    let job = QueryJob {
        query_id: 1,
        halo_guid: halo,
        epoch: Epoch::new(1),
        timeout_ms: 30_000,
        queue_timeout_ms: None,
        catalogue: None,
        mode: ExecutionMode::Reader,
        command: SQL.into(),
        procedure: None,
        parameters: vec![],
        allowlist: Allowlist {
            tables: vec!["patients".into()],
            procedures: vec![],
            allow_write: false,
        },
    };
    assert_eq!(execute(&db, &job).unwrap().rows, 10);

    let mut g = c.benchmark_group("small_query_10_rows");
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    g.bench_function("direct_prepared", |b| b.iter(|| rows_to_json(&conn)));
    g.bench_function("direct_open", |b| {
        b.iter(|| {
            let conn =
                Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            rows_to_json(&conn)
        })
    });
    g.bench_function("execute", |b| b.iter(|| execute(&db, &job).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

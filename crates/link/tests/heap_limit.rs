//! SQLite's heap limit, in a test binary of its own: the limit is process-wide and
//! can only go down, so it must not meet the other tests.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use halo_ids::{Epoch, HaloGuid};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Database, SqlLimits, execute};
use halo_protocol::{Allowlist, ExecutionMode, QueryErrorKind, QueryJob};

fn reader(sql: &str) -> QueryJob {
    QueryJob {
        query_id: 1,
        halo_guid: HaloGuid::from_u128(7).unwrap(),
        epoch: Epoch::ZERO,
        timeout_ms: 10_000,
        queue_timeout_ms: None,
        catalogue: None,
        mode: ExecutionMode::Reader,
        command: sql.into(),
        procedure: None,
        parameters: vec![],
        allowlist: Allowlist {
            tables: vec!["patients".into()],
            procedures: vec![],
            allow_write: false,
        },
    }
}

#[test]
fn a_query_over_the_heap_limit_fails_cleanly_and_the_link_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sqlite");
    generate(
        &path,
        &DemoPractice::new("AB123".parse().unwrap(), "Smile Co"),
    )
    .unwrap();
    let db = Database::open(&path, HaloGuid::from_u128(7).unwrap(), Epoch::ZERO)
        .unwrap()
        .with_limits(SqlLimits {
            max_value_bytes: 64 * 1024 * 1024,
            heap_limit_bytes: 16 * 1024 * 1024,
        });
    let ok = |sql: &str| {
        let out = execute(&db, &reader(sql)).unwrap();
        String::from_utf8(out.json).unwrap()
    };
    assert_eq!(
        ok("SELECT count(*) > 0 AS some FROM patients"),
        r#"[{"some":1}]"#
    );
    // 32 MB in one value: under the value limit, over the heap limit.
    let err = execute(
        &db,
        &reader("SELECT length(replace(printf('%.4000000c', 'a'), 'a', 'aaaaaaaa')) AS n"),
    )
    .unwrap_err();
    assert_eq!(err.kind, QueryErrorKind::Database, "{err:?}");
    assert!(
        err.message.contains("more memory than the link allows"),
        "{err:?}"
    );
    assert!(err.message.contains("16777216 bytes"), "{err:?}");
    // The next queries run (on a fresh connection: the failed one was not pooled).
    for _ in 0..3 {
        assert_eq!(
            ok("SELECT count(*) > 0 AS some FROM patients"),
            r#"[{"some":1}]"#
        );
    }
    assert_eq!(
        ok("SELECT length(printf('%.1000000c', 'a')) AS n"),
        r#"[{"n":1000000}]"#
    );
}

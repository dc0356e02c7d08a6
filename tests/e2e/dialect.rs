//! Dialect smuggling (issue 10): a command the Cloud's analyser and the Link's SQLite
//! could read differently is refused at the Cloud with a reason, and the Link runs
//! only allowlisted SQL functions even when the Cloud let a command through.

use halo_ids::Environment;
use serde_json::json;

use crate::fixture::{Harness, INTEGRATOR, TABLES, TestLink, message, practice, rows};

/// A Stage practice paired with INTEGRATOR, and its key.
async fn paired(crn: &str) -> (Harness, TestLink, String) {
    let mut h = Harness::start().await;
    let link = h
        .link(Environment::Stage, &[practice(crn, "Smuggled Dental")])
        .await;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(link.sites[0].0).await;
    assert_eq!(h.pair(&key, link.sites[0].0).await.0, 200);
    (h, link, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_smuggling_nested_comment_is_refused_with_a_reason() {
    let (h, link, key) = paired("SMUG01").await;
    let halo = link.sites[0].1;
    // The setup works: an ordinary query over the same table runs.
    let (status, body) = h
        .query(
            &key,
            halo,
            "SELECT count(*) AS n FROM patients /* a comment */",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rows(&body), [json!({"n": 12})]);

    // SQL Server nests `/* */`, SQLite does not: the reported attack, and a variant
    // reading a table outside the grant.
    for (sql, reason) in [
        (
            "SELECT 1 /* /* */ , length(randomblob(400000000)) AS n -- */",
            "inside a block comment",
        ),
        (
            "SELECT 1 AS n /* /* */ , (SELECT practice_name FROM practice_info) AS p -- */",
            "inside a block comment",
        ),
        (
            "SELECT count(*) AS n FROM patients /* never closed",
            "unterminated block comment",
        ),
        ("SELECT count(*) AS n FROM patients # comment?", "`#`"),
        (
            "SELECT count(*) AS n FROM patients WHERE first_name = N'x'",
            "prefix",
        ),
    ] {
        let (status, body) = h.query(&key, halo, sql).await;
        // An unanalysable command is denied like an unauthorised one (403), as
        // `this is not sql` is; Halo's own API would answer 400 for bad SQL.
        assert!(matches!(status, 400 | 403), "{sql}: {status} {body}");
        let msg = message(&body);
        assert!(msg.contains(reason), "{sql}: {msg}");
        assert!(msg.contains("SQLite"), "{sql}: {msg}");
    }
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialect_smuggling_memory_functions_are_refused_by_the_link_even_if_the_cloud_allows_them()
{
    let (h, link, key) = paired("SMUG02").await;
    let halo = link.sites[0].1;
    // Not a SQLite built-in the Cloud knows: a routine nobody is granted.
    let (status, body) = h
        .query(&key, halo, "SELECT length(randomblob(400000000)) AS n")
        .await;
    assert_eq!(status, 403, "{body}");
    let msg = message(&body);
    assert!(msg.contains("randomblob"), "{msg}");
    assert!(!msg.contains("link"), "the Cloud should refuse it: {msg}");

    // A vendor grants routines by those names: the Cloud now lets the commands
    // through, and the Link's function allowlist refuses them at the database.
    h.admin(
        reqwest::Method::PUT,
        &format!("/admin/integrators/{INTEGRATOR}/components"),
        json!({"pmsType": "D4w", "catalogues": ["d4w"], "tables": TABLES,
               "procedures": ["randomblob", "zeroblob"], "allowWrite": false}),
    )
    .await;
    for (sql, function) in [
        (
            "SELECT length(randomblob(400000000)) AS n FROM patients",
            "randomblob",
        ),
        (
            "SELECT length(zeroblob(1000000000)) AS n FROM patients",
            "zeroblob",
        ),
    ] {
        let (status, body) = h.query(&key, halo, sql).await;
        assert_eq!(status, 403, "{sql}: {body}");
        let msg = message(&body);
        assert!(msg.contains("link refused"), "{sql}: {msg}");
        assert!(msg.contains(function), "{sql}: {msg}");
    }
    // The Link is fine afterwards.
    let (status, body) = h
        .query(&key, halo, "SELECT count(*) AS n FROM patients")
        .await;
    assert_eq!(status, 200, "{body}");
    h.cloud.stop().await;
}

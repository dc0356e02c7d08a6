//! The async path end to end: createAsyncQuery, getQuery, getQueryStatusBatch,
//! getResultPage and streamResultPage against a real Cloud and Link; every answer is
//! validated against Halo's document (`contract.rs`).

use std::time::{Duration, Instant};

use base64::Engine as _;
use halo_cloud::{HttpLimits, JobsConfig};
use halo_ids::{Environment, HaloGuid};
use halo_router::RouterConfig;
use serde_json::{Value, json};

use crate::fixture::{Harness, TestLink, message, practice, rows};
use crate::schema::{assert_response, assert_schema};

const ASYNC: &str = "/integrator/sites/{siteId}/queries/async";
const GET_QUERY: &str = "/integrator/sites/{siteId}/queries/{queryId}";
const BATCH: &str = "/integrator/sites/{siteId}/queries/status";
const PAGE: &str = "/integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}";

/// Small pages, so that a dozen patients make several.
pub(crate) fn small_pages() -> JobsConfig {
    JobsConfig {
        page_bytes: 200,
        tick: Duration::from_millis(50),
        ..JobsConfig::default()
    }
}

pub(crate) struct Setup {
    pub(crate) h: Harness,
    pub(crate) key: String,
    pub(crate) site: HaloGuid,
    pub(crate) _link: TestLink,
}

/// A Cloud with `jobs`, a Link serving one practice of `patients` patients, and an
/// integrator paired with it.
pub(crate) async fn setup(jobs: JobsConfig, patients: usize) -> Setup {
    let mut h =
        Harness::start_with_jobs(RouterConfig::standard(), HttpLimits::default(), jobs).await;
    let mut p = practice("SMILE01", "Smile Dental");
    p.patients = patients;
    let link = h.link(Environment::Stage, &[p]).await;
    let key = h.integrator(Environment::Stage).await;
    let (crn, site) = link.sites[0];
    h.enable_practice(crn).await;
    let (status, body) = h.pair(&key, crn).await;
    assert_eq!(status, 200, "{body}");
    Setup {
        h,
        key,
        site,
        _link: link,
    }
}

pub(crate) async fn submit(s: &Setup, sql: &str) -> (u16, Value) {
    s.h.post(
        &s.key,
        &format!("/integrator/sites/{}/queries/async", s.site),
        json!({"command": {"text": sql, "executionMode": "reader", "type": "text"}}),
    )
    .await
}

/// Polls a query until its status is terminal; returns the last answer.
pub(crate) async fn wait_terminal(h: &Harness, key: &str, site: HaloGuid, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = h
            .get(key, &format!("/integrator/sites/{site}/queries/{id}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let s = body["status"].as_str().unwrap().to_owned();
        if !["initialising", "queued", "executing", "uploading"].contains(&s.as_str()) {
            return body;
        }
        assert!(Instant::now() < deadline, "still {s} after 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rows of every page of a successful query, in order, each page validated.
pub(crate) async fn all_pages(h: &Harness, key: &str, site: HaloGuid, query: &Value) -> Vec<Value> {
    let id = query["id"].as_str().unwrap();
    let mut all = Vec::new();
    for page in query["result"]["pages"].as_array().unwrap() {
        let n = page["pageNumber"].as_u64().unwrap();
        let resp = h
            .http
            .get(h.url(&format!(
                "/integrator/sites/{site}/queries/{id}/results/{n}"
            )))
            .header(halo_cloud::KEY_HEADER, key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let header = |name: &str| {
            resp.headers()[name]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(
            header("rows-count"),
            page["rows"]["count"].as_u64().unwrap()
        );
        assert_eq!(
            header("rows-range-start"),
            page["rows"]["rangeStart"].as_u64().unwrap()
        );
        assert_eq!(
            header("rows-range-end"),
            page["rows"]["rangeEnd"].as_u64().unwrap()
        );
        assert_eq!(header("size"), page["size"].as_u64().unwrap());
        let body: Value = resp.json().await.unwrap();
        // The document's `oneOf` for this response is ambiguous (its "Non Query Result"
        // branch requires nothing, so every "Query Result" matches both): validate
        // against the branch a reader result is.
        crate::schema::assert_response_branch("get", PAGE, 200, 0, &body);
        let mut page_rows = rows(&json!({"result": body}));
        assert_eq!(
            page_rows.len() as u64,
            page["rows"]["count"].as_u64().unwrap()
        );
        all.append(&mut page_rows);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_query_pages_its_result_and_every_answer_follows_the_document() {
    let s = setup(small_pages(), 12).await;
    let sql = "SELECT patient_id, first_name, last_name FROM patients ORDER BY patient_id";
    let (status, created) = submit(&s, sql).await;
    assert_eq!(status, 201, "{created}");
    assert_response("post", ASYNC, 201, &created);
    assert_schema("AsyncQueryQueued", &created);
    assert_eq!(created["status"], "queued");
    assert_eq!(created["maxTimeInQueue"], 3_600_000);
    let id = created["id"].as_str().unwrap();

    let done = wait_terminal(&s.h, &s.key, s.site, id).await;
    assert_eq!(done["status"], "successful", "{done}");
    assert_response("get", GET_QUERY, 200, &done);
    assert_schema("AsyncQuerySuccessful", &done);
    let pages = done["result"]["pages"].as_array().unwrap();
    assert!(pages.len() > 1, "a dozen rows in 200-byte pages: {done}");
    assert_eq!(done["result"]["rows"], 12);

    // The pages together are exactly the immediate answer, in order.
    let paged = all_pages(&s.h, &s.key, s.site, &done).await;
    let (status, immediate) = s.h.query(&s.key, s.site, sql).await;
    assert_eq!(status, 200, "{immediate}");
    assert_eq!(paged, rows(&immediate));
    let mut start = 0;
    for page in pages {
        assert_eq!(page["rows"]["rangeStart"], start);
        start += page["rows"]["count"].as_u64().unwrap();
    }

    // The stream of a page is that page's JSON rows.
    let resp =
        s.h.http
            .get(s.h.url(&format!(
                "/integrator/sites/{}/queries/{id}/results/2/stream",
                s.site
            )))
            .header(halo_cloud::KEY_HEADER, &s.key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    let streamed: Vec<Value> = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let first = pages[0]["rows"]["count"].as_u64().unwrap() as usize;
    let second = pages[1]["rows"]["count"].as_u64().unwrap() as usize;
    assert_eq!(streamed, paged[first..first + second]);

    // Status batch: found and not found.
    let unknown = "00000000-0000-4000-8000-000000000001";
    let (status, batch) =
        s.h.post(
            &s.key,
            &format!("/integrator/sites/{}/queries/status", s.site),
            json!({"queryIds": [id, unknown]}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_response("post", BATCH, 200, &batch);
    assert_eq!(batch["results"][0]["status"], "found");
    assert_eq!(batch["results"][0]["query"]["status"], "successful");
    assert_eq!(batch["results"][1]["status"], "notFound");
    assert_eq!(batch["results"][1]["queryId"], unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_failures_answer_as_the_document_says() {
    let s = setup(small_pages(), 12).await;
    let base = format!("/integrator/sites/{}/queries", s.site);
    let good = json!({"command": {"text": "SELECT first_name FROM patients"}});

    // No key: 401.
    let (status, body) = s.h.post("", &format!("{base}/async"), good.clone()).await;
    assert_eq!(status, 401, "{body}");
    // maxTimeInQueue beyond the document's maximum: 400.
    let mut long = good.clone();
    long["maxTimeInQueue"] = json!(7_200_001);
    let (status, body) = s.h.post(&s.key, &format!("{base}/async"), long).await;
    assert_eq!(status, 400, "{body}");
    // A table outside the grant: 403, nothing accepted.
    let (status, body) = submit(&s, "SELECT * FROM secrets").await;
    assert_eq!(status, 403, "{body}");
    // An unknown site: 404.
    let other = "/integrator/sites/00000000-0000-4000-8000-0000000000aa/queries/async";
    let (status, body) = s.h.post(&s.key, other, good.clone()).await;
    assert_eq!(status, 404, "{body}");

    // A database error: accepted, then executionFailed with the database's code.
    let (status, created) = submit(&s, "SELECT no_such_column FROM patients").await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = wait_terminal(&s.h, &s.key, s.site, &id).await;
    assert_eq!(failed["status"], "executionFailed", "{failed}");
    assert_response("get", GET_QUERY, 200, &failed);
    assert_schema("AsyncQueryExecutionFailed", &failed);
    assert!(failed["errorCode"].as_i64().unwrap() > 0, "{failed}");
    assert!(
        failed["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no_such_column"),
        "{failed}"
    );
    // A failed query has no pages.
    let (status, body) = s.h.get(&s.key, &format!("{base}/{id}/results/1")).await;
    assert_eq!(status, 404, "{body}");

    // Query ids: malformed 400, unknown 404.
    let (status, body) = s.h.get(&s.key, &format!("{base}/not-a-uuid")).await;
    assert_eq!(status, 400, "{body}");
    let unknown = "00000000-0000-4000-8000-000000000001";
    let (status, body) = s.h.get(&s.key, &format!("{base}/{unknown}")).await;
    assert_eq!(status, 404, "{body}");
    assert!(!message(&body).is_empty());

    // Page numbers: 0 is 400, one past the last 404.
    let (_, created) = submit(&s, "SELECT first_name FROM patients").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let done = wait_terminal(&s.h, &s.key, s.site, &id).await;
    let pages = done["result"]["pages"].as_array().unwrap().len();
    let (status, _) = s.h.get(&s.key, &format!("{base}/{id}/results/0")).await;
    assert_eq!(status, 400);
    let (status, _) =
        s.h.get(&s.key, &format!("{base}/{id}/results/{}", pages + 1))
            .await;
    assert_eq!(status, 404);

    // Another integrator's key never sees the query: 404 as for one nobody has.
    let (status, body) =
        s.h.get("unknown-key-0123456789", &format!("{base}/{id}"))
            .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_their_retention_and_answer_410() {
    let s = setup(
        JobsConfig {
            retention: Duration::from_millis(400),
            ..small_pages()
        },
        12,
    )
    .await;
    let (_, created) = submit(&s, "SELECT first_name FROM patients").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let done = wait_terminal(&s.h, &s.key, s.site, &id).await;
    assert_eq!(done["status"], "successful", "{done}");
    let base = format!("/integrator/sites/{}/queries/{id}/results/1", s.site);
    let (status, body) = s.h.get(&s.key, &base).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, body) = s.h.get(&s.key, &base).await;
    assert_eq!(status, 410, "{body}");
    let (status, body) = s.h.get(&s.key, &format!("{base}/stream")).await;
    assert_eq!(status, 410, "{body}");
    // The query itself stays readable.
    let (status, body) =
        s.h.get(
            &s.key,
            &format!("/integrator/sites/{}/queries/{id}", s.site),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "successful");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_deadline_fails_and_is_stopped_at_the_link() {
    let s = setup(
        JobsConfig {
            execution_limit: Duration::from_millis(300),
            ..small_pages()
        },
        40,
    )
    .await;
    let slow = "SELECT count(*) FROM patients a, patients b, patients c, patients d, patients e, patients f";
    let (status, created) =
        s.h.post(
            &s.key,
            &format!("/integrator/sites/{}/queries/async", s.site),
            json!({"maxTimeInQueue": 0, "command": {"text": slow}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let failed = wait_terminal(&s.h, &s.key, s.site, &id).await;
    assert_eq!(failed["status"], "executionFailed", "{failed}");
    assert_eq!(failed["errorCode"], 504, "{failed}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The Link stopped it: its workers serve the next queries at once. (40^6 rows
    // would keep a worker busy for minutes.)
    for _ in 0..8 {
        let (status, body) =
            s.h.query(&s.key, s.site, "SELECT first_name FROM patients")
                .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[test]
fn the_page_data_is_base64_of_json_rows() {
    // Guards the helper the tests above rely on.
    let data = base64::engine::general_purpose::STANDARD.encode(br#"[{"a":1}]"#);
    assert_eq!(
        rows(&json!({"result": {"data": data}})),
        vec![json!({"a": 1})]
    );
}

//! The async path end to end: createAsyncQuery, getQuery, getQueryStatusBatch,
//! getResultPage and streamResultPage against a real Cloud and Link; every answer is
//! validated against Halo's document (`contract.rs`).

use std::time::{Duration, Instant};

use base64::Engine as _;
use halo_cloud::{HttpLimits, JobsConfig};
use halo_ids::{Environment, HaloGuid};
use halo_router::RouterConfig;
use serde_json::{Value, json};

use crate::contract::{assert_response, assert_schema};
use crate::fixture::{Harness, TestLink, message, practice, rows};

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
        crate::contract::assert_response_branch("get", PAGE, 200, 0, &body);
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
    // Both paths name the integrator by the same UUID.
    assert_eq!(done["integratorId"], immediate["integratorId"]);
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
            // Long enough to read a page once on a loaded machine (it was 400 ms
            // and failed under load), short enough to wait out.
            retention: Duration::from_secs(3),
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
    tokio::time::sleep(Duration::from_millis(3200)).await;
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

/// A paged query that keeps its Link producing pages for minutes (40^4 rows in
/// 200-byte pages).
const ENDLESS: &str = "SELECT a.first_name, b.last_name, c.first_name, d.last_name FROM patients a, patients b, patients c, patients d";

/// Waits until the Cloud has a query in flight at some Link (`/metrics`).
async fn wait_in_flight(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = h
            .http
            .get(h.url("/metrics"))
            .bearer_auth(crate::fixture::ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let in_flight: f64 = text
            .lines()
            .filter(|l| l.starts_with("halo_link_queue_depth{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if in_flight >= 1.0 {
            return;
        }
        assert!(Instant::now() < deadline, "no query in flight:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Link's count of jobs that ended with `outcome`.
fn link_jobs(link: &TestLink, outcome: &str) -> u64 {
    let text = link.metrics.render().unwrap();
    let series = format!("halo_link_jobs_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_registered_query_stops_its_running_paged_occurrence_at_the_link() {
    let s = setup(small_pages(), 40).await;
    let base_path = format!("/integrator/sites/{}/queries/registered", s.site);
    let (status, created) =
        s.h.post(
            &s.key,
            &base_path,
            json!({
                "name": "endless",
                "registeredQueryType": "query",
                "frequency": 3600,
                "duration": 86_400,
                "registerCommand": {"command": {"text": ENDLESS}},
            }),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    // Its first occurrence runs at the Link, page after page.
    wait_in_flight(&s.h).await;
    assert_eq!(link_jobs(&s._link, "cancelled"), 0);

    let resp =
        s.h.http
            .delete(s.h.url(&format!("{base_path}/{id}")))
            .header(halo_cloud::KEY_HEADER, &s.key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 204);

    // The Link's job ends cancelled (it would otherwise page for minutes), and the
    // occurrence ends failed, saying so.
    let deadline = Instant::now() + Duration::from_secs(30);
    while link_jobs(&s._link, "cancelled") == 0 {
        assert!(
            Instant::now() < deadline,
            "the Link never stopped the job:\n{}",
            s._link.metrics.render().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(link_jobs(&s._link, "ok"), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let q = loop {
        let (status, q) = s.h.get(&s.key, &format!("{base_path}/{id}")).await;
        assert_eq!(status, 200, "{q}");
        if q["metrics"]["executionFailedCount"] == 1 {
            break q;
        }
        assert!(Instant::now() < deadline, "the occurrence did not end: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_schema("RegisteredQuery", &q);
    assert_eq!(q["status"], "cancelled", "{q}");
    assert_eq!(q["lastErrorDetails"]["errorCode"], 409, "{q}");
    // Nothing of it is in flight any more: an immediate query gets the Link at once.
    let (status, body) =
        s.h.query(&s.key, s.site, "SELECT first_name FROM patients")
            .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_paged_query_does_not_block_another_database_of_the_same_link() {
    let mut h = Harness::start_with_jobs(
        RouterConfig::standard(),
        HttpLimits::default(),
        small_pages(),
    )
    .await;
    let mut busy = practice("SMILE01", "Smile Dental");
    busy.patients = 40;
    let quiet = practice("BRIGHT77", "Bright Teeth");
    let link = h.link(Environment::Stage, &[busy, quiet]).await;
    let key = h.integrator(Environment::Stage).await;
    for (crn, _) in &link.sites {
        h.enable_practice(*crn).await;
        let (status, body) = h.pair(&key, *crn).await;
        assert_eq!(status, 200, "{body}");
    }
    let (busy_site, quiet_site) = (link.sites[0].1, link.sites[1].1);
    let submit_to = |site: HaloGuid, sql: &'static str| {
        let h = &h;
        let key = &key;
        async move {
            let (status, created) = h
                .post(
                    key,
                    &format!("/integrator/sites/{site}/queries/async"),
                    json!({"command": {"text": sql}}),
                )
                .await;
            assert_eq!(status, 201, "{created}");
            created["id"].as_str().unwrap().to_owned()
        }
    };
    let long = submit_to(busy_site, ENDLESS).await;
    wait_in_flight(&h).await;
    // Pages of the long one are flowing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, q) = h
            .get(
                &key,
                &format!("/integrator/sites/{busy_site}/queries/{long}"),
            )
            .await;
        if q["status"] == "uploading" {
            break;
        }
        assert_eq!(q["status"], "executing", "{q}");
        assert!(Instant::now() < deadline, "never uploading: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let short = submit_to(quiet_site, "SELECT first_name FROM patients").await;
    let done = wait_terminal(&h, &key, quiet_site, &short).await;
    assert_eq!(done["status"], "successful", "{done}");
    assert_eq!(done["result"]["rows"], 12);
    // ... while the long one still runs.
    let (status, q) = h
        .get(
            &key,
            &format!("/integrator/sites/{busy_site}/queries/{long}"),
        )
        .await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["status"], "uploading", "{q}");
    link.handle.kill();
}

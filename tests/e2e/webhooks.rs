//! Webhooks and registered queries: a receiver that checks every delivery's
//! signature and rejects stale timestamps (5-minute window), retries with backoff,
//! dead letters visible to support, and registered queries firing once per
//! occurrence.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::async_queries::{Setup, setup, small_pages, submit, wait_terminal};
use crate::contract::assert_schema;
use crate::fixture::INTEGRATOR;

pub(crate) const SECRET: &str = "whsec_test_0123456789abcdef";
/// The replay window of the AsyncAPI document.
const REPLAY_WINDOW: Duration = Duration::from_secs(5 * 60);

/// What a receiver checks, as the README shows it: the timestamp is within five
/// minutes, and the signature is HMAC-SHA256 of `body + "." + timestamp`.
pub(crate) fn verify(
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp = header("x-halo-timestamp").ok_or("no timestamp")?;
    let signature = header("x-halo-signature-256").ok_or("no signature")?;
    let sent = humantime::parse_rfc3339(timestamp).map_err(|_| "bad timestamp")?;
    let age = now.duration_since(sent).unwrap_or_else(|e| e.duration());
    if age > REPLAY_WINDOW {
        return Err("stale timestamp");
    }
    let expected = hex::decode(signature).map_err(|_| "bad signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
    mac.update(body);
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.verify_slice(&expected).map_err(|_| "bad signature")
}

/// One delivery the receiver saw.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) verified: bool,
}

#[derive(Default)]
pub(crate) struct Receiver {
    pub(crate) seen: Mutex<Vec<Seen>>,
    /// Answer 500 to this many requests first.
    pub(crate) fail_first: Mutex<usize>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verified = verify(SECRET.as_bytes(), &headers, &body, SystemTime::now()).is_ok();
    r.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        headers,
        body,
        verified,
    });
    if !verified {
        return StatusCode::UNAUTHORIZED;
    }
    let mut fail = r.fail_first.lock().unwrap();
    if *fail > 0 {
        *fail -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

/// Starts a receiver on loopback; returns its base URL.
pub(crate) async fn receiver(fail_first: usize) -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver {
        seen: Mutex::default(),
        fail_first: Mutex::new(fail_first),
    });
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(Arc::clone(&r));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (r, format!("http://{addr}"))
}

pub(crate) async fn configure(s: &Setup, base: &str) {
    s.h.admin(
        reqwest::Method::PUT,
        &format!("/admin/integrators/{INTEGRATOR}/webhooks"),
        json!({"url": format!("{base}/hooks/{{source}}/{{siteId}}/{{queryId}}"), "secret": SECRET}),
    )
    .await;
}

pub(crate) async fn wait_for(r: &Receiver, n: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = r.seen.lock().unwrap().clone();
        if seen.len() >= n {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{} deliveries of {n}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Checks a payload against the AsyncAPI document's `QueryCompletedPayload`.
pub(crate) fn assert_payload(seen: &Seen, source: &str) -> Value {
    let payload: Value = serde_json::from_slice(&seen.body).unwrap();
    for field in ["id", "occurredAt", "siteId", "queryId", "webhookSource"] {
        assert!(payload[field].is_string(), "{field} missing: {payload}");
    }
    assert_eq!(payload["webhookSource"], source);
    assert!(humantime::parse_rfc3339(payload["occurredAt"].as_str().unwrap()).is_ok());
    assert_eq!(
        seen.headers["x-halo-id"].to_str().unwrap(),
        payload["id"].as_str().unwrap()
    );
    let signature = seen.headers["x-halo-signature-256"].to_str().unwrap();
    assert_eq!(signature.len(), 64);
    assert!(
        signature
            .chars()
            .all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    );
    payload
}

fn resign(headers: &HeaderMap, body: &[u8], timestamp: &str) -> HeaderMap {
    let mut h = headers.clone();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    h.insert("x-halo-timestamp", timestamp.parse().unwrap());
    h.insert(
        "x-halo-signature-256",
        hex::encode(mac.finalize().into_bytes()).parse().unwrap(),
    );
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_query_is_notified_signed_and_a_receiver_rejects_stale_or_forged_ones() {
    let s = setup(small_pages(), 12).await;
    let (r, base) = receiver(0).await;
    configure(&s, &base).await;
    let (status, created) = submit(&s, "SELECT first_name FROM patients").await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    wait_terminal(&s.h, &s.key, s.site, id).await;
    let seen = wait_for(&r, 1).await;
    assert!(seen[0].verified, "the Cloud's delivery verifies");
    let payload = assert_payload(&seen[0], "async");
    assert_eq!(payload["queryId"], id);
    assert_eq!(payload["siteId"], s.site.to_string());
    assert_eq!(seen[0].path, format!("/hooks/async/{}/{id}", s.site));

    // The receiver's checks hold: the same delivery replayed six minutes later, a
    // forged body, a wrong secret and a missing signature are all refused.
    let now = SystemTime::now();
    let (headers, body) = (&seen[0].headers, &seen[0].body[..]);
    assert_eq!(verify(SECRET.as_bytes(), headers, body, now), Ok(()));
    let late = now + Duration::from_secs(6 * 60);
    assert_eq!(
        verify(SECRET.as_bytes(), headers, body, late),
        Err("stale timestamp")
    );
    // An old timestamp, correctly signed (a captured delivery re-sent), is stale too.
    let old = humantime::format_rfc3339_millis(now - Duration::from_secs(301)).to_string();
    let replayed = resign(headers, body, &old);
    assert_eq!(
        verify(SECRET.as_bytes(), &replayed, body, now),
        Err("stale timestamp")
    );
    let fresh = humantime::format_rfc3339_millis(now - Duration::from_secs(299)).to_string();
    assert_eq!(
        verify(SECRET.as_bytes(), &resign(headers, body, &fresh), body, now),
        Ok(())
    );
    let mut forged = body.to_vec();
    forged[2] ^= 1;
    assert_eq!(
        verify(SECRET.as_bytes(), headers, &forged, now),
        Err("bad signature")
    );
    assert_eq!(
        verify(b"another-secret-0000", headers, body, now),
        Err("bad signature")
    );
    let mut unsigned = headers.clone();
    unsigned.remove("x-halo-signature-256");
    assert_eq!(
        verify(SECRET.as_bytes(), &unsigned, body, now),
        Err("no signature")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_then_the_delivery_is_dead_lettered() {
    let jobs = halo_cloud::JobsConfig {
        webhook_retry_base: Duration::from_millis(40),
        webhook_attempts: 3,
        ..small_pages()
    };
    let s = setup(jobs, 12).await;
    // Fails twice, then accepts: delivered once, on the third attempt.
    let (r, base) = receiver(2).await;
    configure(&s, &base).await;
    let (_, created) = submit(&s, "SELECT first_name FROM patients").await;
    let seen = wait_for(&r, 3).await;
    let ids: Vec<&str> = seen
        .iter()
        .map(|d| d.headers["x-halo-id"].to_str().unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one notification, retried: {ids:?}"
    );
    assert!(seen.iter().all(|d| d.verified));
    assert_eq!(assert_payload(&seen[2], "async")["queryId"], created["id"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.seen.lock().unwrap().len(),
        3,
        "no attempt after the success"
    );

    // Always failing: three attempts, then a dead letter support can see.
    *r.fail_first.lock().unwrap() = usize::MAX;
    let (_, created) = submit(&s, "SELECT last_name FROM patients").await;
    wait_for(&r, 6).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead =
            s.h.admin(
                reqwest::Method::GET,
                "/admin/webhooks/dead-letters",
                Value::Null,
            )
            .await;
        if !dead["deadLetters"].as_array().unwrap().is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "no dead letter: {dead}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let letter = &dead["deadLetters"][0];
    assert_eq!(letter["attempts"], 3, "{dead}");
    assert!(
        letter["lastError"].as_str().unwrap().contains("500"),
        "{dead}"
    );
    let body: Value = serde_json::from_str(letter["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["queryId"], created["id"]);
    assert_eq!(dead["pending"], 0);
    // Support's view needs the admin token.
    let resp =
        s.h.http
            .get(s.h.url("/admin/webhooks/dead-letters"))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_query_fires_once_per_occurrence_and_can_be_cancelled() {
    let s = setup(small_pages(), 12).await;
    let (r, base) = receiver(0).await;
    configure(&s, &base).await;
    let base_path = format!("/integrator/sites/{}/queries/registered", s.site);
    let body = |name: &str, frequency: u64, duration: u64| {
        json!({
            "name": name,
            "registeredQueryType": "query",
            "frequency": frequency,
            "duration": duration,
            "registerCommand": {"command": {"text": "SELECT first_name FROM patients ORDER BY patient_id"}},
        })
    };
    // Occurrences at 0, 1 and 2 s; the duration ends at 3 s.
    let (status, created) =
        s.h.post(&s.key, &base_path, body("every second", 1, 3))
            .await;
    assert_eq!(status, 202, "{created}");
    assert_schema("RegisteredQueryId", &created);
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, long) =
        s.h.post(&s.key, &base_path, body("hourly", 3600, 86_400))
            .await;
    assert_eq!(status, 202, "{long}");
    let long_id = long["id"].as_str().unwrap().to_owned();
    // Invalid schedules: 400.
    let (status, _) =
        s.h.post(&s.key, &base_path, body("too long", 1, 86_401))
            .await;
    assert_eq!(status, 400);

    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let (status, q) = s.h.get(&s.key, &format!("{base_path}/{id}")).await;
        assert_eq!(status, 200, "{q}");
        assert_schema("RegisteredQuery", &q);
        if q["status"] == "completed" {
            break q;
        }
        assert!(Instant::now() < deadline, "not completed: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["metrics"]["executionSucceededCount"], 3, "{done}");
    assert_eq!(done["metrics"]["executionFailedCount"], 0, "{done}");
    assert!(done["lastHash"].as_str().unwrap().len() == 64);

    let (status, result) = s.h.get(&s.key, &format!("{base_path}/{id}/results")).await;
    assert_eq!(status, 200, "{result}");
    assert_schema("RegisteredQueryResult", &result);
    assert_eq!(result["rows"], 12);
    let (status, immediate) =
        s.h.query(
            &s.key,
            s.site,
            "SELECT first_name FROM patients ORDER BY patient_id",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        crate::fixture::rows(&json!({"result": result})),
        crate::fixture::rows(&immediate)
    );

    // Cancel the hourly one: 204, then cancelled.
    let resp =
        s.h.http
            .delete(s.h.url(&format!("{base_path}/{long_id}")))
            .header(halo_cloud::KEY_HEADER, &s.key)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 204);
    let (_, list) = s.h.get(&s.key, &base_path).await;
    let list = list["registeredQueries"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let cancelled = list.iter().find(|q| q["id"] == long_id.as_str()).unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    // Unknown: 404.
    let unknown = "00000000-0000-4000-8000-000000000002";
    let (status, _) = s.h.get(&s.key, &format!("{base_path}/{unknown}")).await;
    assert_eq!(status, 404);

    // One signed webhook per occurrence (3 for the first, 1 for the hourly one's
    // first occurrence), naming the registered query.
    let seen = wait_for(&r, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen_now = r.seen.lock().unwrap().clone();
    assert_eq!(seen_now.len(), 4, "{seen_now:?}");
    let for_first = seen
        .iter()
        .filter(|d| assert_payload(d, "registered")["queryId"] == id.as_str())
        .count();
    assert_eq!(for_first, 3);
    assert!(seen.iter().all(|d| d.verified));
}

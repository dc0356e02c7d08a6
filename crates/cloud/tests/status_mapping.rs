//! The status of each domain code the handlers can reach, through the HTTP API
//! (`routes(app)` and `tower::ServiceExt::oneshot`, no sockets): the core decides,
//! `halo_cloud::status` translates. State is set up through `CloudState`'s own API;
//! a Link session is the router's, answered in-process. Every status seen is also
//! checked against the endpoint's documented error class (`halo_cloud::openapi`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use halo_cloud::openapi::{
    ActionErrors, AdminWriteErrors, QueryErrors, RevokeErrors, SiteErrors, SiteLookupErrors,
};
use halo_cloud::{AppState, CloudConfig, CredentialEvent, HttpLimits, app, now};
use halo_credentials::CredentialId;
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType};
use halo_policy::{KeyHash, PolicyEvent, RateLimit};
use halo_router::{QueryFailure, QueryOutput, RouterConfig};
use halo_tenancy::{AvailabilityConfig, Event, SiteIdentity};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ADMIN: &str = "status-mapping-admin-token";
/// acme: enabled for AB123 (paired in both environments, rate limited in
/// Production) and AB200 (not paired), and DM100 (a demo copy's real CRN).
const ACME_STAGE: &str = "acme-stage";
const ACME_PROD: &str = "acme-prod";
/// An integrator with a key but enabled for no PMS.
const LONELY: &str = "lonely-stage";
/// An integrator whose Production key has an IP allowlist.
const WALLED: &str = "walled-prod";
/// An integrator with a monthly quota of one query.
const METERED: &str = "metered-prod";

/// The largest result the test router returns.
const MAX_RESULT: usize = 16;

fn link(n: u128) -> LinkGuid {
    LinkGuid::from_u128(n).unwrap()
}

fn halo(n: u128) -> HaloGuid {
    HaloGuid::from_u128(n).unwrap()
}

fn crn(s: &str) -> Crn {
    s.parse().unwrap()
}

fn pms(s: &str) -> PmsId {
    PmsId::new(PmsType::D4w, crn(s))
}

/// Site A: AB123 in Stage (branch AB124), behind Link 1, authoritative.
const SITE_A: u128 = 0xA;
/// Site B: AB123 in Production, behind Link 2 (never attached: unreachable).
const SITE_B: u128 = 0xB;
/// Site C: a backup of AB123 in Stage behind Link 3 (not authoritative).
const SITE_C: u128 = 0xC;
/// Site D: AB200 in Stage behind Link 1 (acme is not paired with it).
const SITE_D: u128 = 0xD;
/// Site E: ZZ999 in Stage behind Link 1 (nobody is enabled for it).
const SITE_E: u128 = 0xE;
/// Site F: a demo copy of DM100 in Stage behind Link 1.
const SITE_F: u128 = 0xF;

fn identity(c: &str, branches: &[&str], demo: bool) -> SiteIdentity {
    SiteIdentity {
        pms_type: PmsType::D4w,
        parent_crn: crn(c),
        branch_crns: branches.iter().map(|b| crn(b)).collect(),
        practice_name: format!("Practice {c}"),
        pms_version: "9.6".into(),
        catalogues: vec![],
        is_demo: demo,
    }
}

fn attach(l: u128, site: u128, identity: SiteIdentity) -> [Event; 2] {
    [
        Event::SiteAttached {
            link: link(l),
            halo_guid: halo(site),
            identity,
        },
        Event::SiteReady {
            link: link(l),
            halo_guid: halo(site),
        },
    ]
}

fn policy_events() -> Vec<PolicyEvent> {
    let id = |s: &str| s.parse::<halo_policy::IntegratorId>().unwrap();
    let mut events = Vec::new();
    for name in ["acme", "walled", "metered"] {
        events.extend([
            PolicyEvent::IntegratorEnabled {
                integrator: id(name),
                pms_type: PmsType::D4w,
            },
            PolicyEvent::ComponentsAuthorised {
                integrator: id(name),
                pms_type: PmsType::D4w,
                catalogues: vec![],
                tables: vec!["patients".into()],
                procedures: vec![],
                allow_write: false,
            },
            PolicyEvent::PracticeEnabled {
                integrator: id(name),
                pms_id: pms("AB123"),
            },
        ]);
        for environment in [Environment::Stage, Environment::Production] {
            events.push(PolicyEvent::PracticePaired {
                integrator: id(name),
                pms_id: pms("AB123"),
                environment,
            });
        }
    }
    for practice in ["AB200", "DM100"] {
        events.push(PolicyEvent::PracticeEnabled {
            integrator: id("acme"),
            pms_id: pms(practice),
        });
    }
    for (name, key, environment) in [
        ("acme", ACME_STAGE, Environment::Stage),
        ("acme", ACME_PROD, Environment::Production),
        ("lonely", LONELY, Environment::Stage),
        ("walled", WALLED, Environment::Production),
        ("metered", METERED, Environment::Production),
    ] {
        events.push(PolicyEvent::KeyIssued {
            integrator: id(name),
            environment,
            key_hash: KeyHash::of(key),
        });
    }
    events.extend([
        PolicyEvent::RateLimitSet {
            integrator: id("acme"),
            pms_id: None,
            limit: Some(RateLimit {
                per_second: 1,
                burst: 1,
            }),
        },
        PolicyEvent::IpAllowlistSet {
            integrator: id("walled"),
            cidrs: vec!["203.0.113.0/24".into()],
        },
        PolicyEvent::QuotaSet {
            integrator: id("metered"),
            pms_id: None,
            per_month: Some(1),
        },
    ]);
    events
}

async fn app_state() -> AppState {
    let app = app::build(&CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        admin_token: ADMIN.to_owned(),
        router: RouterConfig {
            link_capacity: 2,
            max_result_bytes: MAX_RESULT,
            execution_limit: Duration::from_millis(300),
            ..RouterConfig::standard()
        },
        availability: AvailabilityConfig::default(),
        snapshot_every: 0,
        accept_damaged_log: false,
        max_databases_per_link: app::MAX_DATABASES_PER_LINK,
        http: HttpLimits::default(),
    })
    .unwrap();
    let t = now();
    let mut events = Vec::new();
    for (l, environment) in [
        (1, Environment::Stage),
        (2, Environment::Production),
        (3, Environment::Stage),
    ] {
        events.push(Event::LinkRegistered {
            link: link(l),
            environment,
            version: "1.0".into(),
        });
    }
    events.extend(attach(1, SITE_A, identity("AB123", &["AB124"], false)));
    events.extend(attach(2, SITE_B, identity("AB123", &[], false)));
    events.extend(attach(3, SITE_C, identity("AB123", &[], false)));
    events.extend(attach(1, SITE_D, identity("AB200", &[], false)));
    events.extend(attach(1, SITE_E, identity("ZZ999", &[], false)));
    events.extend(attach(1, SITE_F, identity("DM100", &[], true)));
    for (event, result) in events
        .iter()
        .zip(app.state.apply_tenancy(events.clone(), t).await)
    {
        result.unwrap_or_else(|e| panic!("{event:?}: {e}"));
    }
    for event in policy_events() {
        app.state.apply_policy(event, t).await.unwrap();
    }
    app
}

/// Sends `request`; returns the status, the `Retry-After` header and the JSON body.
async fn send(app: &AppState, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = halo_cloud::routes(Arc::clone(app))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// Asserts an error answer: its status, in the envelope, documented for its class,
/// with this message; returns the body.
fn expect(
    answer: &(StatusCode, Option<String>, Value),
    status: u16,
    documented: &[StatusCode],
    message: &str,
) -> Value {
    let (got, _, body) = answer;
    assert_eq!(got.as_u16(), status, "{body}");
    assert_eq!(body["error"]["status"], json!(status), "{body}");
    assert!(
        documented.contains(got),
        "{status} is not in the endpoint's documented statuses {documented:?}"
    );
    assert_eq!(body["error"]["message"], json!(message), "{body}");
    body.clone()
}

fn get(uri: &str, key: Option<&str>) -> Request<Body> {
    let mut request = Request::get(uri);
    if let Some(key) = key {
        request = request.header(halo_cloud::KEY_HEADER, key);
    }
    request.body(Body::empty()).unwrap()
}

fn sites(practice: &str, key: &str) -> Request<Body> {
    get(
        &format!(
            "/integrator/sites?practiceManagementSiteId={practice}&practiceManagementName=D4w"
        ),
        Some(key),
    )
}

fn status_of(site: HaloGuid, key: &str) -> Request<Body> {
    get(&format!("/integrator/sites/{site}"), Some(key))
}

fn query(site: HaloGuid, key: Option<&str>, body: Value) -> Request<Body> {
    let mut request = Request::post(format!("/integrator/sites/{site}/queries/immediate"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(halo_cloud::KEY_HEADER, key);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

fn sql(text: &str) -> Value {
    json!({ "command": { "text": text, "executionMode": "reader" } })
}

fn select() -> Value {
    sql("SELECT * FROM patients")
}

fn admin(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn policy_denials_at_the_query_endpoint() {
    let app = app_state().await;
    let q = QueryErrors::STATUSES;
    let a = halo(SITE_A);
    let cases = [
        (query(a, None, select()), 401, "missing subscription key"),
        (
            query(a, Some("guess"), select()),
            401,
            "invalid subscription key",
        ),
        (
            query(a, Some(ACME_PROD), select()),
            401,
            "subscription key is not valid for this site's environment",
        ),
        (
            query(a, Some(LONELY), select()),
            403,
            "integrator not enabled",
        ),
        (
            query(halo(SITE_D), Some(ACME_STAGE), select()),
            403,
            "integrator has not paired with this site in this environment",
        ),
        (
            query(a, Some(ACME_STAGE), sql("SELECT * FROM secrets")),
            403,
            "table not authorised: secrets",
        ),
        (
            query(a, Some(ACME_STAGE), sql("DELETE FROM patients")),
            403,
            "writes are not authorised for this integrator",
        ),
        (
            query(halo(SITE_C), Some(ACME_STAGE), select()),
            403,
            "site is not authoritative for its practice",
        ),
        (
            query(halo(SITE_B), Some(WALLED), select()),
            403,
            "caller ip address not allowed for this key",
        ),
        (
            query(halo(0x99), Some(ACME_STAGE), select()),
            404,
            "site not found",
        ),
        // Another practice's site answers exactly like no site.
        (
            query(halo(SITE_E), Some(ACME_STAGE), select()),
            404,
            "site not found",
        ),
    ];
    for (request, status, message) in cases {
        expect(&send(&app, request).await, status, q, message);
    }
    // A command the analyser refuses never runs: a malformed one (unparsed, or read
    // differently by the analyser and SQLite) is a bad request, as Halo answers
    // malformed SQL. (A construct it parses but does not analyse stays a denial:
    // `halo-policy`'s `PolicyError::is_malformed_command`.)
    for (text, want) in [
        ("SELECT 1 /* /* */", StatusCode::BAD_REQUEST),
        ("SELEC 1", StatusCode::BAD_REQUEST),
    ] {
        let answer = send(&app, query(a, Some(ACME_STAGE), sql(text))).await;
        let (status, _, body) = &answer;
        assert_eq!(*status, want, "{text}: {body}");
        assert!(q.contains(status));
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("command refused: "),
            "{body}"
        );
    }
}

#[tokio::test]
async fn rate_limit_is_429_with_retry_after_and_quota_is_403() {
    let app = app_state().await;
    let q = QueryErrors::STATUSES;
    let b = halo(SITE_B);
    // Link 2 is not attached: unreachable, before any token is taken.
    let answer = send(&app, query(b, Some(ACME_PROD), select())).await;
    expect(&answer, 503, q, "site unreachable");
    let mut session = app.state.router().attach_link(link(2));
    for key in [ACME_PROD, METERED] {
        // The first query takes the only token (the month's only query) and runs.
        let request = tokio::spawn({
            let app = Arc::clone(&app);
            async move { send(&app, query(b, Some(key), select())).await }
        });
        let job = session.next_job().await.unwrap();
        let output = QueryOutput {
            data: "W10=".into(),
            size: 2,
            rows: 0,
            sql_execution: Duration::ZERO,
        };
        session.complete(job.query_id, Ok(output));
        let answer = request.await.unwrap();
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    }
    let answer = send(&app, query(b, Some(ACME_PROD), select())).await;
    expect(&answer, 429, q, "rate limit exceeded");
    assert_eq!(answer.1.as_deref(), Some("1"));
    let answer = send(&app, query(b, Some(METERED), select())).await;
    expect(&answer, 403, q, "monthly quota exhausted");
    assert_eq!(answer.1, None);
}

#[tokio::test]
async fn routing_errors_and_link_failures_have_their_statuses() {
    let app = app_state().await;
    let q = QueryErrors::STATUSES;
    let a = halo(SITE_A);
    let mut too_slow = select();
    too_slow["maxTimeInQueue"] = json!(60_001);
    let answer = send(&app, query(a, Some(ACME_STAGE), too_slow)).await;
    expect(
        &answer,
        400,
        q,
        "invalid request: maxTimeInQueue must be between 0 and 60000 ms",
    );

    // Link 1 attaches in-process; each failure it reports has its status.
    let mut session = app.state.router().attach_link(link(1));
    // A command the database failed: Halo's ExecutionFailedImmediateQuery, 400.
    let request = tokio::spawn({
        let app = Arc::clone(&app);
        async move { send(&app, query(a, Some(ACME_STAGE), select())).await }
    });
    let job = session.next_job().await.unwrap();
    session.complete(
        job.query_id,
        Err(QueryFailure::Database {
            error_type: "sqlite".into(),
            error_code: "1".into(),
            message: "no such column: x".into(),
        }),
    );
    let (status, _, body) = request.await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(q.contains(&status));
    assert_eq!(body["status"], "executionFailed", "{body}");
    assert_eq!(body["mode"], "immediate", "{body}");
    assert_eq!(body["siteId"], a.to_string(), "{body}");
    assert_eq!(
        body["errorDetails"],
        json!({"errorType": "sqlite", "errorCode": 1, "errorMessage": "no such column: x"})
    );
    assert!(body.get("error").is_none(), "{body}");

    let failures = [
        (
            QueryFailure::Refused("not today".into()),
            400,
            "the link refused the query: not today",
        ),
        (
            QueryFailure::StaleEpoch,
            503,
            "the site's authority changed while the query was queued",
        ),
        (
            QueryFailure::Busy,
            503,
            "site is busy: the query could not start on the site within its maxTimeInQueue, \
             or the site's queue is full; retry later",
        ),
        (
            QueryFailure::Expired,
            504,
            "the query waited longer than its maximum time in queue",
        ),
        (
            QueryFailure::TooLarge,
            413,
            "the result is larger than the link's limit",
        ),
        (
            QueryFailure::Denied("table x".into()),
            403,
            "the link refused the command: table x",
        ),
    ];
    for (failure, status, message) in failures {
        let request = tokio::spawn({
            let app = Arc::clone(&app);
            async move { send(&app, query(a, Some(ACME_STAGE), select())).await }
        });
        let job = session.next_job().await.unwrap();
        session.complete(job.query_id, Err(failure));
        let answer = request.await.unwrap();
        let body = expect(&answer, status, q, message);
        assert!(body.get("errorDetails").is_none(), "{body}");
    }

    // A result over the router's limit.
    let request = tokio::spawn({
        let app = Arc::clone(&app);
        async move { send(&app, query(a, Some(ACME_STAGE), select())).await }
    });
    let job = session.next_job().await.unwrap();
    let output = QueryOutput {
        data: "x".repeat(MAX_RESULT + 1),
        size: MAX_RESULT + 1,
        rows: 1,
        sql_execution: Duration::ZERO,
    };
    session.complete(job.query_id, Ok(output));
    let answer = request.await.unwrap();
    expect(
        &answer,
        413,
        q,
        &format!(
            "result too large: {} bytes, limit {MAX_RESULT}",
            MAX_RESULT + 1
        ),
    );

    // Two queries fill Link 1 (capacity 2): the third is busy; the two time out.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut quick = select();
        quick["maxTimeInQueue"] = json!(100);
        waiting.push(tokio::spawn({
            let app = Arc::clone(&app);
            async move { send(&app, query(a, Some(ACME_STAGE), quick)).await }
        }));
        let _taken = session.next_job().await.unwrap();
    }
    let answer = send(&app, query(a, Some(ACME_STAGE), select())).await;
    expect(&answer, 503, q, "site busy: too many queries in flight");
    for request in waiting {
        expect(&request.await.unwrap(), 504, q, "query timed out");
    }
}

#[tokio::test]
async fn site_status_decides_by_the_core() {
    let app = app_state().await;
    let s = SiteErrors::STATUSES;
    let answer = send(&app, status_of(halo(SITE_A), ACME_STAGE)).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    // A site that is not authoritative, or not paired, still has a status.
    for site in [SITE_C, SITE_D] {
        let answer = send(&app, status_of(halo(site), ACME_STAGE)).await;
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    }
    let unknown = expect(
        &send(&app, status_of(halo(0x99), ACME_STAGE)).await,
        404,
        s,
        "site not found",
    );
    // Another practice's site, in this or the other environment: the same 404.
    let other = expect(
        &send(&app, status_of(halo(SITE_E), ACME_STAGE)).await,
        404,
        s,
        "site not found",
    );
    assert_eq!(other, unknown);
    let other = expect(
        &send(&app, status_of(halo(SITE_E), ACME_PROD)).await,
        404,
        s,
        "site not found",
    );
    assert_eq!(other, unknown);
    // Its own practice with a key of the other environment: 401, told why.
    expect(
        &send(&app, status_of(halo(SITE_A), ACME_PROD)).await,
        401,
        s,
        "subscription key is for another environment than the site",
    );
    expect(
        &send(&app, status_of(halo(SITE_A), "guess")).await,
        401,
        s,
        "invalid subscription key",
    );
    expect(
        &send(&app, status_of(halo(SITE_A), WALLED)).await,
        403,
        s,
        "caller ip address not allowed for this key",
    );
    expect(
        &send(&app, get("/integrator/sites/not-a-guid", Some(ACME_STAGE))).await,
        400,
        s,
        &"not-a-guid".parse::<HaloGuid>().unwrap_err().to_string(),
    );
}

#[tokio::test]
async fn practice_lookups_map_denials_and_crn_refusals() {
    let app = app_state().await;
    let s = SiteLookupErrors::STATUSES;
    let answer = send(&app, sites("AB123", ACME_STAGE)).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    expect(
        &send(&app, sites("ZZ999", ACME_STAGE)).await,
        403,
        s,
        "practice not enabled for this integrator",
    );
    expect(
        &send(&app, sites("AB123", LONELY)).await,
        403,
        s,
        "integrator not enabled",
    );
    let branch = send(&app, sites("AB124", ACME_STAGE)).await;
    let body = &branch.2;
    assert_eq!(branch.0, StatusCode::BAD_REQUEST, "{body}");
    assert!(s.contains(&branch.0));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("this is a branch (local) CRN"),
        "{body}"
    );
    let demo = send(&app, sites("DM100", ACME_STAGE)).await;
    assert_eq!(demo.0, StatusCode::BAD_REQUEST, "{}", demo.2);
    assert!(
        demo.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("demo or de-identified copy"),
        "{}",
        demo.2
    );
    // AB200 is enabled and has a live site, but only in Stage: no site in this
    // environment is an empty list, as Halo answers.
    let answer = send(&app, sites("AB200", ACME_PROD)).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    assert_eq!(answer.2, json!({"sites": []}));
}

#[tokio::test]
async fn admin_refusals_map_tenancy_classes_credential_and_policy_errors() {
    let app = app_state().await;
    // Tenancy classes through a promotion: not found, invalid, conflict.
    let promote = |site: u128, actor: &str| {
        admin(
            &format!("/admin/sites/{}/promote", halo(site)),
            json!({ "actor": actor, "reason": "test" }),
        )
    };
    let p = ActionErrors::STATUSES;
    expect(
        &send(&app, promote(0x99, "support:alice")).await,
        404,
        p,
        &format!("site {} is not known", halo(0x99)),
    );
    let answer = send(&app, promote(SITE_C, " ")).await;
    assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{}", answer.2);
    let answer = send(&app, promote(SITE_A, "support:alice")).await;
    assert_eq!(answer.0, StatusCode::CONFLICT, "{}", answer.2);
    assert!(p.contains(&answer.0));

    // Credential errors: a malformed id, an unknown id, a credential without scope.
    let r = RevokeErrors::STATUSES;
    let action = json!({ "actor": "support:alice", "reason": "test" });
    expect(
        &send(
            &app,
            admin("/admin/link-credentials/nope/revoke", action.clone()),
        )
        .await,
        400,
        r,
        "not a link credential id (expected lc_ and 16 hex digits)",
    );
    expect(
        &send(
            &app,
            admin(
                "/admin/link-credentials/lc_0000000000000000/revoke",
                action.clone(),
            ),
        )
        .await,
        404,
        r,
        "no link credential with this id",
    );
    let old = KeyHash::of("a credential from before scopes");
    app.state
        .apply_credential(
            CredentialEvent::Issued {
                token_hash: old,
                label: "old".into(),
                scope: None,
                actor: None,
            },
            now(),
        )
        .await
        .unwrap();
    let id = CredentialId::of(&old);
    let extend = json!({ "practices": ["D4w:AB123"], "actor": "support:alice", "reason": "test" });
    expect(
        &send(
            &app,
            admin(&format!("/admin/link-credentials/{id}/scope"), extend),
        )
        .await,
        409,
        p,
        "this link credential has no scope; support must rotate it to one with a scope",
    );
    let blank = json!({ "practices": [], "actor": "", "reason": "test" });
    expect(
        &send(
            &app,
            admin(&format!("/admin/link-credentials/{id}/scope"), blank),
        )
        .await,
        400,
        p,
        "actor must not be empty",
    );

    // A refused policy event.
    expect(
        &send(
            &app,
            admin(
                "/admin/policy-events",
                json!({ "event": "quotaSet", "integrator": "acme", "perMonth": 0 }),
            ),
        )
        .await,
        400,
        AdminWriteErrors::STATUSES,
        "invalid limit: quota must be at least 1",
    );
}

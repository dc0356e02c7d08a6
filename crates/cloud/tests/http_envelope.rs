//! Every error the HTTP API answers is in the JSON envelope
//! `{"error":{"status","statusText","message"}}`: unknown routes, wrong methods, bad
//! query strings, paths and bodies, bodies over the limit. In-memory app, requests
//! through `tower::ServiceExt::oneshot` on `routes(app)`, no sockets.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use halo_cloud::{CloudConfig, HttpLimits, app};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ADMIN: &str = "envelope-test-admin-token";

fn router() -> axum::Router {
    let app = app::build(&CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        admin_token: ADMIN.to_owned(),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 0,
        accept_damaged_log: false,
        http: HttpLimits::default(),
        max_databases_per_link: app::MAX_DATABASES_PER_LINK,
    })
    .unwrap();
    halo_cloud::routes(app)
}

/// Sends `request`, returns the status, the `Allow` header and the JSON body; panics
/// unless the body is the error envelope with a matching status.
async fn error_of(router: &axum::Router, request: Request<Body>) -> (StatusCode, String, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let allow = response
        .headers()
        .get(header::ALLOW)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(
        content_type, "application/json",
        "{status}: not JSON: {text:?}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["status"], json!(status.as_u16()), "{text}");
    assert_eq!(
        body["error"]["statusText"],
        json!(status.canonical_reason().unwrap()),
        "{text}"
    );
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    (status, allow, message)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn admin_post(uri: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(uri).header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    request.body(body.into()).unwrap()
}

#[tokio::test]
async fn an_unknown_route_is_404_in_the_envelope() {
    let router = router();
    let (status, _, message) = error_of(&router, get("/integrator/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(message, "operation not found: no such route");
    let (status, _, _) = error_of(&router, get("/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_wrong_method_is_405_in_the_envelope_with_allow() {
    let router = router();
    let request = Request::builder()
        .method(Method::DELETE)
        .uri("/healthz")
        .body(Body::empty())
        .unwrap();
    let (status, allow, message) = error_of(&router, request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(message, "method not allowed on this route");
    assert!(allow.contains("GET"), "Allow: {allow:?}");
    let (status, _, _) = error_of(&router, admin_post("/integrator/sites", None, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_duplicated_query_parameter_is_400_in_the_envelope() {
    let router = router();
    let (status, _, message) = error_of(
        &router,
        get("/integrator/sites?practiceManagementSiteId=AB123&practiceManagementSiteId=CD456"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message,
        "invalid query string: duplicate field `practiceManagementSiteId`"
    );
}

#[tokio::test]
async fn invalid_utf8_in_the_query_is_400_in_the_envelope() {
    let router = router();
    let (status, _, message) = error_of(
        &router,
        get("/integrator/pair-site?practiceManagementSiteId=%FF%FE"),
    )
    .await;
    // pair-site is POST: the method check comes first.
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{message}");
    let (status, _, message) = error_of(
        &router,
        get("/integrator/sites?practiceManagementSiteId=%FF%FE"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message,
        "the query string is not valid UTF-8 once percent-decoded"
    );
}

#[tokio::test]
async fn invalid_utf8_in_the_path_is_400_in_the_envelope() {
    let router = router();
    let (status, _, message) = error_of(&router, get("/integrator/sites/%FF%FE")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        message,
        "the path parameter `site_id` is not valid UTF-8 once percent-decoded"
    );
    let request = Request::get("/admin/sites/%C3%28")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, message) = error_of(&router, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("not valid UTF-8"), "{message}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_in_the_envelope() {
    let router = router();
    // 1.5 and 2 MiB of valid JSON: only the size is wrong.
    for size in [3 << 19, 2 << 20] {
        let big = format!(r#"{{"label":"{}"}}"#, "x".repeat(size));
        let (status, _, message) = error_of(
            &router,
            admin_post("/admin/link-credentials", Some("application/json"), big),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{size}: {message}");
        assert_eq!(
            message,
            format!(
                "the request body is larger than the limit of {} bytes",
                app::MAX_BODY_BYTES
            )
        );
    }
    // Just under the limit is accepted.
    let fits = format!(
        r#"{{"environment":"stage","label":"{}"}}"#,
        "x".repeat(app::MAX_BODY_BYTES - 64)
    );
    let response = router
        .clone()
        .oneshot(admin_post(
            "/admin/link-credentials",
            Some("application/json"),
            fits,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_integrator_body_over_the_limit_is_413_after_authentication() {
    let router = router();
    let site = "/integrator/sites/6f1c2a9e-0000-4000-8000-000000000001/queries/immediate";
    let big = format!(
        r#"{{"command":{{"text":"{}","executionMode":"reader"}}}}"#,
        "x".repeat(2 << 20)
    );
    // Without a key: 401 first, the body is not judged.
    let request = Request::post(site)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big.clone()))
        .unwrap();
    let (status, _, _) = error_of(&router, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // With a key of an enabled integrator: 413.
    let response = router
        .clone()
        .oneshot(admin_post(
            "/admin/integrators/acme-dental/enable",
            Some("application/json"),
            r#"{"pmsType":"D4w"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = router
        .clone()
        .oneshot(admin_post(
            "/admin/integrators/acme-dental/keys",
            Some("application/json"),
            r#"{"environment":"stage"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let key = serde_json::from_slice::<Value>(&bytes).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = Request::post(site)
        .header(header::CONTENT_TYPE, "application/json")
        .header(halo_cloud::KEY_HEADER, key)
        .body(Body::from(big))
        .unwrap();
    let (status, _, message) = error_of(&router, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{message}");
}

#[tokio::test]
async fn invalid_json_is_400_in_the_envelope() {
    let router = router();
    let (status, _, message) = error_of(
        &router,
        admin_post("/admin/policy-events", Some("application/json"), "{"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("invalid JSON body: "), "{message}");
    // Valid JSON of the wrong shape.
    let (status, _, message) = error_of(
        &router,
        admin_post(
            "/admin/integrators/acme-dental/enable",
            Some("application/json"),
            r#"{"pmsType": 7}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("invalid JSON body: "), "{message}");
}

#[tokio::test]
async fn invalid_utf8_in_the_body_is_400_in_the_envelope() {
    let router = router();
    let body: &'static [u8] = b"{\"label\":\"\xff\xfe\"}";
    let (status, _, message) = error_of(
        &router,
        admin_post("/admin/link-credentials", Some("application/json"), body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.starts_with("invalid JSON body: "), "{message}");
}

#[tokio::test]
async fn a_missing_content_type_is_415_in_the_envelope() {
    let router = router();
    let (status, _, message) = error_of(
        &router,
        admin_post("/admin/link-credentials", None, r#"{"label":"x"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        message,
        "the request body must be JSON, sent with Content-Type: application/json"
    );
}

#[tokio::test]
async fn a_long_bad_value_is_not_echoed_in_full() {
    let router = router();
    let long = "y".repeat(10_000);
    let (status, _, message) = error_of(
        &router,
        admin_post(
            "/admin/integrators/acme-dental/enable",
            Some("application/json"),
            format!(r#"{{"pmsType": "{long}"}}"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.chars().count() <= 201, "{} chars", message.len());
}

#[tokio::test]
async fn a_plain_rejection_from_another_extractor_is_enveloped() {
    let router = router();
    // Not a WebSocket upgrade: axum's WebSocketUpgrade rejects it in plain text.
    let (status, _, message) = error_of(&router, get("/link/ws")).await;
    assert!(status.is_client_error(), "{status}");
    assert!(!message.is_empty());
}

//! Webhooks: support configures, per integrator, the URL(s) and secret
//! (`PUT /admin/integrators/{integrator}/webhooks`); when an async or a registered
//! query ends, its notification is queued in the store's outbox in the same
//! transaction as the query's terminal status; a background loop delivers the
//! outbox (HTTP POST, headers and signature as in `webhooks-asyncapi.yml`),
//! retrying with exponential backoff and jitter, and dead-letters a delivery that
//! keeps failing (`GET /admin/webhooks/dead-letters`).
//!
//! **Signature.** `X-Halo-Signature-256` is the lowercase hex HMAC-SHA256, under the
//! integrator's secret, of the raw body, `.`, and the `X-Halo-Timestamp` value (an
//! RFC 3339 instant, fresh for each attempt). Receivers reject a timestamp more than
//! five minutes old. `X-Halo-Id` is the payload's `id`, the same on every attempt,
//! so a receiver can drop a duplicate.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use hmac::{Hmac, Mac as _};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::admin::Admin;
use crate::app::AppState;
use crate::clock::now;
use crate::dto::rfc3339;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::queries::blocking;
use crate::queries::store::{Delivery, JobStore, JobStoreError};

/// An integrator's webhook settings, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookConfig {
    /// The URL for every source, unless a source has its own. Template variables
    /// `{siteId}`, `{queryId}` and `{source}` are filled in.
    #[serde(default)]
    pub url: Option<String>,
    /// The URL for async queries.
    #[serde(default)]
    pub async_url: Option<String>,
    /// The URL for registered queries.
    #[serde(default)]
    pub registered_url: Option<String>,
    /// The signing secret.
    pub secret: String,
}

impl WebhookConfig {
    fn url_for(&self, source: &str) -> Option<&str> {
        let own = match source {
            "async" => self.async_url.as_deref(),
            "registered" => self.registered_url.as_deref(),
            _ => None,
        };
        own.or(self.url.as_deref())
    }
}

/// `PUT /admin/integrators/{integrator}/webhooks` body. Without `secret`, one is
/// generated and returned once.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    /// See [`WebhookConfig::url`].
    #[serde(default)]
    pub url: Option<String>,
    /// See [`WebhookConfig::async_url`].
    #[serde(default)]
    pub async_url: Option<String>,
    /// See [`WebhookConfig::registered_url`].
    #[serde(default)]
    pub registered_url: Option<String>,
    /// The signing secret (at least 16 characters); generated when absent.
    #[serde(default)]
    #[schema(min_length = 16)]
    pub secret: Option<String>,
}

/// The answer of `PUT /admin/integrators/{integrator}/webhooks` (documentation
/// only: the handler writes the same fields).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSettingsDto {
    /// The integrator.
    pub integrator: String,
    /// The URL for every source without its own.
    pub url: Option<String>,
    /// The URL for async queries.
    pub async_url: Option<String>,
    /// The URL for registered queries.
    pub registered_url: Option<String>,
    /// The generated secret, shown once (absent when the request gave one).
    pub secret: Option<String>,
}

/// One dead-lettered delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterDto {
    /// The notification id (`X-Halo-Id`).
    #[schema(format = Uuid)]
    pub id: String,
    /// The integrator.
    pub integrator: String,
    /// Where it was going.
    pub url: String,
    /// The JSON body it carried.
    pub body: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// The answer of `GET /admin/webhooks/dead-letters`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLettersDto {
    /// Deliveries that kept failing.
    pub dead_letters: Vec<DeadLetterDto>,
    /// Deliveries still pending.
    pub pending: u64,
}

/// Fills a URL template.
pub fn fill(template: &str, site: &str, query: &str, source: &str) -> String {
    template
        .replace("{siteId}", site)
        .replace("{queryId}", query)
        .replace("{source}", source)
}

fn check_url(url: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(&fill(url, "s", "q", "async"))
        .map_err(|e| ApiError::bad_request(format!("invalid webhook url: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
        return Err(ApiError::bad_request(
            "a webhook url must be http(s) with a host",
        ));
    }
    Ok(())
}

/// `PUT /admin/integrators/{integrator}/webhooks`: sets an integrator's webhooks.
#[utoipa::path(put, path = "/admin/integrators/{integrator}/webhooks", tag = "admin",
    params(("integrator" = String, Path, description = "The integrator's id.")),
    security(("admin" = [])),
    request_body = WebhookBody,
    responses((status = 200, description = "Webhooks set.", body = WebhookSettingsDto),
        crate::openapi::AdminWriteErrors))]
pub async fn configure(
    State(app): State<AppState>,
    _admin: Admin,
    integrator: Result<ApiPath<String>, ApiError>,
    body: Result<ApiJson<WebhookBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiPath(integrator) = integrator?;
    let integrator = integrator
        .parse::<halo_policy::IntegratorId>()
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .to_string();
    let ApiJson(body) = body?;
    for url in [&body.url, &body.async_url, &body.registered_url]
        .into_iter()
        .flatten()
    {
        check_url(url)?;
    }
    if body.url.is_none() && body.async_url.is_none() && body.registered_url.is_none() {
        return Err(ApiError::bad_request(
            "at least one webhook url is required",
        ));
    }
    let (secret, generated) = match body.secret {
        Some(s) if s.len() >= 16 => (s, false),
        Some(_) => {
            return Err(ApiError::bad_request(
                "secret must be at least 16 characters",
            ));
        }
        None => (crate::admin::new_secret("whsec_"), true),
    };
    let config = WebhookConfig {
        url: body.url,
        async_url: body.async_url,
        registered_url: body.registered_url,
        secret: secret.clone(),
    };
    let text = serde_json::to_string(&config).map_err(|e| ApiError::internal(&e))?;
    let who = integrator.clone();
    blocking(&app.jobs.store, move |s| s.put_webhook_config(&who, &text))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut answer = json!({
        "integrator": integrator,
        "url": config.url,
        "asyncUrl": config.async_url,
        "registeredUrl": config.registered_url,
    });
    if generated {
        answer["secret"] = json!(secret);
    }
    Ok(Json(answer))
}

/// `GET /admin/webhooks/dead-letters`: deliveries that kept failing.
#[utoipa::path(get, path = "/admin/webhooks/dead-letters", tag = "admin",
    security(("admin" = [])),
    responses((status = 200, description = "Dead letters and the pending count.",
        body = DeadLettersDto),
        crate::openapi::AdminStoreListErrors))]
pub async fn dead_letters(
    State(app): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let dead = blocking(&app.jobs.store, |s| s.dead_letters())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let pending = blocking(&app.jobs.store, |s| s.pending_deliveries())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let items: Vec<Value> = dead
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "integrator": d.integrator,
                "url": d.url,
                "body": d.body,
                "attempts": d.attempts,
                "lastError": d.last_error,
                "createdAt": rfc3339(halo_ids::Timestamp::from_millis(d.created_at)),
            })
        })
        .collect();
    Ok(Json(json!({"deadLetters": items, "pending": pending})))
}

/// The notifications to queue for a query that ended: one, if the integrator has a
/// URL for `source`.
///
/// # Errors
/// [`JobStoreError`] when the configuration cannot be read.
pub fn deliveries(
    store: &dyn JobStore,
    integrator: &str,
    source: &str,
    site: &str,
    query_id: &str,
    at: u64,
) -> Result<Vec<Delivery>, JobStoreError> {
    let Some(text) = store.webhook_config(integrator)? else {
        return Ok(Vec::new());
    };
    let config: WebhookConfig = serde_json::from_str(&text)?;
    let Some(template) = config.url_for(source) else {
        return Ok(Vec::new());
    };
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "id": id,
        "occurredAt": rfc3339(halo_ids::Timestamp::from_millis(at)),
        "siteId": site,
        "queryId": query_id,
        "webhookSource": source,
    })
    .to_string();
    Ok(vec![Delivery {
        id,
        integrator: integrator.to_owned(),
        url: fill(template, site, query_id, source),
        body,
        attempts: 0,
        next_at: at,
        last_error: None,
        created_at: at,
    }])
}

/// The signature of `body` sent at `timestamp`: lowercase hex HMAC-SHA256 of
/// `body + "." + timestamp` under `secret`.
pub fn sign(secret: &[u8], body: &[u8], timestamp: &str) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// When attempt `attempts + 1` is due after a failure: exponential backoff from
/// `base`, capped at `max`, with jitter (a random point in the upper half).
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let full = base.saturating_mul(1u32 << attempts.min(20)).min(max);
    let half = full / 2;
    let jitter = rand::rng().random_range(0..=u64::try_from(half.as_millis()).unwrap_or(0));
    half + Duration::from_millis(jitter)
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Retry later (5xx, 408, 429, a network error or a timeout).
    Retry(String),
    /// Never retry (another 4xx, or no configuration).
    Dead(String),
}

async fn attempt(client: &reqwest::Client, store: &Arc<dyn JobStore>, d: &Delivery) -> Attempt {
    let integrator = d.integrator.clone();
    let config = match blocking(store, move |s| s.webhook_config(&integrator)).await {
        Ok(Some(text)) => match serde_json::from_str::<WebhookConfig>(&text) {
            Ok(c) => c,
            Err(e) => return Attempt::Dead(format!("unreadable configuration: {e}")),
        },
        Ok(None) => return Attempt::Dead("the integrator has no webhook configured".into()),
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let timestamp = rfc3339(now());
    let signature = sign(config.secret.as_bytes(), d.body.as_bytes(), &timestamp);
    let sent = client
        .post(&d.url)
        .header("content-type", "application/json")
        .header("x-halo-id", &d.id)
        .header("x-halo-timestamp", &timestamp)
        .header("x-halo-signature-256", signature)
        .body(d.body.clone())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Attempt::Delivered,
        Ok(r) => {
            let status = r.status();
            let retry = status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS;
            let why = format!("the receiver answered {status}");
            if retry {
                Attempt::Retry(why)
            } else {
                Attempt::Dead(why)
            }
        }
        Err(e) => Attempt::Retry(format!("delivery failed: {e}")),
    }
}

/// Delivers one due delivery, if this node claims it first.
async fn deliver_one(app: &AppState, client: &reqwest::Client, d: Delivery) {
    let config = &app.jobs.config;
    let store = &app.jobs.store;
    let at = now().as_millis();
    let hold = u64::try_from((config.webhook_timeout * 2).as_millis()).unwrap_or(u64::MAX);
    let (id, seen) = (d.id.clone(), d.next_at);
    match blocking(store, move |s| {
        s.claim_delivery(&id, seen, at.saturating_add(hold))
    })
    .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::error!(error = %e, "claiming a webhook delivery failed");
            return;
        }
    }
    let attempts = d.attempts + 1;
    let id = d.id.clone();
    let result = match attempt(client, store, &d).await {
        Attempt::Delivered => blocking(store, move |s| s.delivered(&id)).await,
        Attempt::Dead(why) => {
            tracing::warn!(delivery = %d.id, %why, "webhook dead-lettered");
            blocking(store, move |s| s.dead_letter(&id, attempts, &why)).await
        }
        Attempt::Retry(why) if attempts >= config.webhook_attempts => {
            tracing::warn!(delivery = %d.id, %why, attempts, "webhook dead-lettered after its last attempt");
            blocking(store, move |s| s.dead_letter(&id, attempts, &why)).await
        }
        Attempt::Retry(why) => {
            let wait = backoff(
                config.webhook_retry_base,
                config.webhook_retry_max,
                d.attempts,
            );
            let next = now()
                .as_millis()
                .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            blocking(store, move |s| s.retry_delivery(&id, attempts, next, &why)).await
        }
    };
    if let Err(e) = result {
        tracing::error!(delivery = %d.id, error = %e, "recording a webhook attempt failed");
    }
}

/// The HTTP client that delivers webhooks: rustls for `https://` URLs, trusting
/// the web PKI's roots plus `config.webhook_roots`; no redirects (a receiver is
/// the URL support set, nowhere else); `config.webhook_timeout` per attempt.
///
/// # Errors
/// A `webhook_roots` entry that is not PEM certificates, or a client that cannot be
/// built.
pub fn webhook_client(
    config: &crate::queries::JobsConfig,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(config.webhook_timeout)
        .redirect(reqwest::redirect::Policy::none());
    for pem in &config.webhook_roots {
        for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build()
}

/// Delivers the outbox until the process stops.
pub async fn deliver_forever(app: AppState) {
    let client = match webhook_client(&app.jobs.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no webhook client: webhooks stay in the outbox");
            return;
        }
    };
    let mut every = tokio::time::interval(app.jobs.config.tick);
    loop {
        every.tick().await;
        let at = now().as_millis();
        let due = match blocking(&app.jobs.store, move |s| s.due_deliveries(at, 64)).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading the webhook outbox failed");
                continue;
            }
        };
        let attempts = due.into_iter().map(|d| deliver_one(&app, &client, d));
        futures_util::future::join_all(attempts).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A self-signed certificate for tests only (`openssl req -x509 -newkey ec`).
    const TEST_CA: &[u8] = include_bytes!("testdata/webhook-test-ca.pem");

    #[tokio::test]
    async fn an_https_webhook_url_is_spoken_to_in_tls() {
        let client = webhook_client(&crate::queries::JobsConfig::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let first_bytes = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 3];
            socket.read_exact(&mut head).await.unwrap();
            head
        });
        // The receiver never completes the handshake: the attempt fails, after the
        // client opened it with a TLS ClientHello.
        let sent = client
            .post(format!("https://127.0.0.1:{port}/hooks"))
            .body("{}")
            .send()
            .await;
        assert!(sent.is_err());
        let head = first_bytes.await.unwrap();
        // A TLS handshake record (content type 22), protocol major version 3.
        assert_eq!(head[..2], [0x16, 0x03], "{head:?}");
    }

    #[test]
    fn extra_webhook_roots_must_be_pem_certificates() {
        let with_root = crate::queries::JobsConfig {
            webhook_roots: vec![TEST_CA.to_vec()],
            ..crate::queries::JobsConfig::default()
        };
        assert!(webhook_client(&with_root).is_ok());
        let garbage = crate::queries::JobsConfig {
            webhook_roots: vec![
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
            ],
            ..crate::queries::JobsConfig::default()
        };
        assert!(webhook_client(&garbage).is_err());
    }

    #[test]
    fn signature_is_hmac_of_body_dot_timestamp_in_lowercase_hex() {
        // RFC 4231 test case 2 shape: key "Jefe"; message split as body "." timestamp.
        let sig = sign(b"Jefe", b"what do ya want ", "for nothing?");
        // HMAC-SHA256("Jefe", "what do ya want .for nothing?"), computed independently
        // (Python's hmac module).
        assert_eq!(
            sig,
            "83fb3421ec48dc8ee8cd58e1f03bb1f80ae0110c64a82771c98a0cea22cecdd2"
        );
        assert_ne!(sig, sign(b"Jefe", b"what do ya want ", "for nothing!"));
        assert_ne!(sig, sign(b"Jeff", b"what do ya want ", "for nothing?"));
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for n in 0..30 {
            let d = backoff(base, max, n);
            assert!(d <= max);
            let full = base.saturating_mul(1u32 << n.min(20)).min(max);
            assert!(d >= full / 2, "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn templates_are_filled() {
        assert_eq!(
            fill("https://x/{source}/{siteId}?q={queryId}", "S", "Q", "async"),
            "https://x/async/S?q=Q"
        );
    }
}

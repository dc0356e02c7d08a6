//! Node-to-node forwarding: an immediate query that enters a node which does not
//! hold the lease of the site's Link is proxied to the node that does.
//!
//! **The channel.** The entering node sends the integrator's request as it came
//! (method, path and query, body, its headers, the subscription key included) to
//! the same path on the owner's `--peer-addr`, adding four headers:
//! `x-halo-forwarded-by` (its node id), `x-halo-forwarded-for` (the caller's IP as
//! it saw it, or `-`), `x-halo-forwarded-at` (Unix milliseconds) and
//! `x-halo-forward-signature`: hex HMAC-SHA256, under the cluster secret, of all
//! of these plus the method, path and query, the subscription key and the body.
//!
//! **What the receiving node trusts.** Only a request whose signature verifies
//! (compared in constant time) and whose timestamp is within
//! [`MAX_SKEW`] of its own clock; anything else carrying an `x-halo-forward*`
//! header is refused (401), and a node without a cluster secret refuses them all.
//! From a verified request it trusts exactly one thing it cannot check itself:
//! the caller's IP (used by IP allow-lists). It authenticates the subscription key
//! and evaluates the policy again against its own state (deny by default), and
//! runs the query only if it holds the Link's lease itself; it never forwards a
//! forwarded request again (a loop is impossible), answering 503 with
//! `Retry-After` instead. Only `POST /integrator/sites/{id}/queries/immediate` and
//! `…/queries/async` are accepted forwarded: an async query is accepted, and so
//! owned and run, by the node holding its Link (its pages arrive there), and a
//! registered query's occurrence is fired by that node too ([`runs_elsewhere`]).
//!
//! **A stale lease.** A node forwards by the leases it read in its last renewal
//! round (up to [`ClusterConfig::lease_renew_every`](crate::ClusterConfig) old).
//! When the node it picked refuses the connection, or answers 503 with
//! `x-halo-forward-not-holder` (it does not hold the Link: it ran nothing), the
//! sender reads the leases again at once ([`LinkLeases::refresh`]) and sends the
//! request once more, to the node holding the Link now (or runs it itself, or
//! accepts an async query to wait for its Link); only then does it answer 503. A
//! request that may have reached the first node (the connection broke later) is
//! never sent twice.
//!
//! **Limits.** The channel is plain HTTP: run it on a private network (the
//! secret authenticates, it does not encrypt). A captured forwarded request can be
//! replayed to a node within [`MAX_SKEW`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::app::{AppState, MAX_BODY_BYTES};
use crate::error::ApiError;
use crate::extract::{CallerIp, subscription_key};
use crate::lease::{LinkLeases, Placement};

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// How far a forwarded request's timestamp may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// How long a peer may leave a forwarded request's connection unanswered at the
/// TCP level (no acknowledgement, no keepalive reply) before the request is given
/// up and answered 503 with `Retry-After`: what a silent partition looks like.
pub const PEER_SILENCE: Duration = Duration::from_secs(3);

/// How long a client is asked to wait when the site's Link is on no node that can
/// serve it now (a node died and its Link is reconnecting elsewhere).
pub const NO_LEASE_RETRY_AFTER_MS: u64 = 2_000;

const BY: &str = "x-halo-forwarded-by";
const FOR: &str = "x-halo-forwarded-for";
const AT: &str = "x-halo-forwarded-at";
const SIGNATURE: &str = "x-halo-forward-signature";
const PREFIX: &str = "x-halo-forward";
/// On a forwarded request's answer: the receiving node did not run it because it
/// does not hold the Link's lease (the sender's lease is stale).
const NOT_HOLDER: &str = "x-halo-forward-not-holder";

/// The shared secret of the node-to-node channel.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Why a cluster secret was refused.
#[derive(Debug, thiserror::Error)]
#[error("the cluster secret must be at least {MIN_SECRET_BYTES} bytes, got {0}")]
pub struct ShortSecret(usize);

impl ClusterSecret {
    /// A secret of at least [`MIN_SECRET_BYTES`] (surrounding whitespace, such as
    /// a file's final newline, is trimmed).
    ///
    /// # Errors
    /// [`ShortSecret`] when shorter.
    pub fn new(bytes: &[u8]) -> Result<Self, ShortSecret> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(ShortSecret(trimmed.len()));
        }
        Ok(ClusterSecret(trimmed.to_vec()))
    }

    /// `None` only if HMAC refused the key (it takes keys of any length).
    fn mac(&self, fields: &Signed<'_>, body: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        for field in [
            "halo-forward-v1",
            fields.method,
            fields.path,
            fields.node,
            fields.caller,
            fields.at,
            fields.key,
        ] {
            mac.update(&u64::try_from(field.len()).unwrap_or(u64::MAX).to_le_bytes());
            mac.update(field.as_bytes());
        }
        mac.update(body);
        Some(mac)
    }

    fn sign(&self, fields: &Signed<'_>, body: &[u8]) -> String {
        self.mac(fields, body)
            .map(|mac| hex::encode(mac.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// Whether `signature` (hex) signs `fields` and `body`; constant time.
    fn verify(&self, fields: &Signed<'_>, body: &[u8], signature: &str) -> bool {
        let Ok(bytes) = hex::decode(signature) else {
            return false;
        };
        self.mac(fields, body)
            .is_some_and(|mac| mac.verify_slice(&bytes).is_ok())
    }
}

/// What the signature covers, besides the body.
struct Signed<'a> {
    method: &'a str,
    path: &'a str,
    node: &'a str,
    caller: &'a str,
    at: &'a str,
    key: &'a str,
}

/// A node's part in forwarding: its leases, the secret and an HTTP client.
#[derive(Debug)]
pub struct Forwarding {
    /// Where each Link is attached.
    pub leases: Arc<LinkLeases>,
    secret: Option<ClusterSecret>,
    http: reqwest::Client,
}

impl Forwarding {
    /// Forwarding over `leases`; without a secret this node neither forwards nor
    /// accepts forwarded requests (a site whose Link is elsewhere is answered 503).
    pub fn new(leases: Arc<LinkLeases>, secret: Option<ClusterSecret>) -> Self {
        let builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            // A peer cut off by a partition answers nothing, not even a reset: probe
            // a connection that waits for a long query's answer, so that its loss
            // ends the request (503 with Retry-After) rather than the timeout below.
            .tcp_keepalive(PEER_SILENCE / 3)
            .tcp_keepalive_interval(PEER_SILENCE / 3)
            .tcp_keepalive_retries(3)
            // Beyond any immediate query's deadline (maxTimeInQueue plus execution).
            .timeout(Duration::from_secs(600));
        // And a request written into a pooled connection to such a peer: data left
        // unacknowledged this long ends the connection (Linux; elsewhere only the
        // keepalive probes above, once the request is sent).
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        let builder = builder.tcp_user_timeout(PEER_SILENCE);
        let http = builder.build().unwrap_or_else(|_| reqwest::Client::new());
        Forwarding {
            leases,
            secret,
            http,
        }
    }
}

fn unix_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

fn caller_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn no_lease() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the site's link is not attached to a cloud node that can serve it now; retry later",
    )
    .with_retry_after_ms(NO_LEASE_RETRY_AFTER_MS)
    .into_response()
}

/// [`no_lease`] for a forwarded request this node did not run because it does not
/// hold the Link's lease: marked so that the sender reads the leases again and
/// tries the node that holds it now.
fn not_holder() -> Response {
    let mut response = no_lease();
    response
        .headers_mut()
        .insert(NOT_HOLDER, HeaderValue::from_static("1"));
    response
}

fn refused(why: &str) -> Response {
    tracing::warn!(why, "forwarded request refused");
    ApiError::unauthorized(format!("forwarded request refused: {why}")).into_response()
}

/// The paths that run at the node holding the site's Link: an immediate query, and
/// the acceptance of an async one (its owner then runs it beside the Link).
const FORWARDED_SUFFIXES: [&str; 2] = ["/queries/immediate", "/queries/async"];

/// The site of a request that runs beside its Link (`POST
/// /integrator/sites/{id}/queries/immediate` or `…/queries/async`), if it is one.
fn forwardable_site(method: &Method, path: &str) -> Option<halo_ids::HaloGuid> {
    if method != Method::POST {
        return None;
    }
    let rest = path.strip_prefix("/integrator/sites/")?;
    let site = FORWARDED_SUFFIXES
        .iter()
        .find_map(|suffix| rest.strip_suffix(suffix))?;
    site.parse::<halo_ids::HaloGuid>().ok()
}

/// The Link serving `site`, if the site is known.
fn link_of(app: &AppState, site: halo_ids::HaloGuid) -> Option<halo_ids::LinkGuid> {
    app.state
        .router()
        .with_route(site, |route| route.map(|r| r.site().link))
}

/// The Link serving the site of a forwardable request, if the request is one and
/// the site is known.
fn forwardable_link(app: &AppState, method: &Method, path: &str) -> Option<halo_ids::LinkGuid> {
    link_of(app, forwardable_site(method, path)?)
}

/// Whether `site`'s Link holds a live lease on another node of the cluster: then
/// that node, not this one, runs the site's scheduled work (a registered query's
/// occurrence). False on a single node, and when no node holds the Link (this node
/// may then run it and answer that the site is offline).
pub fn runs_elsewhere(app: &AppState, site: halo_ids::HaloGuid) -> bool {
    holder_elsewhere(app, site).is_some()
}

/// The node holding a live lease of `site`'s Link, when that is another node of
/// the cluster (where an async query for the site must run: its runner hands it
/// over there). `None` on a single node, when this node holds the Link, and when no
/// node does.
pub(crate) fn holder_elsewhere(app: &AppState, site: halo_ids::HaloGuid) -> Option<String> {
    let forwarding = app.forwarding.as_ref()?;
    match forwarding.leases.placement(link_of(app, site)?) {
        Placement::Remote { node_id, .. } => Some(node_id),
        Placement::Local | Placement::Nowhere => None,
    }
}

/// Middleware: runs an immediate query here when this node holds its Link's
/// lease, forwards it to the node that does, or answers 503 with `Retry-After`;
/// accepts forwarded requests only as the module docs say. Anything else passes.
pub async fn route_or_forward(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let forwarded = request
        .headers()
        .keys()
        .any(|k| k.as_str().starts_with(PREFIX));
    let Some(forwarding) = app.forwarding.as_ref() else {
        if forwarded {
            return refused("this node is not part of a cluster");
        }
        return next.run(request).await;
    };
    if forwarded {
        return accept(&app, forwarding, request, next).await;
    }
    let Some(link) = forwardable_link(&app, request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let accepts_async = request.uri().path().ends_with("/queries/async");
    match forwarding.leases.placement(link) {
        placement if runs_here(&placement, accepts_async) => next.run(request).await,
        placement => {
            // Deny by default: an unauthenticated request never leaves this node
            // and learns nothing of where the Link is.
            let (parts, body) = request.into_parts();
            let policy = app.state.policy();
            if let Err(e) = crate::integrator::authenticate(
                &policy,
                &parts.headers,
                CallerIp(caller_ip(&parts)),
            ) {
                return e.into_response();
            }
            let (Placement::Remote { node_id, peer_addr }, Some(secret)) =
                (placement, &forwarding.secret)
            else {
                return no_lease();
            };
            let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
                return ApiError::bad_request("the request body could not be read").into_response();
            };
            let first = send(
                forwarding,
                secret,
                &parts,
                body.clone(),
                &node_id,
                peer_addr,
            )
            .await;
            let Forwarded::NotRun = first else {
                return first.into_response();
            };
            // The lease this node read is stale: the holder is gone or no longer holds
            // the Link. Read the leases again now, not at the next round, and go
            // where the Link is now (once).
            forwarding.leases.refresh().await;
            match forwarding.leases.placement(link) {
                placement if runs_here(&placement, accepts_async) => {
                    next.run(Request::from_parts(parts, Body::from(body))).await
                }
                Placement::Remote {
                    node_id: now_id,
                    peer_addr: now_addr,
                } if now_id != node_id || now_addr != peer_addr => {
                    send(forwarding, secret, &parts, body, &now_id, now_addr)
                        .await
                        .into_response()
                }
                _ => no_lease(),
            }
        }
    }
}

/// Whether a request for a Link placed so is handled by this node: when it holds
/// the Link; and an async query's acceptance when no node does (it is accepted
/// here and waits for its Link until its queue time runs out; an immediate query
/// is answered 503 with Retry-After instead).
fn runs_here(placement: &Placement, accepts_async: bool) -> bool {
    match placement {
        Placement::Local => true,
        Placement::Nowhere => accepts_async,
        Placement::Remote { .. } => false,
    }
}

/// What became of a forwarded request.
enum Forwarded {
    /// The owner's answer (or this node's 503 when it broke off: the request may
    /// have run there).
    Answer(Response),
    /// Surely not run: the connection was refused, or the node answered that it
    /// does not hold the Link.
    NotRun,
}

impl Forwarded {
    fn into_response(self) -> Response {
        match self {
            Forwarded::Answer(response) => response,
            Forwarded::NotRun => no_lease(),
        }
    }
}

/// Whether a header is the connection's own, not the request's.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-connection"
    )
}

async fn send(
    forwarding: &Forwarding,
    secret: &ClusterSecret,
    parts: &Parts,
    body: Bytes,
    owner: &str,
    peer_addr: SocketAddr,
) -> Forwarded {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let caller = caller_ip(parts).map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    let at = unix_millis().to_string();
    let node = forwarding.leases.node_id();
    let signature = secret.sign(
        &Signed {
            method: parts.method.as_str(),
            path: &path,
            node,
            caller: &caller,
            at: &at,
            key: subscription_key(&parts.headers),
        },
        &body,
    );
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in [
        (BY, node),
        (FOR, &caller),
        (AT, &at),
        (SIGNATURE, &signature),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let sent = forwarding
        .http
        .request(parts.method.clone(), format!("http://{peer_addr}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        // Never delivered: safe to send elsewhere.
        Err(e) if e.is_connect() => {
            tracing::warn!(owner, %peer_addr, error = %e, "cannot connect to the node holding the link");
            return Forwarded::NotRun;
        }
        Err(e) => {
            tracing::warn!(owner, %peer_addr, error = %e, "cannot forward to the node holding the link");
            return Forwarded::Answer(no_lease());
        }
    };
    let status = answer.status();
    if status == StatusCode::SERVICE_UNAVAILABLE && answer.headers().contains_key(NOT_HOLDER) {
        tracing::debug!(owner, %peer_addr, "the node no longer holds the link");
        return Forwarded::NotRun;
    }
    let mut response_headers = HeaderMap::with_capacity(answer.headers().len());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response_headers.append(name.clone(), value.clone());
        }
    }
    let bytes = match answer.bytes().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(owner, %peer_addr, error = %e, "the forwarded answer broke off");
            return Forwarded::Answer(no_lease());
        }
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Forwarded::Answer(response)
}

/// Verifies a forwarded request and runs it here, never forwarding it again.
async fn accept(app: &AppState, forwarding: &Forwarding, request: Request, next: Next) -> Response {
    let Some(secret) = forwarding.secret.as_ref() else {
        return refused("this node has no cluster secret");
    };
    let (mut parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return refused("unreadable body"),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (node, caller, at, signature) = (header(BY), header(FOR), header(AT), header(SIGNATURE));
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let fields = Signed {
        method: parts.method.as_str(),
        path: &path,
        node: &node,
        caller: &caller,
        at: &at,
        key: subscription_key(&parts.headers),
    };
    if signature.is_empty() || !secret.verify(&fields, &body, &signature) {
        return refused("bad or missing cluster signature");
    }
    let fresh = at.parse::<i64>().is_ok_and(|at| {
        let skew = u64::try_from(MAX_SKEW.as_millis()).unwrap_or(u64::MAX);
        unix_millis().abs_diff(at) <= skew
    });
    if !fresh {
        return refused("stale timestamp");
    }
    let caller = if caller == "-" {
        None
    } else {
        match caller.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => return refused("bad caller address"),
        }
    };
    // Only immediate queries and async acceptances travel between nodes.
    let Some(link) = forwardable_link(app, &parts.method, parts.uri.path()) else {
        if parts.method == Method::POST
            && FORWARDED_SUFFIXES
                .iter()
                .any(|suffix| parts.uri.path().ends_with(suffix))
        {
            // A site this node does not know (yet): not forwarded again.
            return not_holder();
        }
        return refused("only immediate queries and async acceptances are forwarded");
    };
    // The loop guard: a forwarded request runs here or not at all.
    if forwarding.leases.placement(link) != Placement::Local {
        return not_holder();
    }
    let names: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with(PREFIX))
        .cloned()
        .collect();
    for name in names {
        parts.headers.remove(name);
    }
    match caller {
        Some(ip) => {
            parts.extensions.insert(ConnectInfo(SocketAddr::new(ip, 0)));
        }
        None => {
            parts.extensions.remove::<ConnectInfo<SocketAddr>>();
        }
    }
    tracing::debug!(from = %node, "running a forwarded query");
    next.run(Request::from_parts(parts, Body::from(body))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(body_key: &'a str) -> Signed<'a> {
        Signed {
            method: "POST",
            path: "/integrator/sites/x/queries/immediate",
            node: "a",
            caller: "127.0.0.1",
            at: "1",
            key: body_key,
        }
    }

    #[test]
    fn a_signature_verifies_only_under_its_secret_and_fields() {
        let secret = ClusterSecret::new(&[7u8; 32]).unwrap();
        let other = ClusterSecret::new(&[8u8; 32]).unwrap();
        let sig = secret.sign(&fields("k"), b"{}");
        assert!(secret.verify(&fields("k"), b"{}", &sig));
        assert!(!other.verify(&fields("k"), b"{}", &sig));
        assert!(!secret.verify(&fields("k2"), b"{}", &sig));
        assert!(!secret.verify(&fields("k"), b"{ }", &sig));
        assert!(!secret.verify(&fields("k"), b"{}", "zz"));
        assert!(!secret.verify(&fields("k"), b"{}", ""));
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(ClusterSecret::new(&[1u8; 31]).is_err());
        assert!(ClusterSecret::new(b"  0123456789abcdef0123456789abcdef\n").is_ok());
    }
}

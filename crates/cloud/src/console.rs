//! The status console for support: one server-rendered HTML page (`maud`, which
//! escapes every value; no JavaScript) behind the admin token.
//!
//! # Signing in
//!
//! - `GET /admin/console` with `Authorization: Bearer <admin token>` (curl, a
//!   proxy that adds the header), or with the console's session cookie;
//!   anything else is redirected (303) to the login form.
//! - `GET /admin/console/login` shows a form; posting the admin token to
//!   `POST /admin/console/login` starts a session: a random id in an `HttpOnly`,
//!   `SameSite=Strict` cookie scoped to `/admin/console` (and `Secure` when the
//!   request came through a TLS proxy that sets `X-Forwarded-Proto: https`), valid
//!   for 8 hours. Only the id's SHA-256 is kept, in memory: a restart signs
//!   everyone out.
//! - `POST /admin/console/tickets` (Bearer admin token) answers a one-time login
//!   link valid for 60 seconds (`/admin/console/login?ticket=...`), for a script or
//!   an admin CLI that opens a browser without putting the admin token in a URL.
//! - `POST /admin/console/logout` ends the session.
//!
//! The page only reads; every change still goes through the admin API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use halo_ids::{Environment, HaloGuid, PmsId, Timestamp};
use halo_policy::KeyHash;
use maud::{DOCTYPE, Markup, html};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::activity::{BUCKET_SECS, IntegratorActivity};
use crate::admin::{Admin, new_secret};
use crate::app::AppState;
use crate::audit::{AuditKind, Stored};
use crate::clock::now;
use crate::dto::rfc3339;
use crate::error::ApiError;
use crate::extract::{ApiQuery, bearer};

/// The session cookie's name.
pub const COOKIE: &str = "halo_console";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a login ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// The most sessions and tickets kept at once; beyond it the oldest go first.
pub const MAX_SESSIONS: usize = 1024;
/// The most practices the page lists (narrow with `?q=`).
pub const MAX_PRACTICES: usize = 100;
/// The most Links the page lists.
pub const MAX_LINKS: usize = 200;
/// How many recent audit entries the page shows.
pub const RECENT_AUDIT: usize = 40;

/// Console sessions and one-time login tickets, by the SHA-256 of their secret.
#[derive(Debug, Default)]
pub struct ConsoleSessions {
    inner: Mutex<HashMap<KeyHash, Grant>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantKind {
    Session,
    Ticket,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    kind: GrantKind,
    expires: Timestamp,
}

impl ConsoleSessions {
    fn issue(&self, kind: GrantKind, ttl: Duration, now: Timestamp) -> String {
        let secret = new_secret(match kind {
            GrantKind::Session => "hcs_",
            GrantKind::Ticket => "hct_",
        });
        let mut map = self.inner.lock();
        map.retain(|_, g| g.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, g)| g.expires).map(|(k, _)| *k) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            KeyHash::of(&secret),
            Grant {
                kind,
                expires: now.saturating_add(ttl),
            },
        );
        secret
    }

    /// Whether `secret` is a live session.
    fn session(&self, secret: &str, now: Timestamp) -> bool {
        self.inner
            .lock()
            .get(&KeyHash::of(secret))
            .is_some_and(|g| g.kind == GrantKind::Session && g.expires > now)
    }

    /// Takes a ticket (once): whether it was live.
    fn redeem(&self, ticket: &str, now: Timestamp) -> bool {
        let mut map = self.inner.lock();
        let hash = KeyHash::of(ticket);
        match map.get(&hash) {
            Some(g) if g.kind == GrantKind::Ticket => {
                let live = g.expires > now;
                map.remove(&hash);
                live
            }
            _ => false,
        }
    }

    fn end(&self, secret: &str) {
        let mut map = self.inner.lock();
        let hash = KeyHash::of(secret);
        if map.get(&hash).is_some_and(|g| g.kind == GrantKind::Session) {
            map.remove(&hash);
        }
    }
}

/// The value of the console cookie, if the request carries one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// Whether the request may see the console: the admin token as Bearer, or a live
/// session cookie.
fn signed_in(app: &AppState, headers: &HeaderMap) -> bool {
    if let Some(token) = bearer(headers) {
        // KeyHash compares in constant time.
        return KeyHash::of(token) == app.admin_token_hash;
    }
    cookie(headers).is_some_and(|c| app.console.session(c, now()))
}

/// Headers every console page carries: no caching, no framing, no script at all.
fn secure_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn page(markup: Markup) -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    secure_headers(&mut response);
    response
}

fn redirect(to: &'static str, set_cookie: Option<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    secure_headers(&mut response);
    response
}

fn session_cookie(value: &str, headers: &HeaderMap) -> String {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!(
        "{COOKIE}={value}; Path=/admin/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The login page's query string.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    /// A one-time ticket from `POST /admin/console/tickets`.
    pub ticket: Option<String>,
    /// Set after a failed attempt.
    pub failed: Option<String>,
}

/// `GET /admin/console/login`: redeems a ticket, or shows the sign-in form.
pub async fn login_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<LoginQuery>, ApiError>,
) -> Response {
    let query = query.map(|q| q.0).unwrap_or_default();
    if let Some(ticket) = query.ticket.as_deref() {
        let now = now();
        if app.console.redeem(ticket, now) {
            let session = app.console.issue(GrantKind::Session, SESSION_TTL, now);
            return redirect("/admin/console", Some(session_cookie(&session, &headers)));
        }
        return redirect("/admin/console/login?failed=ticket", None);
    }
    let message = match query.failed.as_deref() {
        Some("ticket") => {
            Some("That login link is used up or expired; sign in with the admin token.")
        }
        Some(_) => Some("That is not the admin token."),
        None => None,
    };
    page(html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Halo Connect console: sign in" } (style()) }
            body {
                h1 { "Halo Connect status console" }
                @if let Some(m) = message { p.error { (m) } }
                form method="post" action="/admin/console/login" {
                    label { "Admin token " input type="password" name="token" autocomplete="current-password" required; }
                    " " button type="submit" { "Sign in" }
                }
            }
        }
    })
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /admin/console/login` (form field `token`): starts a session.
pub async fn login(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let token = serde_urlencoded::from_bytes::<LoginForm>(&body)
        .map(|f| f.token)
        .unwrap_or_default();
    if KeyHash::of(token.trim()) != app.admin_token_hash {
        return redirect("/admin/console/login?failed=token", None);
    }
    let session = app.console.issue(GrantKind::Session, SESSION_TTL, now());
    redirect("/admin/console", Some(session_cookie(&session, &headers)))
}

/// `POST /admin/console/logout`: ends the session.
pub async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie(&headers) {
        app.console.end(c);
    }
    redirect(
        "/admin/console/login",
        Some(format!(
            "{COOKIE}=; Path=/admin/console; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}

/// A one-time console login link.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketDto {
    /// The path to open (on this Cloud's address) within `expiresInSecs`; it works once.
    pub path: String,
    /// How long it is valid.
    pub expires_in_secs: u64,
}

/// `POST /admin/console/tickets`: a one-time login link for the console.
#[utoipa::path(post, path = "/admin/console/tickets", tag = "admin",
    responses((status = 200, body = TicketDto), crate::openapi::AdminListErrors),
    security(("admin" = [])))]
pub async fn ticket(_: Admin, State(app): State<AppState>) -> Json<TicketDto> {
    let ticket = app.console.issue(GrantKind::Ticket, TICKET_TTL, now());
    Json(TicketDto {
        path: format!("/admin/console/login?ticket={ticket}"),
        expires_in_secs: TICKET_TTL.as_secs(),
    })
}

/// The console page's query string.
#[derive(Debug, Default, Deserialize)]
pub struct ConsoleQuery {
    /// Show only practices whose PMS ID, name or a site's Halo GUID contains this.
    pub q: Option<String>,
}

/// A site as the page shows it.
#[derive(Debug)]
struct SiteRow {
    halo_guid: HaloGuid,
    link: String,
    status: &'static str,
    availability: &'static str,
    authoritative: bool,
    demo: bool,
    epoch: u64,
}

/// A practice (an authority group) as the page shows it.
#[derive(Debug)]
struct PracticeRow {
    environment: Environment,
    pms_id: PmsId,
    name: String,
    holder: Option<HaloGuid>,
    epoch: u64,
    sites: Vec<SiteRow>,
    history: Vec<String>,
}

/// A Link as the page shows it.
#[derive(Debug)]
struct LinkRow {
    link: String,
    environment: Environment,
    version: String,
    status: &'static str,
    availability: &'static str,
    sites: usize,
    credentials: Vec<String>,
}

/// What the page shows, gathered under the read locks, rendered after them.
#[derive(Debug)]
struct View {
    now: Timestamp,
    q: String,
    practice_total: usize,
    site_total: usize,
    link_total: usize,
    practices: Vec<PracticeRow>,
    links: Vec<LinkRow>,
    audit_total: usize,
    recent: Vec<Stored>,
    activity: Vec<IntegratorActivity>,
}

/// The most authority groups a text search looks at (under the registry's read
/// lock, which delays the writer's publishing while held).
pub const MAX_SCANNED: usize = 50_000;

/// The practices (authority groups) to show for `needle`, at most
/// [`MAX_PRACTICES`], never walking the whole registry: without a needle the first
/// groups; a Halo GUID, PMS ID or CRN is looked up directly; other text is matched
/// against PMS IDs and practice names of at most [`MAX_SCANNED`] groups.
fn select<'r>(
    registry: &'r halo_tenancy::Registry,
    needle: &str,
) -> Vec<(halo_tenancy::GroupKey, &'r halo_tenancy::Group)> {
    if needle.is_empty() {
        return registry
            .groups()
            .take(MAX_PRACTICES)
            .map(|(k, g)| (*k, g))
            .collect();
    }
    let mut keys: Vec<halo_tenancy::GroupKey> = Vec::new();
    if let Ok(halo) = needle.parse::<HaloGuid>() {
        keys.extend(registry.site(halo).map(halo_tenancy::Site::group_key));
    } else {
        let pms_id = needle.parse::<PmsId>().ok().or_else(|| {
            needle
                .to_ascii_uppercase()
                .parse::<halo_ids::Crn>()
                .ok()
                .map(|crn| PmsId::new(halo_ids::PmsType::D4w, crn))
        });
        if let Some(pms_id) = pms_id {
            for environment in [Environment::Stage, Environment::Production] {
                keys.push(halo_tenancy::GroupKey::new(environment, pms_id));
            }
        }
    }
    let direct: Vec<_> = keys
        .into_iter()
        .filter_map(|k| registry.group(&k).map(|g| (k, g)))
        .collect();
    if !direct.is_empty() {
        return direct;
    }
    registry
        .groups()
        .take(MAX_SCANNED)
        .filter(|(key, group)| {
            key.pms_id.to_string().to_ascii_lowercase().contains(needle)
                || group.state().members().any(|m| {
                    registry
                        .site(m.halo_guid)
                        .is_some_and(|s| s.practice_name().to_ascii_lowercase().contains(needle))
                })
        })
        .take(MAX_PRACTICES)
        .map(|(k, g)| (*k, g))
        .collect()
}

fn gather(app: &AppState, q: &str) -> View {
    let now = now();
    let needle = q.trim().to_ascii_lowercase();
    let state = &app.state;
    let mut practices: BTreeMap<(Environment, PmsId), PracticeRow> = BTreeMap::new();
    let (practice_total, site_total, links, link_total) = {
        let registry = state.registry();
        let practice_total = registry.groups().count();
        for (key, group) in select(&registry, &needle) {
            let sites: Vec<&halo_tenancy::Site> = group
                .state()
                .members()
                .filter_map(|m| registry.site(m.halo_guid))
                .collect();
            let holder = group.holder();
            let name = sites
                .iter()
                .find(|s| Some(s.halo_guid()) == holder)
                .or_else(|| sites.first())
                .map(|s| s.practice_name().to_owned())
                .unwrap_or_default();
            let mut rows: Vec<SiteRow> = sites
                .iter()
                .map(|s| SiteRow {
                    halo_guid: s.halo_guid(),
                    link: s.link_guid().to_string(),
                    status: s.status().as_str(),
                    availability: state.availability_of(s, now).as_str(),
                    authoritative: s.is_authoritative(),
                    demo: s.is_demo(),
                    epoch: s.epoch().get(),
                })
                .collect();
            rows.sort_by_key(|r| (!r.authoritative, r.halo_guid.to_string()));
            practices.insert(
                (key.environment, key.pms_id),
                PracticeRow {
                    environment: key.environment,
                    pms_id: key.pms_id,
                    name,
                    holder,
                    epoch: group.epoch().get(),
                    sites: rows,
                    history: Vec::new(),
                },
            );
        }
        let credentials = state.credentials();
        let mut bound: HashMap<halo_ids::LinkGuid, Vec<String>> = HashMap::new();
        for (id, c) in credentials.iter() {
            if let (Some(link), false) = (c.link, c.revoked) {
                bound.entry(link).or_default().push(id.to_string());
            }
        }
        let link_total = registry.links().count();
        let mut links: Vec<LinkRow> = registry
            .links()
            .map(|l| LinkRow {
                link: l.link_guid().to_string(),
                environment: l.environment(),
                version: l.version().to_owned(),
                status: match l.status() {
                    halo_tenancy::LinkStatus::Active => "active",
                    halo_tenancy::LinkStatus::Uninstalled => "uninstalled",
                },
                availability: state
                    .link_availability(l.link_guid(), l.last_heard(), now)
                    .as_str(),
                sites: l.sites().len(),
                credentials: bound.remove(&l.link_guid()).unwrap_or_default(),
            })
            .collect();
        links.sort_by(|a, b| a.link.cmp(&b.link));
        links.truncate(MAX_LINKS);
        (practice_total, registry.site_count(), links, link_total)
    };
    let (audit_total, recent) = {
        let trail = state.audit();
        let listed: HashSet<(Environment, PmsId)> = practices.keys().copied().collect();
        for s in trail.iter() {
            let e = &s.entry;
            if e.kind != AuditKind::AuthorityChanged {
                continue;
            }
            let (Some(env), Some(pms)) = (e.environment, e.practice) else {
                continue;
            };
            if listed.contains(&(env, pms)) {
                if let Some(row) = practices.get_mut(&(env, pms)) {
                    let mut line = format!("{} · {}", rfc3339(s.at), e.detail);
                    if let Some(actor) = &e.actor {
                        let _ = write!(line, " (by {actor}");
                        if let Some(reason) = &e.reason {
                            let _ = write!(line, ": {reason}");
                        }
                        line.push(')');
                    }
                    row.history.push(line);
                }
            }
        }
        let recent: Vec<Stored> = trail.iter().rev().take(RECENT_AUDIT).cloned().collect();
        (trail.len(), recent)
    };
    View {
        now,
        q: q.to_owned(),
        practice_total,
        site_total,
        link_total,
        practices: practices.into_values().collect(),
        links,
        audit_total,
        recent,
        activity: app.activity.snapshot(now),
    }
}

fn style() -> Markup {
    html! {
        style {
            "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24}"
            "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccd}"
            "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #d8dbe0;padding:3px 7px;text-align:left;vertical-align:top}"
            "th{background:#f2f4f7}code{font-size:12px}.online{color:#116329}.offline{color:#9a6700}.unreachable{color:#cf222e}"
            ".muted{color:#656d76}.error{color:#cf222e}.chart{background:#f6f8fa;border:1px solid #d8dbe0}"
            "ul.history{margin:.2em 0;padding-left:1.2em}"
        }
    }
}

/// The request-rate chart: one bar per bucket, oldest on the left.
fn chart(a: &IntegratorActivity) -> Markup {
    const W: usize = 300;
    const H: u64 = 60;
    let bar = W / a.recent.len().max(1);
    let max = a.recent.iter().copied().max().unwrap_or(0).max(1);
    let label = format!(
        "{}: requests per {BUCKET_SECS} s over the last {} minutes (peak {max})",
        a.integrator,
        a.recent.len() as u64 * BUCKET_SECS / 60
    );
    html! {
        svg.chart width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg" {
            title { (label) }
            @for (i, n) in a.recent.iter().enumerate() {
                @if *n > 0 {
                    @let h = (n * (H - 4)).div_ceil(max).max(1);
                    rect x=(i * bar) y=(H - h) width=(bar.saturating_sub(1).max(1)) height=(h) fill="#0969da" {}
                }
            }
        }
    }
}

fn render(v: &View) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="30";
                title { "Halo Connect status console" }
                (style())
            }
            body {
                h1 { "Halo Connect status console" }
                p.muted {
                    "As of " (rfc3339(v.now)) " · " (v.practice_total) " practices · " (v.site_total) " sites · "
                    (v.link_total) " Links · " (v.audit_total) " audit entries · refreshes every 30 s"
                }
                form method="get" action="/admin/console" {
                    label { "Find a practice " input type="search" name="q" value=(v.q) placeholder="CRN, name or Halo GUID"; }
                    " " button type="submit" { "Filter" }
                }
                form method="post" action="/admin/console/logout" { button type="submit" { "Sign out" } }

                h2 #practices { "Practices and their sites" }
                @if v.practices.is_empty() { p.muted { "No practice matches." } }
                @if v.practices.len() < v.practice_total && v.q.is_empty() {
                    p.muted { "Showing the first " (v.practices.len()) " of " (v.practice_total) "; filter to find others." }
                }
                @for p in &v.practices {
                    h3 { (p.name) " " span.muted { code { (p.pms_id) } " · " (p.environment.as_str()) } }
                    p {
                        "Authority: "
                        @match p.holder {
                            Some(h) => { "held by " code { (h) } }
                            None => { strong.error { "vacant" } }
                        }
                        " · epoch " strong { (p.epoch) }
                    }
                    table {
                        tr { th { "Halo GUID" } th { "Link" } th { "status" } th { "availability" } th { "authoritative" } th { "epoch" } th { "demo copy" } }
                        @for s in &p.sites {
                            tr {
                                td { code { (s.halo_guid) } }
                                td { code { (s.link) } }
                                td { (s.status) }
                                td class=(s.availability) { (s.availability) }
                                td { @if s.authoritative { "yes" } @else { "no" } }
                                td { (s.epoch) }
                                td { @if s.demo { "yes" } @else { "no" } }
                            }
                        }
                    }
                    @if !p.history.is_empty() {
                        details open[p.history.len() <= 5] {
                            summary { "Epoch history (" (p.history.len()) ")" }
                            ul.history { @for line in &p.history { li { (line) } } }
                        }
                    }
                }

                h2 #links { "Links" }
                table {
                    tr { th { "Link GUID" } th { "environment" } th { "version" } th { "status" } th { "availability" } th { "sites" } th { "credential" } }
                    @for l in &v.links {
                        tr {
                            td { code { (l.link) } }
                            td { (l.environment.as_str()) }
                            td { (l.version) }
                            td { (l.status) }
                            td class=(l.availability) { (l.availability) }
                            td { (l.sites) }
                            td { @for c in &l.credentials { code { (c) } " " } }
                        }
                    }
                }

                h2 #integrators { "Integrators: request rate" }
                @if v.activity.is_empty() { p.muted { "No integrator request since the Cloud started." } }
                table {
                    @if !v.activity.is_empty() {
                        tr { th { "integrator" } th { "last 10 minutes" } th { "requests" } th { "denied" } th { "denials by code" } }
                    }
                    @for a in &v.activity {
                        tr {
                            td { code { (a.integrator) } }
                            td { (chart(a)) }
                            td { (a.total) }
                            td { (a.denied) }
                            td { @for (code, n) in &a.by_code { code { (code) } " " (n) br; } }
                        }
                    }
                }
                p.muted { "Counters are in memory since the Cloud started; denials are also sampled into the audit trail." }

                h2 #audit { "Recent audit entries" }
                table {
                    tr { th { "id" } th { "at" } th { "kind" } th { "actor" } th { "reason" } th { "subject" } th { "detail" } }
                    @for s in &v.recent {
                        @let e = &s.entry;
                        tr {
                            td { (s.id) }
                            td { (rfc3339(s.at)) }
                            td { code { (e.kind.as_str()) } }
                            td { @if let Some(a) = &e.actor { (a) } }
                            td { @if let Some(r) = &e.reason { (r) } }
                            td {
                                @if let Some(i) = &e.integrator { "integrator " code { (i) } br; }
                                @if let Some(p) = &e.practice { "practice " code { (p) } br; }
                                @if let Some(h) = &e.halo_guid { "site " code { (h) } br; }
                                @if let Some(c) = &e.credential { "credential " code { (c) } br; }
                                @if let Some(l) = &e.link_guid { "Link " code { (l) } }
                            }
                            td { (e.detail) }
                        }
                    }
                }
                p.muted { "The whole trail, with filters and paging: " code { "GET /admin/audit" } "." }
            }
        }
    }
}

/// `GET /admin/console`: the status page (admin token as Bearer, or a session).
pub async fn console(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<ApiQuery<ConsoleQuery>, ApiError>,
) -> Response {
    if !signed_in(&app, &headers) {
        if bearer(&headers).is_some() {
            return ApiError::unauthorized("invalid admin token").into_response();
        }
        return redirect("/admin/console/login", None);
    }
    let q = query.map(|q| q.0.q.unwrap_or_default()).unwrap_or_default();
    let view = gather(&app, crate::audit::clip(&q, 100).as_str());
    page(render(&view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_work_once_and_sessions_expire() {
        let s = ConsoleSessions::default();
        let t0 = Timestamp::from_millis(1_800_000_000_000);
        let ticket = s.issue(GrantKind::Ticket, TICKET_TTL, t0);
        assert!(!s.session(&ticket, t0), "a ticket is not a session");
        assert!(s.redeem(&ticket, t0));
        assert!(!s.redeem(&ticket, t0), "a ticket works once");
        let late = s.issue(GrantKind::Ticket, TICKET_TTL, t0);
        assert!(!s.redeem(&late, t0.saturating_add(TICKET_TTL)));
        let session = s.issue(GrantKind::Session, SESSION_TTL, t0);
        assert!(s.session(&session, t0));
        assert!(!s.redeem(&session, t0), "a session is not a ticket");
        assert!(s.session(&session, t0), "and trying did not end it");
        assert!(!s.session(&session, t0.saturating_add(SESSION_TTL)));
        s.end(&session);
        assert!(!s.session(&session, t0));
    }

    #[test]
    fn sessions_are_bounded() {
        let s = ConsoleSessions::default();
        let t0 = Timestamp::from_millis(1_800_000_000_000);
        for i in 0..(MAX_SESSIONS as u64 + 10) {
            s.issue(
                GrantKind::Session,
                SESSION_TTL,
                Timestamp::from_millis(t0.as_millis() + i),
            );
        }
        assert_eq!(s.inner.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; halo_console=hcs_x ; b=2"),
        );
        assert_eq!(cookie(&h), Some("hcs_x"));
        h.insert(header::COOKIE, HeaderValue::from_static("halo_consolex=1"));
        assert_eq!(cookie(&h), None);
    }
}

//! The axum application: routes, shared state, the OpenAPI document, and a server
//! that can be started in-process (by the binary, the demo and the tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router as AxumRouter;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use halo_policy::KeyHash;
use halo_router::{Router, RouterConfig};
use halo_tenancy::AvailabilityConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;

use crate::error::ApiError;
use crate::state::{CloudState, StateConfig, StateError};
use crate::{
    activity, admin, admin_audit, console, integrator, link_ws, metrics, openapi, queries, serve,
    webhooks,
};

/// The largest request body accepted, in bytes (1 MiB); a larger one is answered 413.
/// The largest legitimate body, an immediate query's SQL text and parameters, is
/// far smaller.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything a handler needs.
#[derive(Debug)]
pub struct App {
    /// The state: writer, router, availability settings.
    pub state: CloudState,
    /// SHA-256 of the admin token.
    pub admin_token_hash: KeyHash,
    /// The most databases one Link's hello may announce.
    pub max_databases_per_link: usize,
    /// Revocations, sent to live Link sessions (shared with the state, which kicks
    /// on every published revocation).
    pub kicks: Arc<link_ws::Kicks>,
    /// Per-integrator request counters and the denial sampler (in memory).
    pub activity: activity::Activity,
    /// Status console sessions and login tickets (in memory).
    pub console: console::ConsoleSessions,
    /// Places for Link WebSocket sessions ([`HttpLimits::max_link_sessions`]).
    pub link_sessions: link_ws::SessionCap,
    /// The heartbeat interval asked of Links ([`HttpLimits::link_heartbeat`]).
    pub link_heartbeat: Duration,
    /// The node's heartbeat budget: the interval each Link is asked for, from the
    /// Links attached ([`HttpLimits::heartbeat_budget`]).
    pub heartbeats: crate::heartbeat::HeartbeatPlan,
    /// Each Link's own clock at its last heartbeat (`clientTimestampUTC`).
    pub client_clocks: crate::site_view::ClientClocks,
    /// The Prometheus metrics served at `/metrics`.
    pub metrics: metrics::CloudMetrics,
    /// The async path: async and registered queries, result pages, webhooks.
    pub jobs: crate::queries::Jobs,
    /// On a cluster node: Link leases and node-to-node forwarding.
    pub forwarding: Option<crate::forward::Forwarding>,
}

/// The shared application state.
pub type AppState = Arc<App>;

/// Settings of a Cloud server.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The durable state's directory; `None` keeps state in memory only.
    pub data_dir: Option<PathBuf>,
    /// The admin API's bearer token.
    pub admin_token: String,
    /// Router limits.
    pub router: RouterConfig,
    /// Availability thresholds.
    pub availability: AvailabilityConfig,
    /// Snapshot every this many logged events (0: never).
    pub snapshot_every: u64,
    /// Start on a damaged log, setting its unreadable tail aside (see `StateConfig`).
    pub accept_damaged_log: bool,
    /// The most databases one Link's hello may announce; a larger hello is refused.
    pub max_databases_per_link: usize,
    /// Limits on connections against slow and idle clients.
    pub http: HttpLimits,
}

/// Limits of the HTTP server against clients that hold connections without finishing
/// requests (slowloris). See `serve.rs` for how they are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The most HTTP connections served at once (at least 1). At the cap, the oldest
    /// connection that has not yet sent a complete request head is closed to make
    /// room; when all are busy, the new one is closed. Link WebSockets leave the count
    /// once upgraded.
    pub max_connections: usize,
    /// How long a connection has to send a complete request head, from when it opens
    /// or finishes its previous request; this is also the idle keep-alive timeout.
    pub header_read_timeout: Duration,
    /// How long a request has to send its whole body, from when its head arrived
    /// (408 after that).
    pub body_read_timeout: Duration,
    /// How long a write to a client may make no progress (a client that stops reading
    /// its responses) before the connection is closed; WebSockets included.
    pub write_timeout: Duration,
    /// The most Link WebSocket sessions at once (at least 1). A Link connecting at
    /// the cap is answered 503 with `Retry-After` before the upgrade, and retries
    /// with backoff. Each session holds one file descriptor: keep the cap plus
    /// `max_connections` below the process's descriptor limit.
    pub max_link_sessions: usize,
    /// The shortest heartbeat interval a Link is asked for in its `helloAck`. Every
    /// beat costs the Cloud one WebSocket frame; keep it well below the availability
    /// thresholds (offline after 90 s by default).
    pub link_heartbeat: Duration,
    /// The node's heartbeat budget, in beats per second over all its Links (at least
    /// 1): with more Links attached than `link_heartbeat` allows for, each is asked
    /// for a longer interval (see [`crate::heartbeat`]).
    pub heartbeat_budget: u32,
}

impl HttpLimits {
    /// The default cap on connections.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    /// The default header-read (and keep-alive idle) timeout.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default body deadline.
    pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default write timeout.
    pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default cap on Link sessions. An idle Link costs the Cloud about 13 KB
    /// of resident memory (16 KB with its credential; `examples/link_swarm.rs` at
    /// 5 000 Links), so 50 000 take under 1 GB.
    pub const DEFAULT_MAX_LINK_SESSIONS: usize = 50_000;
    /// The default heartbeat interval asked of Links.
    pub const DEFAULT_LINK_HEARTBEAT: Duration = Duration::from_secs(5);
    /// The default heartbeat budget, beats per second: at the 25–35 µs of Cloud CPU
    /// a beat costs (measured with `examples/link_swarm.rs`), at most about 5 % of
    /// one core. The default interval (5 s) holds up to 7 500 Links; 50 000 Links
    /// are asked for 34 s.
    pub const DEFAULT_HEARTBEAT_BUDGET: u32 = 1_500;
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: Self::DEFAULT_BODY_READ_TIMEOUT,
            write_timeout: Self::DEFAULT_WRITE_TIMEOUT,
            max_link_sessions: Self::DEFAULT_MAX_LINK_SESSIONS,
            link_heartbeat: Self::DEFAULT_LINK_HEARTBEAT,
            heartbeat_budget: Self::DEFAULT_HEARTBEAT_BUDGET,
        }
    }
}

/// The default of [`CloudConfig::max_databases_per_link`]: room for a large hosting
/// cluster, far below what would let one hello stall the writer.
pub const MAX_DATABASES_PER_LINK: usize = 1000;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state could not be recovered.
    #[error(transparent)]
    State(#[from] StateError),
    /// The async path's store could not be opened or recovered.
    #[error(transparent)]
    Jobs(#[from] crate::queries::store::JobStoreError),
    /// The Link lease thread could not start.
    #[error("cannot start the link lease thread: {0}")]
    Leases(std::io::Error),
    /// The shared counter thread could not start.
    #[error("cannot start the shared counter thread: {0}")]
    Counters(std::io::Error),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The answer to a path no route matches.
async fn unknown_route() -> ApiError {
    ApiError::not_found("operation not found: no such route")
}

/// The answer to a method a route does not support (axum adds the `Allow` header).
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Names, in a request's span, the site its path concerns: the first path segment
/// that is a Halo GUID, and the CRN that site routes by (the fake CRN for a demo
/// or de-identified copy), read lock-free from the route table. Every log line of
/// the request then carries both.
fn record_site(span: &tracing::Span, router: &Router, path: &str) {
    let Some(halo) = path
        .split('/')
        .find(|s| s.len() >= 32)
        .and_then(|s| s.parse::<halo_ids::HaloGuid>().ok())
    else {
        return;
    };
    span.record("halo_guid", tracing::field::display(halo));
    router.with_route(halo, |route| {
        if let Some(route) = route {
            span.record(
                "crn",
                tracing::field::display(route.site().pms_id.site_id()),
            );
        }
    });
}

/// The HTTP routes over `app`. Every error, including an unknown route, a wrong
/// method and a body over [`MAX_BODY_BYTES`], is answered in the error envelope.
pub fn routes(app: AppState) -> AxumRouter {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let spans = Arc::clone(app.state.router());
    AxumRouter::new()
        .route("/integrator/sites", get(integrator::find_sites))
        .route("/integrator/sites/{site_id}", get(integrator::site_status))
        .route("/integrator/pair-site", post(integrator::pair_site))
        // Halo's deprecated name of pair-site, still answered for older clients.
        .route(
            "/integrator/pairSite",
            post(integrator::pair_site_deprecated),
        )
        .route(
            "/integrator/sites/{site_id}/queries/immediate",
            post(integrator::immediate_query),
        )
        .route(
            "/admin/link-credentials",
            post(admin::issue_link_credential).get(admin::list_link_credentials),
        )
        .route(
            "/admin/link-credentials/{id}/revoke",
            post(admin::revoke_link_credential),
        )
        .route(
            "/admin/link-credentials/{id}/rotate",
            post(admin::rotate_link_credential),
        )
        .route(
            "/admin/link-credentials/{id}/scope",
            post(admin::extend_link_credential_scope),
        )
        .route(
            "/admin/integrators/{integrator}/enable",
            post(admin::enable_integrator),
        )
        .route(
            "/admin/integrators/{integrator}/components",
            put(admin::authorise_components),
        )
        .route(
            "/admin/integrators/{integrator}/practices",
            post(admin::enable_practice),
        )
        .route(
            "/admin/integrators/{integrator}/keys",
            post(admin::issue_key),
        )
        .route("/admin/policy-events", post(admin::policy_event))
        .route(
            "/integrator/sites/{site_id}/queries/async",
            post(queries::async_query::create_async_query),
        )
        .route(
            "/integrator/sites/{site_id}/queries/status",
            post(queries::async_query::get_query_status_batch),
        )
        .route(
            "/integrator/sites/{site_id}/queries/{query_id}",
            get(queries::async_query::get_query),
        )
        .route(
            "/integrator/sites/{site_id}/queries/{query_id}/results/{page}",
            get(queries::pages::get_result_page),
        )
        .route(
            "/integrator/sites/{site_id}/queries/{query_id}/results/{page}/stream",
            get(queries::pages::stream_result_page),
        )
        .route(
            "/integrator/sites/{site_id}/queries/registered",
            post(queries::registered::create_registered_query)
                .get(queries::registered::get_registered_queries),
        )
        .route(
            "/integrator/sites/{site_id}/queries/registered/{query_id}",
            get(queries::registered::get_registered_query)
                .delete(queries::registered::cancel_registered_query),
        )
        .route(
            "/integrator/sites/{site_id}/queries/registered/{query_id}/results",
            get(queries::registered::get_registered_query_result),
        )
        .route(
            "/admin/integrators/{integrator}/webhooks",
            put(webhooks::configure),
        )
        .route("/admin/webhooks/dead-letters", get(webhooks::dead_letters))
        .route("/admin/sites/{site_id}", get(admin::get_site))
        .route("/admin/sites/{site_id}/promote", post(admin::promote))
        .route("/admin/audit", get(admin_audit::list_audit))
        .route("/admin/console", get(console::console))
        .route(
            "/admin/console/login",
            get(console::login_page).post(console::login),
        )
        .route("/admin/console/logout", post(console::logout))
        .route("/admin/console/tickets", post(console::ticket))
        .route("/link/ws", get(link_ws::link_ws))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::ApiDoc::openapi()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::metrics))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // A cluster node runs an immediate query here only while it holds the
        // lease of the site's Link; otherwise it forwards it (`forward`).
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::forward::route_or_forward,
        ))
        // A cluster node that lost its store refuses changes (503, Retry-After).
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::cluster::fail_closed,
        ))
        // Counts integrator requests and samples denials into the audit trail.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            activity::observe_integrators,
        ))
        // A rejection from an extractor outside this crate (the WebSocket upgrade's)
        // is plain text: put it in the envelope too.
        .layer(axum::middleware::map_response(
            crate::error::envelope_plain_errors,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Counts and times every answer, by operation and status (outside the
        // envelope rewrite, so the status is the one sent).
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            metrics::track,
        ))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(
                    move |req: &axum::http::Request<axum::body::Body>| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        let span = tracing::info_span!(
                            "request",
                            method = %req.method(),
                            uri = %req.uri().path(),
                            request_id = %id,
                            halo_guid = tracing::field::Empty,
                            crn = tracing::field::Empty,
                        );
                        record_site(&span, &spans, req.uri().path());
                        span
                    },
                ))
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
        .with_state(app)
}

/// Builds the application state (recovering durable state) without serving.
///
/// # Errors
/// [`StartError::State`] when recovery fails.
pub fn build(config: &CloudConfig) -> Result<AppState, StartError> {
    build_with(config, crate::queries::JobsConfig::default())
}

/// [`build`] with the async path's settings.
///
/// # Errors
/// [`StartError::State`] or [`StartError::Jobs`] when recovery fails.
pub fn build_with(
    config: &CloudConfig,
    jobs: crate::queries::JobsConfig,
) -> Result<AppState, StartError> {
    build_cluster(config, jobs, None)
}

/// [`build_with`] for one node of a cluster when `cluster` is given: the state
/// and the async path's store (async queries and their pages, registered
/// queries, the webhook outbox) live in PostgreSQL (see [`crate::cluster`] and
/// [`crate::queries::pg_store`]).
///
/// # Errors
/// [`StartError::State`] or [`StartError::Jobs`] when recovery fails.
pub fn build_cluster(
    config: &CloudConfig,
    jobs: crate::queries::JobsConfig,
    cluster: Option<&crate::cluster::ClusterConfig>,
) -> Result<AppState, StartError> {
    let jobs = match cluster {
        Some(cluster) => open_shared_jobs(cluster, jobs)?,
        None => crate::queries::Jobs::open(config.data_dir.as_deref(), jobs)?,
    };
    let router = Arc::new(Router::new(config.router.clone()));
    let state_config = StateConfig {
        data_dir: config.data_dir.clone(),
        snapshot_every: config.snapshot_every,
        availability: config.availability,
        accept_damaged_log: config.accept_damaged_log,
    };
    let state = match cluster {
        Some(cluster) => CloudState::open_cluster(&state_config, cluster, Arc::clone(&router))?,
        None => CloudState::open(&state_config, Arc::clone(&router))?,
    };
    if let Some(cluster) = cluster {
        crate::counters::start(cluster, &router).map_err(StartError::Counters)?;
    }
    let metrics = metrics::CloudMetrics::new(router, Arc::clone(state.metrics()));
    let forwarding = match cluster {
        Some(cluster) => Some(crate::forward::Forwarding::new(
            crate::lease::LinkLeases::start(cluster).map_err(StartError::Leases)?,
            cluster.cluster_secret.clone(),
        )),
        None => None,
    };
    let kicks = Arc::clone(state.kicks());
    Ok(Arc::new(App {
        state,
        kicks,
        admin_token_hash: KeyHash::of(&config.admin_token),
        max_databases_per_link: config.max_databases_per_link,
        activity: activity::Activity::default(),
        console: console::ConsoleSessions::default(),
        link_sessions: link_ws::SessionCap::new(config.http.max_link_sessions),
        link_heartbeat: config.http.link_heartbeat,
        heartbeats: crate::heartbeat::HeartbeatPlan::new(
            config.http.link_heartbeat,
            config.http.heartbeat_budget,
        ),
        client_clocks: crate::site_view::ClientClocks::default(),
        metrics,
        jobs,
        forwarding,
    }))
}

/// Opens a cluster node's job store in PostgreSQL and recovers what it owns, on a
/// thread of its own (the store blocks; this may run inside an async task).
fn open_shared_jobs(
    cluster: &crate::cluster::ClusterConfig,
    config: crate::queries::JobsConfig,
) -> Result<crate::queries::Jobs, StartError> {
    let options = cluster.job_options();
    let opened = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let store = crate::queries::pg_store::PgJobStore::open(options)?;
                crate::queries::Jobs::with_store(Arc::new(store), config)
            })
            .join()
    });
    match opened {
        Ok(jobs) => Ok(jobs?),
        Err(_) => Err(StartError::Jobs(
            crate::queries::store::JobStoreError::Unavailable(
                "the thread opening the cluster job store panicked".to_owned(),
            ),
        )),
    }
}

/// A Cloud server running in this process.
#[derive(Debug)]
pub struct RunningCloud {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its state.
    pub app: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl RunningCloud {
    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.handle).await;
    }

    /// Waits until the server stops (for the binary).
    pub async fn wait(self) {
        let _ = self.handle.await;
    }
}

/// Recovers state, binds and serves in the background.
///
/// # Errors
/// [`StartError`] when recovery or binding fails.
pub async fn start(config: CloudConfig) -> Result<RunningCloud, StartError> {
    start_with(config, crate::queries::JobsConfig::default()).await
}

/// [`start`] with the async path's settings.
///
/// # Errors
/// [`StartError`] when recovery or binding fails.
pub async fn start_with(
    config: CloudConfig,
    jobs: crate::queries::JobsConfig,
) -> Result<RunningCloud, StartError> {
    start_cluster(config, jobs, None).await
}

/// [`start_with`] for one node of a cluster when `cluster` is given (see
/// [`build_cluster`]).
///
/// # Errors
/// [`StartError`] when recovery or binding fails.
pub async fn start_cluster(
    config: CloudConfig,
    jobs: crate::queries::JobsConfig,
    cluster: Option<crate::cluster::ClusterConfig>,
) -> Result<RunningCloud, StartError> {
    // Listening before recovery: Links reconnecting after a restart wait in the
    // listen backlog (or have their SYN retried by TCP) until the Cloud accepts,
    // instead of being refused and backing off for up to 30 s each.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let app = build_cluster(&config, jobs, cluster.as_ref())?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let router = routes(Arc::clone(&app));
    let limits = config.http;
    let sweeper_app = Arc::clone(&app);
    let flush_app = Arc::clone(&app);
    let background = crate::queries::spawn_background(&app);
    let handle = tokio::spawn(async move {
        // Times out queries whose owner stopped waiting without cancelling.
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                sweeper_app
                    .state
                    .router()
                    .expire_overdue(crate::clock::now());
            }
        });
        // Writes the denial counts whose sample window has passed (see `activity`).
        let flusher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = crate::clock::now();
                for entry in flush_app.activity.flush(now) {
                    flush_app.state.record_audit(entry, now);
                }
            }
        });
        serve::serve(listener, router, limits, async {
            let _ = rx.await;
        })
        .await;
        sweeper.abort();
        flusher.abort();
        for task in background {
            task.abort();
        }
    });
    Ok(RunningCloud {
        addr,
        app,
        shutdown: Some(tx),
        handle,
    })
}

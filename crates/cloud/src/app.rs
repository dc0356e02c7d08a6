//! The axum application: routes, shared state, the OpenAPI document, and a server
//! that can be started in-process (by the binary, the demo and the tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router as AxumRouter;
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

use crate::state::{CloudState, StateConfig, StateError};
use crate::{admin, integrator, link_ws, openapi};

/// Everything a handler needs.
#[derive(Debug)]
pub struct App {
    /// The state: writer, router, availability settings.
    pub state: CloudState,
    /// SHA-256 of the admin token.
    pub admin_token_hash: KeyHash,
    /// The most databases one Link's hello may announce.
    pub max_databases_per_link: usize,
    /// Revocations, broadcast to live Link sessions.
    pub kicks: link_ws::Kicks,
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
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The HTTP routes over `app`.
pub fn routes(app: AppState) -> AxumRouter {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    AxumRouter::new()
        .route("/integrator/sites", get(integrator::find_sites))
        .route("/integrator/sites/{site_id}", get(integrator::site_status))
        .route("/integrator/pair-site", post(integrator::pair_site))
        .route(
            "/integrator/sites/{site_id}/queries/immediate",
            post(integrator::immediate_query),
        )
        .route(
            "/admin/link-credentials",
            post(admin::issue_link_credential).get(admin::list_link_credentials),
        )
        .route("/admin/link-credentials/{id}/revoke", post(admin::revoke_link_credential))
        .route("/admin/link-credentials/{id}/rotate", post(admin::rotate_link_credential))
        .route("/admin/link-credentials/{id}/scope", post(admin::extend_link_credential_scope))
        .route("/admin/integrators/{integrator}/enable", post(admin::enable_integrator))
        .route("/admin/integrators/{integrator}/components", put(admin::authorise_components))
        .route("/admin/integrators/{integrator}/practices", post(admin::enable_practice))
        .route("/admin/integrators/{integrator}/keys", post(admin::issue_key))
        .route("/admin/policy-events", post(admin::policy_event))
        .route("/admin/sites/{site_id}", get(admin::get_site))
        .route("/admin/sites/{site_id}/promote", post(admin::promote))
        .route("/link/ws", get(link_ws::link_ws))
        .route("/openapi.json", get(|| async { axum::Json(openapi::ApiDoc::openapi()) }))
        .route("/healthz", get(|| async { "ok" }))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(
                    |req: &axum::http::Request<axum::body::Body>| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
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
    let router = Arc::new(Router::new(config.router.clone()));
    let state = CloudState::open(
        &StateConfig {
            data_dir: config.data_dir.clone(),
            snapshot_every: config.snapshot_every,
            availability: config.availability,
            accept_damaged_log: config.accept_damaged_log,
        },
        router,
    )?;
    Ok(Arc::new(App {
        state,
        admin_token_hash: KeyHash::of(&config.admin_token),
        max_databases_per_link: config.max_databases_per_link,
        kicks: link_ws::Kicks::default(),
    }))
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
    let app = build(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let service = routes(Arc::clone(&app)).into_make_service_with_connect_info::<SocketAddr>();
    let sweeper_app = Arc::clone(&app);
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
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        sweeper.abort();
        if let Err(e) = served {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(RunningCloud {
        addr,
        app,
        shutdown: Some(tx),
        handle,
    })
}

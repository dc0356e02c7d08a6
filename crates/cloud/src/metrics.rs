//! Prometheus metrics of one Cloud (`prometheus-client`), served at `GET /metrics`
//! behind the admin token, in the Prometheus text format (0.0.4).
//!
//! Each Cloud has its own registry (no process-global recorder), so several Clouds
//! in one process (the tests, the demo) each report only their own numbers.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `halo_http_requests_total` | counter | `operation`, `status` | requests answered; `operation` is the method and route template (`POST /integrator/sites/{site_id}/queries/immediate`), `unmatched` for unknown routes |
//! | `halo_http_request_duration_seconds` | histogram | `operation` | time to the response head |
//! | `halo_route_denials_total` | counter | `code` | queries refused by policy or routing: the policy's deny code (`practiceNotEnabled`, `rateLimited`, ...), `notActive`, `notAuthoritative`, `unknownSite`, `crnRefused` |
//! | `halo_route_failures_total` | counter | `kind` | allowed queries that failed: `busy`, `unreachable`, `timeout`, `tooLarge`, `cancelled`, `failed`, `invalidRequest` |
//! | `halo_links_attached` | gauge | | Links with a live session |
//! | `halo_link_queue_depth` | gauge | `link_guid` | queries queued for or running on each attached Link |
//! | `halo_link_busy_refusals_total` | counter | `link_guid` | queries refused because that Link's queue was full |
//! | `halo_routable_sites` | gauge | | sites in the route table |
//! | `halo_log_append_duration_seconds` | histogram | | one group commit: encode, insert, commit |
//! | `halo_log_fsync_duration_seconds` | histogram | | the commit (WAL write and fsync) of one group commit |
//! | `halo_log_batch_records` | histogram | | records per group commit |
//! | `halo_log_events_since_snapshot` | gauge | | events logged since the last snapshot |
//! | `halo_snapshot_age_seconds` | gauge | | since the last snapshot this process wrote (absent until one is) |
//! | `halo_runtime_workers` | gauge | | worker threads of the async runtime serving this Cloud (`--workers`) |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use halo_router::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::admin::Admin;
use crate::app::AppState;
use crate::error::{ApiError, RouteOutcome};

/// Seconds, from 0.1 ms to about 6.5 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// What the state writer measures (see `state.rs`): shared by the writer thread
/// and the metrics endpoint.
#[derive(Debug)]
pub struct StateMetrics {
    /// One group commit's append: encoding, inserting and committing.
    pub log_append: Histogram,
    /// The commit (fsync) part of it.
    pub log_fsync: Histogram,
    /// Records per group commit.
    pub batch_records: Histogram,
    /// Events logged since the last snapshot.
    pub since_snapshot: AtomicU64,
    /// When this process last wrote a snapshot, in ms since the Unix epoch (0: never).
    pub last_snapshot_ms: AtomicU64,
}

impl Default for StateMetrics {
    fn default() -> Self {
        Self {
            log_append: latency_buckets(),
            log_fsync: latency_buckets(),
            batch_records: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            since_snapshot: AtomicU64::new(0),
            last_snapshot_ms: AtomicU64::new(0),
        }
    }
}

impl StateMetrics {
    /// Records one durable append of `records` records.
    pub fn appended(&self, records: usize, took: Duration, commit: Option<Duration>) {
        self.log_append.observe(took.as_secs_f64());
        if let Some(commit) = commit {
            self.log_fsync.observe(commit.as_secs_f64());
        }
        #[allow(clippy::cast_precision_loss)] // a batch holds at most 8192 records
        self.batch_records.observe(records as f64);
    }

    /// Records that a snapshot was written now.
    pub fn snapshot_written(&self) {
        self.last_snapshot_ms
            .store(crate::clock::now().as_millis(), Ordering::Relaxed);
    }
}

type Labels = [(&'static str, String); 1];
type LabelPair = [(&'static str, String); 2];

/// The Cloud's metrics and their registry.
#[derive(Debug)]
pub struct CloudMetrics {
    registry: Registry,
    requests: Family<LabelPair, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    denials: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
}

impl CloudMetrics {
    /// A registry with the request metrics, the state's and a collector that reads
    /// the router at each scrape.
    pub fn new(router: Arc<Router>, state: Arc<StateMetrics>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<LabelPair, Counter>::default();
        let latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_buckets);
        let denials = Family::<Labels, Counter>::default();
        let failures = Family::<Labels, Counter>::default();
        registry.register(
            "halo_http_requests",
            "HTTP requests answered, by operation (method and route) and status",
            requests.clone(),
        );
        registry.register_with_unit(
            "halo_http_request_duration",
            "Time to answer a request, by operation",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "halo_route_denials",
            "Queries refused by policy or routing, by code",
            denials.clone(),
        );
        registry.register(
            "halo_route_failures",
            "Allowed queries that failed, by kind",
            failures.clone(),
        );
        registry.register_with_unit(
            "halo_log_append_duration",
            "One group commit of the event log: encode, insert and commit",
            Unit::Seconds,
            state.log_append.clone(),
        );
        registry.register_with_unit(
            "halo_log_fsync_duration",
            "The durable commit (WAL write and fsync) of one group commit",
            Unit::Seconds,
            state.log_fsync.clone(),
        );
        registry.register(
            "halo_log_batch_records",
            "Records per group commit",
            state.batch_records.clone(),
        );
        registry.register_collector(Box::new(Live { router, state }));
        Self {
            registry,
            requests,
            latency,
            denials,
            failures,
        }
    }

    /// Records one answered request.
    fn observe(
        &self,
        operation: String,
        status: u16,
        took: Duration,
        outcome: Option<RouteOutcome>,
    ) {
        self.latency
            .get_or_create(&[("operation", operation.clone())])
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&[("operation", operation), ("status", status.to_string())])
            .inc();
        match outcome {
            Some(RouteOutcome::Denied(code)) => {
                self.denials
                    .get_or_create(&[("code", code.to_owned())])
                    .inc();
            }
            Some(RouteOutcome::Failed(kind)) => {
                self.failures
                    .get_or_create(&[("kind", kind.to_owned())])
                    .inc();
            }
            None => {}
        }
    }

    /// The metrics in the Prometheus text format.
    ///
    /// # Errors
    /// Only if formatting fails (it writes to a `String`).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Values read at each scrape: Links and their queues, the snapshot's age.
#[derive(Debug)]
struct Live {
    router: Arc<Router>,
    state: Arc<StateMetrics>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let loads = self.router.link_loads();
        let attached = loads.iter().filter(|l| l.attached).count();
        gauge(
            &mut encoder,
            "halo_links_attached",
            "Links with a live session",
            attached as i64,
        )?;
        gauge(
            &mut encoder,
            "halo_routable_sites",
            "Sites in the route table",
            self.router.site_count() as i64,
        )?;
        {
            let depth = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "halo_link_queue_depth",
                "Queries queued for or running on each attached Link",
                None,
                depth.metric_type(),
            )?;
            for load in loads.iter().filter(|l| l.attached) {
                let labels = [("link_guid", load.link.to_string())];
                ConstGauge::new(load.in_flight as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let busy = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "halo_link_busy_refusals",
                "Queries refused because the Link's queue was full",
                None,
                busy.metric_type(),
            )?;
            for load in &loads {
                let labels = [("link_guid", load.link.to_string())];
                ConstCounter::new(load.busy_refusals).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut encoder,
            "halo_log_events_since_snapshot",
            "Events logged since the last snapshot",
            i64::try_from(self.state.since_snapshot.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )?;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            gauge(
                &mut encoder,
                "halo_runtime_workers",
                "Worker threads of the async runtime serving this Cloud",
                i64::try_from(runtime.metrics().num_workers()).unwrap_or(i64::MAX),
            )?;
        }
        let last = self.state.last_snapshot_ms.load(Ordering::Relaxed);
        if last > 0 {
            let now = crate::clock::now().as_millis();
            #[allow(clippy::cast_precision_loss)] // milliseconds fit f64 exactly for 285 000 years
            let age = now.saturating_sub(last) as f64 / 1000.0;
            let metric = ConstGauge::new(age);
            let e = encoder.encode_descriptor(
                "halo_snapshot_age",
                "Seconds since this process last wrote a snapshot",
                Some(&Unit::Seconds),
                metric.metric_type(),
            )?;
            metric.encode(e)?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

/// Middleware: counts and times every request by operation and status, and the
/// denials and failures its response carries ([`RouteOutcome`]).
pub async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let operation = request.extensions().get::<MatchedPath>().map_or_else(
        || "unmatched".to_owned(),
        |path| format!("{} {}", request.method(), path.as_str()),
    );
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let outcome = response.extensions().get::<RouteOutcome>().copied();
    app.metrics.observe(
        operation,
        response.status().as_u16(),
        started.elapsed(),
        outcome,
    );
    response
}

/// `GET /metrics`: the Prometheus text, behind the admin token (it names Links and
/// shows traffic per operation; scrape it with `authorization: {credentials_file}`).
pub async fn metrics(_: Admin, State(app): State<AppState>) -> Result<Response, ApiError> {
    let text = app.metrics.render().map_err(|e| ApiError::internal(&e))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

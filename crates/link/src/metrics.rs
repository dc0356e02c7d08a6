//! The Link's own Prometheus metrics (`prometheus-client`), served in the
//! Prometheus text format on the optional `metrics_listen` address of its config
//! (`GET /metrics`; any other path is 404). Bind it to loopback or a management
//! network: it carries no patient data, only counts, but it has no authentication.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `halo_link_jobs_total` | counter | `outcome` | jobs run: `ok`, or the error kind (`timeout`, `database`, `tooLarge`, `cancelled`, `staleEpoch`, `denied`, ...) |
//! | `halo_link_job_duration_seconds` | histogram | | time a job ran on its worker |
//! | `halo_link_refusals_total` | counter | `reason` | jobs refused without running: `queueFull`, `expiredInQueue`, `unknownDatabase`, `duplicateQueryId` |
//! | `halo_link_connected` | gauge | | 1 while a session with the Cloud is open |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

type Labels = [(&'static str, &'static str); 1];

/// The Link's metrics and their registry.
#[derive(Debug)]
pub struct LinkMetrics {
    registry: Registry,
    jobs: Family<Labels, Counter>,
    durations: Histogram,
    refusals: Family<Labels, Counter>,
    connected: Gauge<i64, AtomicI64>,
}

impl Default for LinkMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<Labels, Counter>::default();
        let durations = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let refusals = Family::<Labels, Counter>::default();
        let connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "halo_link_jobs",
            "Jobs run, by outcome (ok or the error kind)",
            jobs.clone(),
        );
        registry.register_with_unit(
            "halo_link_job_duration",
            "Time a job ran on its worker",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register(
            "halo_link_refusals",
            "Jobs refused without running, by reason",
            refusals.clone(),
        );
        registry.register(
            "halo_link_connected",
            "1 while a session with the Cloud is open",
            connected.clone(),
        );
        Self {
            registry,
            jobs,
            durations,
            refusals,
            connected,
        }
    }
}

impl LinkMetrics {
    /// Records a job that ran for `took`, with `outcome` (`ok` or the error kind).
    pub fn job(&self, outcome: &'static str, took: Duration) {
        self.jobs.get_or_create(&[("outcome", outcome)]).inc();
        self.durations.observe(took.as_secs_f64());
    }

    /// Records a job refused without running.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&[("reason", reason)]).inc();
    }

    /// Records whether a session is open.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
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

fn answer(metrics: &LinkMetrics, request: &Request<Incoming>) -> Response<String> {
    let (status, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "not found: GET /metrics\n".to_owned(),
        )
    } else if request.method() != hyper::Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned())
    } else {
        match metrics.render() {
            Ok(text) => (StatusCode::OK, text),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
    }
    response
}

/// Binds `addr` for the metrics endpoint.
///
/// # Errors
/// [`crate::LinkError::Config`] naming the address when it cannot be bound.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::LinkError> {
    TcpListener::bind(addr).await.map_err(|e| {
        crate::LinkError::Config(format!("metrics_listen: cannot listen on {addr}: {e}"))
    })
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<LinkMetrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = answer(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = served.await;
        });
    }
}

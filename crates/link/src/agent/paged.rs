//! Paged jobs (the async path): the result goes back as `resultPage` frames and one
//! `resultEnd`, each page only once the Cloud has granted credit for it, so the
//! Link holds at most one page being built plus the pages in flight.
//!
//! The job runs on the blocking pool like any other ([`super::launch`]) and keeps
//! its worker while it waits for credit, so a slow reader of one database never
//! takes the workers of another: the per-database running cap of the fair queue
//! still applies. A cancel (or the session ending) stops the job while it waits.

use std::sync::Arc;
use std::time::Duration;

use halo_protocol::{
    LinkToCloud, MAX_RESULT_BYTES, QueryError, QueryErrorKind, ResultEnd, ResultPage, StreamJob,
    encode,
};
use tokio::sync::{Semaphore, mpsc};
use tracing::debug;

use super::{Queued, Worker, failed_frame};
use crate::executor::execute_paged;

/// The most pages a Link lets the Cloud leave unacknowledged, whatever it asks.
const MAX_WINDOW: u32 = 64;
/// How often a paged job waiting for credit checks whether it was cancelled.
const CREDIT_POLL: Duration = Duration::from_millis(100);

/// How one paged job sends its pages.
#[derive(Debug, Clone)]
pub(super) struct Paging {
    page_bytes: usize,
    credits: Arc<Semaphore>,
}

impl Paging {
    /// The paging a stream job asks for, within the Link's limits.
    pub(super) fn new(job: &StreamJob) -> Self {
        let page_bytes = usize::try_from(job.page_bytes)
            .unwrap_or(MAX_RESULT_BYTES)
            .clamp(1, MAX_RESULT_BYTES);
        let window = job.window.clamp(1, MAX_WINDOW);
        Self {
            page_bytes,
            credits: Arc::new(Semaphore::new(window as usize)),
        }
    }

    /// The job's credits, which the session loop adds to on each acknowledgement.
    pub(super) fn credits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.credits)
    }
}

/// How many permits an acknowledgement of `pages` may add: never more than the
/// window allows in total, whatever the Cloud sends.
pub(super) fn permits(pages: u32, credits: &Semaphore) -> usize {
    let room = (MAX_WINDOW as usize).saturating_sub(credits.available_permits());
    (pages as usize).min(room)
}

/// Runs a paged job on the blocking pool; its pages and its last frame go to
/// `done` (the last with `true`). The worker is freed once the last frame is handed
/// over.
pub(super) fn launch(
    queued: Queued,
    worker: Worker,
    done: mpsc::Sender<(u64, String, bool)>,
    metrics: std::sync::Arc<crate::metrics::LinkMetrics>,
) {
    let Queued {
        db,
        job,
        control,
        paging,
    } = queued;
    let Some(paging) = paging else {
        return super::launch(
            Queued {
                db,
                job,
                control,
                paging: None,
            },
            worker,
            done,
            metrics,
        );
    };
    let query_id = job.query_id;
    let runtime = tokio::runtime::Handle::current();
    tokio::spawn(async move {
        let pages_done = done.clone();
        let frame = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut page_number = 0u32;
            let mut row_start = 0u64;
            let mut size = 0u64;
            let mut sink = |json: Vec<u8>, rows: u64| -> Result<(), QueryError> {
                wait_for_credit(&runtime, &paging.credits, &control)?;
                page_number += 1;
                size += json.len() as u64;
                let page = ResultPage::from_json(query_id, page_number, row_start, rows, &json);
                drop(json);
                row_start += rows;
                let frame = encode(&LinkToCloud::ResultPage(page))
                    .map_err(|e| QueryError::new(QueryErrorKind::TooLarge, e.to_string()))?;
                pages_done
                    .blocking_send((query_id, frame, false))
                    .map_err(|_| QueryError::new(QueryErrorKind::Cancelled, "the session ended"))
            };
            let result = execute_paged(&db, &job, &control, paging.page_bytes, &mut sink);
            metrics.job(
                match &result {
                    Ok(_) => "ok",
                    Err(e) => super::error_kind_name(e.kind),
                },
                started.elapsed(),
            );
            match result {
                Ok(out) => {
                    let end = LinkToCloud::ResultEnd(ResultEnd {
                        query_id,
                        rows: out.rows,
                        pages: page_number,
                        size,
                        duration_ms: u64::try_from(out.duration.as_millis()).unwrap_or(u64::MAX),
                    });
                    encode(&end).unwrap_or_else(|e| {
                        failed_frame(
                            query_id,
                            QueryError::new(QueryErrorKind::Internal, e.to_string()),
                        )
                    })
                }
                Err(e) => {
                    debug!(query_id, kind = ?e.kind, "paged job failed");
                    failed_frame(query_id, e)
                }
            }
        })
        .await
        .unwrap_or_else(|e| {
            failed_frame(
                query_id,
                QueryError::new(QueryErrorKind::Internal, format!("job panicked: {e}")),
            )
        });
        let _ = done.send((query_id, frame, true)).await;
        drop(worker);
    });
}

/// Blocks (on the blocking pool) until the Cloud grants one more page, the job is
/// cancelled, or the session ends.
fn wait_for_credit(
    runtime: &tokio::runtime::Handle,
    credits: &Semaphore,
    control: &crate::executor::JobControl,
) -> Result<(), QueryError> {
    loop {
        if control.is_cancelled() {
            return Err(QueryError::new(
                QueryErrorKind::Cancelled,
                "query was cancelled",
            ));
        }
        match runtime.block_on(tokio::time::timeout(CREDIT_POLL, credits.acquire())) {
            Ok(Ok(permit)) => {
                permit.forget();
                return Ok(());
            }
            Ok(Err(_closed)) => {
                return Err(QueryError::new(
                    QueryErrorKind::Cancelled,
                    "the session ended",
                ));
            }
            Err(_elapsed) => {}
        }
    }
}

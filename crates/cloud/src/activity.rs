//! What integrators are doing, in memory: request counters per integrator (the
//! console's charts) and route denials, which are **counted** here and **sampled**
//! into the durable audit trail.
//!
//! # Denials: counted, and sampled into the trail
//!
//! Every denial is counted in memory, per integrator and code. The audit trail gets
//! at most one `routeDenied` entry per (integrator, denial code) per sample window
//! (60 s by default): the first denial after a quiet window is written at once, with
//! its site; the denials that follow within the window are only counted, and their
//! number is written when the window has passed (with the next denial, or by the
//! periodic flush, [`Activity::flush`]). Each entry's `count` is the number of
//! denials it stands for, so the counts of a pair's entries add up to every denial
//! of that pair (up to the one window not yet flushed when the process stops).
//!
//! Why sampled rather than one entry each: a denial costs the caller nothing, so a
//! broken client or a prober (unknown keys, guessed Halo GUIDs) could otherwise grow
//! the log at request rate and turn the writer's fsyncs into the bottleneck of every
//! support action. This bounds denial entries by integrators × codes per window
//! (callers without a valid key are one integrator, "unauthenticated") while
//! keeping exact totals.
//!
//! # Request rate
//!
//! Each integrator's requests fall into [`BUCKETS`] buckets of [`BUCKET_SECS`]
//! seconds (the last ten minutes), kept in memory only: a restart starts them at
//! zero. The map holds authenticated integrators (a bounded set, the ones support
//! enabled) and one entry for everything unauthenticated.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use halo_ids::{HaloGuid, Timestamp};
use halo_policy::DenyCode;
use parking_lot::{Mutex, RwLock};

use crate::app::AppState;
use crate::audit::{AuditEntry, AuditKind};
use crate::error::Denied;

/// Seconds per bucket of the request-rate series.
pub const BUCKET_SECS: u64 = 10;
/// Buckets kept per integrator (ten minutes).
pub const BUCKETS: usize = 60;
/// The default denial sample window.
pub const DEFAULT_SAMPLE_WINDOW: Duration = Duration::from_secs(60);
/// The name requests without a valid key are counted under.
pub const UNAUTHENTICATED: &str = "(unauthenticated)";

/// One integrator's counters.
#[derive(Debug, Clone)]
struct Series {
    /// Requests per bucket; `slots[i]` is the bucket number `counts[i]` holds.
    counts: [u64; BUCKETS],
    slots: [u64; BUCKETS],
    total: u64,
    denied: u64,
    by_code: HashMap<&'static str, u64>,
}

impl Series {
    fn new() -> Self {
        Self {
            counts: [0; BUCKETS],
            slots: [u64::MAX; BUCKETS],
            total: 0,
            denied: 0,
            by_code: HashMap::new(),
        }
    }

    fn add(&mut self, now: Timestamp, denial: Option<DenyCode>) {
        let bucket = now.as_millis() / 1000 / BUCKET_SECS;
        let i = (bucket % BUCKETS as u64) as usize;
        if self.slots[i] != bucket {
            self.slots[i] = bucket;
            self.counts[i] = 0;
        }
        self.counts[i] += 1;
        self.total += 1;
        if let Some(code) = denial {
            self.denied += 1;
            *self.by_code.entry(code.as_str()).or_default() += 1;
        }
    }

    /// Requests per bucket over the last [`BUCKETS`] buckets, oldest first.
    fn recent(&self, now: Timestamp) -> Vec<u64> {
        let current = now.as_millis() / 1000 / BUCKET_SECS;
        (0..BUCKETS as u64)
            .rev()
            .map(|back| {
                let bucket = current.saturating_sub(back);
                let i = (bucket % BUCKETS as u64) as usize;
                if back <= current && self.slots[i] == bucket {
                    self.counts[i]
                } else {
                    0
                }
            })
            .collect()
    }
}

/// What the console shows of one integrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegratorActivity {
    /// The integrator, or [`UNAUTHENTICATED`].
    pub integrator: String,
    /// Requests per [`BUCKET_SECS`]-second bucket, the last [`BUCKETS`], oldest first.
    pub recent: Vec<u64>,
    /// Requests since the Cloud started.
    pub total: u64,
    /// Denials since the Cloud started.
    pub denied: u64,
    /// Denials by code since the Cloud started, sorted by code.
    pub by_code: Vec<(&'static str, u64)>,
}

/// The denial sampler's state for one (integrator, code).
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When an entry was last written.
    written: Timestamp,
    /// Denials counted since then, not yet in the trail.
    pending: u64,
}

/// Request counters and the denial sampler, shared by every request.
#[derive(Debug)]
pub struct Activity {
    series: RwLock<HashMap<String, Arc<Mutex<Series>>>>,
    samples: Mutex<HashMap<(String, &'static str), Sample>>,
    window_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            series: RwLock::new(HashMap::new()),
            samples: Mutex::new(HashMap::new()),
            window_ms: AtomicU64::new(DEFAULT_SAMPLE_WINDOW.as_millis() as u64),
        }
    }
}

impl Activity {
    /// Sets the denial sample window (tests and operators; at least 1 ms).
    pub fn set_sample_window(&self, window: Duration) {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        self.window_ms.store(ms, Ordering::Relaxed);
    }

    fn window(&self) -> u64 {
        self.window_ms.load(Ordering::Relaxed)
    }

    /// Counts one integrator request that ended at `now`, denied with `denial` if it
    /// was; answers the audit entry to write when the sampler says so.
    pub fn observe(
        &self,
        integrator: Option<&str>,
        denial: Option<DenyCode>,
        site: Option<HaloGuid>,
        now: Timestamp,
    ) -> Option<AuditEntry> {
        let name = integrator.unwrap_or(UNAUTHENTICATED);
        let series = self.series.read().get(name).cloned();
        let series = match series {
            Some(s) => s,
            None => Arc::clone(
                self.series
                    .write()
                    .entry(name.to_owned())
                    .or_insert_with(|| Arc::new(Mutex::new(Series::new()))),
            ),
        };
        series.lock().add(now, denial);
        let code = denial?;
        let mut samples = self.samples.lock();
        let sample = samples
            .entry((name.to_owned(), code.as_str()))
            .or_insert(Sample {
                written: Timestamp::UNIX_EPOCH,
                pending: 0,
            });
        sample.pending += 1;
        if sample.written != Timestamp::UNIX_EPOCH
            && now.as_millis().saturating_sub(sample.written.as_millis()) < self.window()
        {
            return None;
        }
        let count = std::mem::take(&mut sample.pending);
        sample.written = now;
        Some(denial_entry(integrator, code.as_str(), site, count, true))
    }

    /// The entries for denials counted but not yet written whose window has passed
    /// (call periodically; the server does every few seconds).
    pub fn flush(&self, now: Timestamp) -> Vec<AuditEntry> {
        let window = self.window();
        let mut samples = self.samples.lock();
        samples
            .iter_mut()
            .filter(|(_, s)| {
                s.pending > 0 && now.as_millis().saturating_sub(s.written.as_millis()) >= window
            })
            .map(|((name, code), s)| {
                let count = std::mem::take(&mut s.pending);
                s.written = now;
                let integrator = (name != UNAUTHENTICATED).then_some(name.as_str());
                denial_entry(integrator, code, None, count, false)
            })
            .collect()
    }

    /// Every integrator's activity, sorted by name.
    pub fn snapshot(&self, now: Timestamp) -> Vec<IntegratorActivity> {
        let series: Vec<(String, Arc<Mutex<Series>>)> = self
            .series
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let mut out: Vec<IntegratorActivity> = series
            .into_iter()
            .map(|(integrator, s)| {
                let s = s.lock();
                let mut by_code: Vec<(&'static str, u64)> =
                    s.by_code.iter().map(|(k, v)| (*k, *v)).collect();
                by_code.sort_unstable();
                IntegratorActivity {
                    integrator,
                    recent: s.recent(now),
                    total: s.total,
                    denied: s.denied,
                    by_code,
                }
            })
            .collect();
        out.sort_by(|a, b| a.integrator.cmp(&b.integrator));
        out
    }
}

fn denial_entry(
    integrator: Option<&str>,
    code: &str,
    site: Option<HaloGuid>,
    count: u64,
    first: bool,
) -> AuditEntry {
    let who = integrator.unwrap_or("a caller without a valid key");
    let detail = if first {
        format!("{who} denied: {code} (sampled; count is the denials this entry stands for)")
    } else {
        format!("{who} denied {count} more time(s): {code} (within the sample window)")
    };
    AuditEntry {
        actor: integrator.map(str::to_owned),
        integrator: integrator.map(str::to_owned),
        halo_guid: site,
        code: Some(code.to_owned()),
        count: Some(count),
        ..AuditEntry::new(AuditKind::RouteDenied, detail)
    }
}

/// The Halo GUID an integrator path names, if it names one that parses.
fn path_site(path: &str) -> Option<HaloGuid> {
    let rest = path.strip_prefix("/integrator/sites/")?;
    rest.split('/').next()?.parse().ok()
}

tokio::task_local! {
    /// The integrator the handler authenticated, handed to [`observe_integrators`]
    /// (set through [`note_integrator`]), so a request is authenticated once.
    static AUTHENTICATED: std::cell::RefCell<Option<String>>;
}

/// Records, for the middleware around this request, which integrator the handler
/// authenticated. Outside the middleware (a background runner) it does nothing.
pub(crate) fn note_integrator(who: &halo_policy::Authenticated) {
    let _ = AUTHENTICATED.try_with(|slot| *slot.borrow_mut() = Some(who.integrator().to_string()));
}

/// Middleware over every route: for integrator requests, counts the request under
/// its integrator and samples a denial into the audit trail (see the module docs).
/// The audit write is queued, never awaited: the answer is not delayed.
pub async fn observe_integrators(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/integrator/") {
        return next.run(request).await;
    }
    let site = path_site(path);
    // The handler authenticates; the middleware only reads who it found.
    let (integrator, response) = AUTHENTICATED
        .scope(std::cell::RefCell::new(None), async {
            let response = next.run(request).await;
            (
                AUTHENTICATED.with(|slot| slot.borrow_mut().take()),
                response,
            )
        })
        .await;
    let denial = response.extensions().get::<Denied>().map(|d| d.0);
    let now = crate::clock::now();
    if let Some(entry) = app
        .activity
        .observe(integrator.as_deref(), denial, site, now)
    {
        app.state.record_audit(entry, now);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(T0 + ms)
    }

    /// However many denials arrive, a pair gets at most one entry per window, and
    /// the counts of its entries add up to every denial.
    #[test]
    fn denials_are_sampled_per_window_and_their_counts_add_up() {
        let a = Activity::default();
        let mut entries = Vec::new();
        let mut sent = 0;
        for ms in (0..180_000).step_by(250) {
            sent += 1;
            entries.extend(a.observe(Some("acme"), Some(DenyCode::NotPaired), None, at(ms)));
            entries.extend(a.flush(at(ms)));
        }
        entries.extend(a.flush(at(240_000)));
        // 180 s of denials, four a second: windows starting at 0, 60, 120 s, and
        // the flush of the last one.
        assert!(entries.len() <= 4, "{} entries", entries.len());
        assert!(entries.len() >= 3);
        let total: u64 = entries.iter().map(|e| e.count.unwrap()).sum();
        assert_eq!(total, sent);
        assert!(entries.iter().all(|e| e.kind == AuditKind::RouteDenied
            && e.code.as_deref() == Some("notPaired")
            && e.integrator.as_deref() == Some("acme")));
    }

    #[test]
    fn pairs_are_sampled_apart_and_allowed_requests_are_only_counted() {
        let a = Activity::default();
        assert!(a.observe(Some("acme"), None, None, at(0)).is_none());
        assert!(
            a.observe(Some("acme"), Some(DenyCode::NotPaired), None, at(1))
                .is_some()
        );
        assert!(
            a.observe(Some("acme"), Some(DenyCode::UnknownSite), None, at(2))
                .is_some()
        );
        assert!(
            a.observe(None, Some(DenyCode::UnknownKey), None, at(3))
                .is_some()
        );
        assert!(
            a.observe(None, Some(DenyCode::UnknownKey), None, at(4))
                .is_none()
        );
        let snap = a.snapshot(at(5));
        let acme = snap.iter().find(|s| s.integrator == "acme").unwrap();
        assert_eq!((acme.total, acme.denied), (3, 2));
        assert_eq!(acme.recent.iter().sum::<u64>(), 3);
        assert_eq!(*acme.recent.last().unwrap(), 3, "the newest bucket is last");
        let anon = snap
            .iter()
            .find(|s| s.integrator == UNAUTHENTICATED)
            .unwrap();
        assert_eq!(anon.by_code, vec![("unknownKey", 2)]);
    }

    #[test]
    fn old_buckets_fall_out_of_the_series() {
        let a = Activity::default();
        a.observe(Some("acme"), None, None, at(0));
        let later = at(BUCKET_SECS * 1000 * BUCKETS as u64 + 1);
        a.observe(Some("acme"), None, None, later);
        let snap = a.snapshot(later);
        assert_eq!(snap[0].recent.iter().sum::<u64>(), 1);
        assert_eq!(snap[0].total, 2);
    }

    #[test]
    fn the_site_is_read_from_integrator_paths() {
        let g = "8e1a5a4e-2f6b-4c2d-9f7e-3c1b2a4d5e6f";
        assert!(path_site(&format!("/integrator/sites/{g}/queries/immediate")).is_some());
        assert!(path_site(&format!("/integrator/sites/{g}")).is_some());
        assert!(path_site("/integrator/sites").is_none());
        assert!(path_site("/integrator/sites/nope").is_none());
    }
}

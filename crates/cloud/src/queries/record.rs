//! The stored record of an async query and its JSON in Halo's shape (the
//! `AsyncQuery*` schemas of the integrator document: one per status).

use std::net::IpAddr;

use halo_ids::{ExecutionMode, Timestamp};
use halo_policy::KeyHash;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::store::PageMeta;
use crate::dto::rfc3339;

/// An async query's status, as the document names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AsyncStatus {
    /// Accepted, being set up.
    Initialising,
    /// Could not be stored.
    InitialisationFailedCacheError,
    /// The site's Link was not connected when the query was submitted.
    InitialisationFailedSiteOffline,
    /// The site's Link has not been heard from recently.
    InitialisationFailedSiteUnreachable,
    /// Waiting for the site.
    Queued,
    /// Did not start within `maxTimeInQueue`.
    ExpiredInQueue,
    /// Running at the site.
    Executing,
    /// Failed at the site (or its deadline passed).
    ExecutionFailed,
    /// Results are arriving page by page.
    Uploading,
    /// Results could not be stored or the site went away mid-upload.
    UploadFailed,
    /// Every page is stored.
    Successful,
}

impl AsyncStatus {
    /// Whether the query has ended (nothing changes it any more).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::Initialising | Self::Queued | Self::Executing | Self::Uploading
        )
    }

    /// The status's name in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initialising => "initialising",
            Self::InitialisationFailedCacheError => "initialisationFailedCacheError",
            Self::InitialisationFailedSiteOffline => "initialisationFailedSiteOffline",
            Self::InitialisationFailedSiteUnreachable => "initialisationFailedSiteUnreachable",
            Self::Queued => "queued",
            Self::ExpiredInQueue => "expiredInQueue",
            Self::Executing => "executing",
            Self::ExecutionFailed => "executionFailed",
            Self::Uploading => "uploading",
            Self::UploadFailed => "uploadFailed",
            Self::Successful => "successful",
        }
    }
}

/// When a query entered and left one status (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Entered.
    pub start: Option<u64>,
    /// Left.
    pub end: Option<u64>,
}

/// The status timings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Initialising.
    pub initialising: Span,
    /// Queued.
    pub queued: Span,
    /// Executing.
    pub executing: Span,
    /// Uploading.
    pub uploading: Span,
}

/// The command, as accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCommand {
    /// SQL text.
    pub text: String,
    /// Execution mode.
    pub mode: ExecutionMode,
    /// Parameters, as given.
    #[serde(default)]
    pub parameters: Vec<Value>,
    /// The catalogue named, if any.
    #[serde(default)]
    pub catalogue: Option<String>,
}

/// Who submitted a query (or registered one), as routing it again needs it: the
/// SHA-256 of the subscription key it presented (never the key) and its address
/// (for a Production IP allowlist). The policy of the moment decides every
/// dispatch again from these (`halo_policy::evaluate_stored`): a key revoked or a
/// grant withdrawn since denies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredCaller {
    /// SHA-256 of the key, 64 lowercase hex digits.
    pub key_hash: String,
    /// The caller's address when it submitted.
    #[serde(default)]
    pub caller_ip: Option<IpAddr>,
}

impl StoredCaller {
    /// The caller presenting `key` from `ip`.
    pub fn of(key: &str, ip: Option<IpAddr>) -> Self {
        Self {
            key_hash: KeyHash::of(key).to_string(),
            caller_ip: ip,
        }
    }

    /// The key's hash (`None` if the stored text is damaged).
    pub fn key_hash(&self) -> Option<KeyHash> {
        self.key_hash.parse().ok()
    }
}

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredError {
    /// The database's code, or the HTTP status the immediate path would answer.
    pub code: i64,
    /// The message.
    pub message: String,
}

/// One async query, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsyncRecord {
    /// The query id (a UUID).
    pub id: String,
    /// The integrator that submitted it.
    pub integrator: String,
    /// The key's environment (`stage` / `production`).
    pub environment: String,
    /// The site's Halo GUID.
    pub site: String,
    /// `async`, or `registered` for an occurrence of a registered query.
    pub source: String,
    /// The registered query this is an occurrence of.
    #[serde(default)]
    pub registered_id: Option<String>,
    /// Where it is.
    pub status: AsyncStatus,
    /// `maxTimeInQueue` in ms.
    pub max_time_in_queue: u64,
    /// Bytes of SQL text.
    pub command_size: u64,
    /// Bytes of the request body.
    pub request_size: u64,
    /// Accepted (ms).
    pub created_at: u64,
    /// Last changed (ms).
    pub updated_at: u64,
    /// Status timings.
    pub timing: Timing,
    /// The command.
    pub command: StoredCommand,
    /// Time the database spent, in ms, once known.
    #[serde(default)]
    pub sql_execution_ms: Option<u64>,
    /// Rows returned (or changed, for `nonQuery`).
    #[serde(default)]
    pub rows: u64,
    /// Bytes of JSON over all pages.
    #[serde(default)]
    pub size: u64,
    /// The stored pages.
    #[serde(default)]
    pub pages: Vec<PageMeta>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<StoredError>,
    /// Ended (ms).
    #[serde(default)]
    pub completed_at: Option<u64>,
    /// When its results stop being readable (ms).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Who submitted it, for routing it again after a restart (`None` in records
    /// written before callers were stored: those cannot be routed again).
    #[serde(default)]
    pub caller: Option<StoredCaller>,
}

fn time(ms: u64) -> Value {
    Value::String(rfc3339(Timestamp::from_millis(ms)))
}

fn span(s: Span, required_start: bool) -> Option<Value> {
    if s.start.is_none() && s.end.is_none() && !required_start {
        return None;
    }
    let mut m = Map::new();
    if let Some(start) = s.start {
        m.insert("startTime".into(), time(start));
    }
    if let Some(end) = s.end {
        m.insert("endTime".into(), time(end));
    }
    Some(Value::Object(m))
}

/// A page as the document lists it in `result.pages`.
pub fn page_json(p: &PageMeta) -> Value {
    json!({
        "pageNumber": p.page_number,
        "status": "cached",
        "size": p.size,
        "rows": {
            "count": p.rows,
            "rangeStart": p.row_start,
            "rangeEnd": range_end(p),
        },
    })
}

/// The index of a page's last row (its first for an empty page).
pub fn range_end(p: &PageMeta) -> u64 {
    (p.row_start + p.rows).saturating_sub(1).max(p.row_start)
}

impl AsyncRecord {
    /// The record as the document's `AsyncQuery` of its status.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        // Halo's `integratorId` is a UUID: the integrator's stable one, as the
        // immediate path answers it.
        let integrator_id = self
            .integrator
            .parse::<halo_policy::IntegratorId>()
            .map_or_else(
                |_| self.integrator.clone(),
                |i| crate::integrator::integrator_uuid(&i).to_string(),
            );
        m.insert("integratorId".into(), json!(integrator_id));
        m.insert("siteId".into(), json!(self.site));
        m.insert("mode".into(), json!("async"));
        m.insert("status".into(), json!(self.status.as_str()));
        m.insert("maxTimeInQueue".into(), json!(self.max_time_in_queue));
        m.insert("commandSize".into(), json!(self.command_size));
        m.insert("requestSize".into(), json!(self.request_size));
        m.insert("createdAt".into(), time(self.created_at));
        m.insert("updatedAt".into(), time(self.updated_at));
        let mut timing = Map::new();
        let init = Span {
            start: self.timing.initialising.start.or(Some(self.created_at)),
            ..self.timing.initialising
        };
        if let Some(v) = span(init, true) {
            timing.insert("initialising".into(), v);
        }
        for (name, s) in [
            ("queued", self.timing.queued),
            ("executing", self.timing.executing),
            ("uploading", self.timing.uploading),
        ] {
            if let Some(v) = span(s, false) {
                timing.insert(name.into(), v);
            }
        }
        m.insert("statusTiming".into(), Value::Object(timing));
        let status = self.status;
        if matches!(
            status,
            AsyncStatus::Uploading | AsyncStatus::Successful | AsyncStatus::UploadFailed
        ) {
            m.insert(
                "metrics".into(),
                json!({"sqlExecutionDuration": self.sql_execution_ms.unwrap_or(0)}),
            );
        }
        if status == AsyncStatus::Successful {
            let pages: Vec<Value> = self.pages.iter().map(page_json).collect();
            let result = if self.command.mode == ExecutionMode::NonQuery {
                json!({"rowsAffected": self.rows, "size": self.size, "pages": pages})
            } else {
                json!({"rows": self.rows, "size": self.size, "pages": pages})
            };
            m.insert("result".into(), result);
            m.insert("resultSize".into(), json!(self.size));
        }
        if status.is_terminal() {
            m.insert(
                "completedAt".into(),
                time(self.completed_at.unwrap_or(self.updated_at)),
            );
        }
        if matches!(
            status,
            AsyncStatus::ExecutionFailed | AsyncStatus::UploadFailed
        ) {
            let (code, message) = self
                .error
                .as_ref()
                .map_or((500, "the query failed"), |e| (e.code, e.message.as_str()));
            m.insert("errorCode".into(), json!(code));
            m.insert("errorMessage".into(), json!(message));
        }
        Value::Object(m)
    }

    /// Moves to `status` at `at`, closing the span of the status it leaves and
    /// opening the next one's.
    pub fn enter(&mut self, status: AsyncStatus, at: u64) {
        let close = |s: &mut Span| {
            if s.start.is_some() && s.end.is_none() {
                s.end = Some(at);
            }
        };
        close(&mut self.timing.initialising);
        close(&mut self.timing.queued);
        close(&mut self.timing.executing);
        close(&mut self.timing.uploading);
        let open = match status {
            AsyncStatus::Queued => Some(&mut self.timing.queued),
            AsyncStatus::Executing => Some(&mut self.timing.executing),
            AsyncStatus::Uploading => Some(&mut self.timing.uploading),
            _ => None,
        };
        if let Some(s) = open {
            s.start = Some(at);
        }
        self.status = status;
        self.updated_at = at;
        if status.is_terminal() {
            self.completed_at = Some(at);
        }
    }
}

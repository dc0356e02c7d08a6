//! The Link's TOML configuration: parsed raw, then validated into [`LinkConfig`].
//!
//! ```toml
//! cloud_url = "ws://127.0.0.1:8080/link/ws"
//! # or, for a Cloud of several nodes without a load balancer, every node's URL
//! # (tried in turn: the next one after each lost or failed connection):
//! # cloud_urls = ["ws://10.0.0.11:8080/link/ws", "ws://10.0.0.12:8080/link/ws"]
//! environment = "stage"
//! token = "link-secret"
//! state_file = "halo-link-state.json"
//! heartbeat_secs = 10          # optional, 1..=300, default 10
//! max_concurrent_jobs = 8      # optional, 1..=256, default 8
//! max_running_per_database = 7 # optional, 1..=256; default all workers but one
//!                              # when several databases are served
//! max_queued_per_database = 64 # optional, 1..=4096, default 64
//! silence_secs = 30            # optional, 5..=3600, default 30
//! sql_max_value_mib = 16       # optional, 1..=1024, default 16: longest string or blob
//! sql_heap_limit_mib = 256     # optional, 16..=65536, default 256: SQLite's whole heap
//! metrics_listen = "127.0.0.1:9101" # optional: serve Prometheus metrics at GET /metrics
//!
//! [[procedures]]               # optional: named commands offered on every database
//! name = "GetPatient"
//! text = "SELECT patient_id, first_name FROM patients WHERE patient_id = @id"
//!
//! [[databases]]
//! path = "practice.sqlite"
//! [[databases.procedures]]     # optional: this database's own (wins over a global one)
//! name = "CountPatients"
//! text = "SELECT count(*) AS n FROM patients"
//! ```
//!
//! Procedures are the Link's stored procedures (`command.type: storedProcedure`);
//! see [`crate::Procedures`].
//!
//! Relative paths are resolved against the config file's directory. The config names
//! only *where* databases are: their identity (CRNs, practice name, demo flag) is read
//! from each database, so a wrong config cannot turn a demo copy into a practice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use halo_ids::Environment;
use serde::Deserialize;

use crate::LinkError;
use crate::executor::SqlLimits;
use crate::procedure::{ProcedureConfig, Procedures};

/// The validated configuration of one Link.
///
/// Build it with [`LinkConfig::new`] (in-process use) or [`LinkConfig::load`].
#[derive(Clone)]
pub struct LinkConfig {
    /// The Cloud's WebSocket endpoint (`ws://` or `wss://`), used as given.
    pub cloud_url: String,
    /// Further endpoints of the same Cloud (its other nodes): after a lost or
    /// failed connection the Link tries the next one, in turn, with the same
    /// backoff. Empty by default.
    pub fallback_cloud_urls: Vec<String>,
    /// Stage or Production; a Production Link refuses demo databases.
    pub environment: Environment,
    /// The Link's credential, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Where the Link GUID and Halo GUIDs are kept; deleting it is a reinstall.
    pub state_file: PathBuf,
    /// The database files to serve.
    pub databases: Vec<PathBuf>,
    /// Heartbeat period (the Cloud may override it in its hello ack).
    pub heartbeat_interval: Duration,
    /// Jobs run at once, all databases together; more wait in their database's
    /// queue, served round-robin across databases.
    pub max_concurrent_jobs: usize,
    /// Jobs of one database run at once; `None`: all workers but one when several
    /// databases are served, so one practice never holds every worker.
    pub max_running_per_database: Option<usize>,
    /// Jobs of one database waiting for a worker; beyond it the Link answers `busy`.
    pub max_queued_per_database: usize,
    /// First reconnect delay; doubles per failed attempt, with jitter.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// A session with no frame from the Cloud (not even a pong to the Link's
    /// pings) for this long, or three heartbeat periods if longer, is dropped.
    pub silence_limit: Duration,
    /// Limits on every database connection: longest value and SQLite's heap.
    pub sql_limits: SqlLimits,
    /// Where to serve the Link's Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Named procedures (`command.type: storedProcedure`), global or per database.
    pub procedures: Vec<ProcedureConfig>,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("cloud_url", &self.cloud_url)
            .field("fallback_cloud_urls", &self.fallback_cloud_urls)
            .field("environment", &self.environment)
            .field("token", &"<redacted>")
            .field("state_file", &self.state_file)
            .field("databases", &self.databases)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("max_concurrent_jobs", &self.max_concurrent_jobs)
            .field("max_running_per_database", &self.max_running_per_database)
            .field("max_queued_per_database", &self.max_queued_per_database)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("silence_limit", &self.silence_limit)
            .field("sql_limits", &self.sql_limits)
            .field("metrics_listen", &self.metrics_listen)
            .field("procedures", &self.procedures)
            .finish()
    }
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    cloud_url: Option<String>,
    #[serde(default)]
    cloud_urls: Vec<String>,
    environment: String,
    token: String,
    state_file: PathBuf,
    #[serde(default)]
    heartbeat_secs: Option<u64>,
    #[serde(default)]
    max_concurrent_jobs: Option<usize>,
    #[serde(default)]
    max_running_per_database: Option<usize>,
    #[serde(default)]
    max_queued_per_database: Option<usize>,
    #[serde(default)]
    silence_secs: Option<u64>,
    #[serde(default)]
    sql_max_value_mib: Option<u32>,
    #[serde(default)]
    sql_heap_limit_mib: Option<u64>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    procedures: Vec<RawProcedure>,
    #[serde(default)]
    databases: Vec<RawDatabase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: PathBuf,
    #[serde(default)]
    procedures: Vec<RawProcedure>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcedure {
    name: String,
    text: String,
}

impl LinkConfig {
    /// A config with the default heartbeat (10 s), concurrency (8; per database
    /// all but one when several are served), queue (64 per database), backoff
    /// (250 ms doubling to 30 s), silence limit (30 s) and SQL limits
    /// ([`SqlLimits::default`]).
    pub fn new(
        cloud_url: impl Into<String>,
        environment: Environment,
        token: impl Into<String>,
        state_file: impl Into<PathBuf>,
        databases: Vec<PathBuf>,
    ) -> Self {
        Self {
            cloud_url: cloud_url.into(),
            fallback_cloud_urls: Vec::new(),
            environment,
            token: token.into(),
            state_file: state_file.into(),
            databases,
            heartbeat_interval: Duration::from_secs(10),
            max_concurrent_jobs: 8,
            max_running_per_database: None,
            max_queued_per_database: 64,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            silence_limit: Duration::from_secs(30),
            sql_limits: SqlLimits::default(),
            metrics_listen: None,
            procedures: Vec::new(),
        }
    }

    /// Reads and validates a TOML config file.
    ///
    /// # Errors
    ///
    /// [`LinkError::Config`] if the file cannot be read or is invalid.
    pub fn load(path: &Path) -> Result<Self, LinkError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LinkError::Config(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base)
    }

    /// Parses and validates TOML text; relative paths are resolved against `base_dir`.
    ///
    /// # Errors
    ///
    /// [`LinkError::Config`] naming the field and the rule broken.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, LinkError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| LinkError::Config(e.message().to_owned()))?;
        let environment: Environment = raw
            .environment
            .parse()
            .map_err(|e| LinkError::Config(format!("environment: {e}")))?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base_dir.join(p) };
        let mut procedures: Vec<ProcedureConfig> = raw
            .procedures
            .into_iter()
            .map(|p| ProcedureConfig {
                name: p.name,
                text: p.text,
                database: None,
            })
            .collect();
        let mut databases = Vec::with_capacity(raw.databases.len());
        for d in raw.databases {
            let path = resolve(d.path);
            procedures.extend(d.procedures.into_iter().map(|p| ProcedureConfig {
                name: p.name,
                text: p.text,
                database: Some(path.clone()),
            }));
            databases.push(path);
        }
        let mut urls = raw.cloud_url.into_iter().chain(raw.cloud_urls);
        let Some(cloud_url) = urls.next() else {
            return Err(LinkError::Config(
                "cloud_url (or cloud_urls) is required".into(),
            ));
        };
        let fallback_cloud_urls: Vec<String> = urls.collect();
        let mut config = Self::new(
            cloud_url,
            environment,
            raw.token,
            resolve(raw.state_file),
            databases,
        );
        config.procedures = procedures;
        config.fallback_cloud_urls = fallback_cloud_urls;
        if let Some(secs) = raw.heartbeat_secs {
            if !(1..=300).contains(&secs) {
                return Err(LinkError::Config(format!(
                    "heartbeat_secs must be 1 to 300, got {secs}"
                )));
            }
            config.heartbeat_interval = Duration::from_secs(secs);
        }
        if let Some(n) = raw.max_concurrent_jobs {
            if !(1..=256).contains(&n) {
                return Err(LinkError::Config(format!(
                    "max_concurrent_jobs must be 1 to 256, got {n}"
                )));
            }
            config.max_concurrent_jobs = n;
        }
        if let Some(n) = raw.max_running_per_database {
            config.max_running_per_database = Some(n);
        }
        if let Some(n) = raw.max_queued_per_database {
            config.max_queued_per_database = n;
        }
        if let Some(secs) = raw.silence_secs {
            if !(5..=3600).contains(&secs) {
                return Err(LinkError::Config(format!(
                    "silence_secs must be 5 to 3600, got {secs}"
                )));
            }
            config.silence_limit = Duration::from_secs(secs);
        }
        if let Some(mib) = raw.sql_max_value_mib {
            if !(1..=1024).contains(&mib) {
                return Err(LinkError::Config(format!(
                    "sql_max_value_mib must be 1 to 1024, got {mib}"
                )));
            }
            config.sql_limits.max_value_bytes = mib * 1024 * 1024;
        }
        if let Some(mib) = raw.sql_heap_limit_mib {
            if !(16..=65536).contains(&mib) {
                return Err(LinkError::Config(format!(
                    "sql_heap_limit_mib must be 16 to 65536, got {mib}"
                )));
            }
            config.sql_limits.heap_limit_bytes = mib * 1024 * 1024;
        }
        if let Some(addr) = raw.metrics_listen {
            config.metrics_listen = Some(addr.parse().map_err(|e| {
                LinkError::Config(format!(
                    "metrics_listen must be an address such as 127.0.0.1:9101, got {addr:?}: {e}"
                ))
            })?);
        }
        config.validate()?;
        Ok(config)
    }

    /// Every Cloud endpoint: [`Self::cloud_url`] first, then the fallbacks.
    pub fn cloud_urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.cloud_url.as_str())
            .chain(self.fallback_cloud_urls.iter().map(String::as_str))
    }

    fn validate_url(&self, url: &str) -> Result<(), LinkError> {
        let rest = if let Some(rest) = url.strip_prefix("wss://") {
            rest
        } else if let Some(rest) = url.strip_prefix("ws://") {
            if self.environment == Environment::Production && !is_loopback(rest) {
                return Err(LinkError::Config(
                    "cloud_url: a production link needs wss:// (plain ws:// only to loopback)"
                        .into(),
                ));
            }
            rest
        } else {
            return Err(LinkError::Config(
                "cloud_url must start with ws:// or wss://".into(),
            ));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(LinkError::Config("cloud_url has no host".into()));
        }
        Ok(())
    }

    /// Checks the rules that hold however the config was built.
    ///
    /// # Errors
    ///
    /// [`LinkError::Config`] naming the field and the rule broken.
    pub fn validate(&self) -> Result<(), LinkError> {
        for url in self.cloud_urls() {
            self.validate_url(url)?;
        }
        if self.token.is_empty() {
            return Err(LinkError::Config("token must not be empty".into()));
        }
        if !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(LinkError::Config(
                "token must be printable ascii without spaces".into(),
            ));
        }
        if self.databases.is_empty() {
            return Err(LinkError::Config(
                "databases: at least one [[databases]] entry is needed".into(),
            ));
        }
        if self.max_concurrent_jobs == 0 {
            return Err(LinkError::Config(
                "max_concurrent_jobs must be at least 1".into(),
            ));
        }
        if self
            .max_running_per_database
            .is_some_and(|n| !(1..=256).contains(&n))
        {
            return Err(LinkError::Config(
                "max_running_per_database must be 1 to 256".into(),
            ));
        }
        if !(1..=4096).contains(&self.max_queued_per_database) {
            return Err(LinkError::Config(
                "max_queued_per_database must be 1 to 4096".into(),
            ));
        }
        if self.sql_limits.max_value_bytes == 0 || self.sql_limits.heap_limit_bytes == 0 {
            return Err(LinkError::Config("sql limits must not be zero".into()));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(LinkError::Config(
                "heartbeat interval must not be zero".into(),
            ));
        }
        for db in &self.databases {
            self.procedures_for(db)?;
        }
        Ok(())
    }
}

/// Whether the authority part of a URL (after the scheme) names a loopback host.
fn is_loopback(rest: &str) -> bool {
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl LinkConfig {
    /// The procedures `database` (one of [`LinkConfig::databases`]) offers.
    ///
    /// # Errors
    ///
    /// [`LinkError::Config`] naming a procedure that is invalid.
    pub fn procedures_for(&self, database: &Path) -> Result<Procedures, LinkError> {
        Procedures::for_database(&self.procedures, database)
    }

    /// Jobs of one database that may run at once when `databases` are served:
    /// [`LinkConfig::max_running_per_database`] if set (at most
    /// `max_concurrent_jobs`), else all workers but one when several databases
    /// are served, else all of them.
    pub fn running_per_database(&self, databases: usize) -> usize {
        let all = self.max_concurrent_jobs.max(1);
        match self.max_running_per_database {
            Some(n) => n.clamp(1, all),
            None if databases > 1 => (all - 1).max(1),
            None => all,
        }
    }
}

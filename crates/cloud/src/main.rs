//! `halo-cloud`: the Cloud server. The demo is the `halo-demo` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};
use halo_cloud::{CloudConfig, HttpLimits};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;

/// mimalloc rather than glibc's malloc: glibc's malloc and free were about a tenth
/// of the Cloud's samples on the query path, and with thousands of Link sessions'
/// buffers freed and reused it walked ever longer free lists there (PERFORMANCE.md,
/// "Whole path" and "Many Links on one node").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Halo Connect Cloud.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr: text for people, json for log pipelines.
    #[arg(
        long,
        env = "HALO_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: halo_logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the integrator, admin and Link APIs.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Threads that serve requests and Link sessions (default: one per core).
        /// Fewer than the cores leaves them to what shares the host: on two cores
        /// shared with a Link and a load generator, one worker serves more queries
        /// per second (README, "Performance").
        #[arg(long, env = "HALO_WORKERS",
            value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
        workers: Option<usize>,
        /// Directory of the durable state (event log and snapshots).
        #[arg(long, default_value = "./halo-data", env = "HALO_DATA_DIR")]
        data_dir: PathBuf,
        /// Where the Cloud's state lives: `sqlite` (the default: one file in
        /// --data-dir) or `postgres://user@host:port/db` to run as one node of a
        /// cluster sharing that database (see the README, "Running a cluster").
        #[arg(
            long,
            default_value = "sqlite",
            env = "HALO_STORE",
            hide_env_values = true
        )]
        store: String,
        /// This node's name in a cluster (logs, metrics). Defaults to the listen address.
        #[arg(long, env = "HALO_NODE_ID")]
        node_id: Option<String>,
        /// The address other nodes reach this one on: where they forward the
        /// immediate queries of the Links attached here. It must reach this node's
        /// --listen listener. Needs a cluster secret.
        #[arg(long, env = "HALO_PEER_ADDR")]
        peer_addr: Option<SocketAddr>,
        /// A file holding the cluster secret (at least 32 bytes, the same on every
        /// node) that authenticates forwarded requests; or set HALO_CLUSTER_SECRET.
        #[arg(long)]
        cluster_secret_file: Option<PathBuf>,
        /// Bearer token of the admin API.
        #[arg(long, env = "HALO_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// Take a snapshot every this many logged events (0: never).
        #[arg(long, default_value_t = 10_000)]
        snapshot_every: u64,
        /// Start even if the event log is damaged: recover up to the last good event
        /// and set the unreadable tail aside (it is kept, not deleted). If the
        /// database file itself is damaged, copy every readable record into a fresh
        /// file first (as `halo-store salvage` does) and move the damaged file to
        /// <data-dir>/damaged-<time>/ (kept, not deleted).
        #[arg(long)]
        accept_damaged_log: bool,
        /// Refuse a Link whose hello announces more databases than this.
        #[arg(long, default_value_t = halo_cloud::app::MAX_DATABASES_PER_LINK)]
        max_databases_per_link: usize,
        /// Most HTTP connections served at once; at the cap the oldest connection that
        /// has not sent a complete request is closed (Link WebSockets are not counted).
        #[arg(long, default_value_t = HttpLimits::DEFAULT_MAX_CONNECTIONS,
            value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize)
        )]
        max_connections: usize,
        /// Most Link WebSocket sessions at once; a Link connecting at the cap is
        /// answered 503 with Retry-After and retries with backoff.
        #[arg(long, default_value_t = HttpLimits::DEFAULT_MAX_LINK_SESSIONS,
            value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize)
        )]
        max_link_sessions: usize,
        /// The heartbeat interval asked of every Link, e.g. `5s`. Each beat is one
        /// frame for the Cloud to read: with many Links, a longer interval costs less
        /// CPU (keep it well below the 90 s offline threshold).
        #[arg(long, default_value = "5s", value_parser = parse_heartbeat)]
        link_heartbeat: Duration,
        /// The node's heartbeat budget, beats per second over all its Links: with
        /// more Links than --link-heartbeat allows for, each is asked for a longer
        /// interval (at most 60 s), and offline thresholds follow each Link's own.
        #[arg(long, default_value_t = HttpLimits::DEFAULT_HEARTBEAT_BUDGET,
            value_parser = clap::value_parser!(u32).range(1..))]
        heartbeat_budget: u32,
        /// Time a connection has to send a complete request head (also the idle
        /// keep-alive timeout), e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        header_read_timeout: Duration,
        /// Time a request has to send its whole body after its head, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        body_read_timeout: Duration,
        /// Time a write to a client may make no progress (a client that stops reading)
        /// before its connection is closed, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        write_timeout: Duration,
        /// How long an async query may run once it left the queue, e.g. `1h`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        async_deadline: Duration,
        /// How long async results stay readable after the query ended (then 410), e.g. `24h`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        result_retention: Duration,
        /// The most bytes of JSON rows per result page (at most 8 MiB).
        #[arg(long, default_value_t = 4 * 1024 * 1024,
            value_parser = clap::value_parser!(u64).range(1..=8 * 1024 * 1024))]
        page_bytes: u64,
        /// The first webhook retry's delay (later ones back off exponentially, with jitter).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        webhook_retry_base: Duration,
        /// Attempts before a webhook delivery is dead-lettered.
        #[arg(long, default_value_t = 10)]
        webhook_attempts: u32,
        /// A PEM file of extra root certificates `https://` webhook receivers may chain
        /// to (a private CA), besides the web PKI's; may be repeated.
        #[arg(long)]
        webhook_ca_file: Vec<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    halo_logging::init(cli.log_format);
    match runtime(&cli).and_then(|runtime| runtime.block_on(run(cli))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable paragraph for the operator (the whole cause chain, no
            // backtrace); a closed stderr is ignored.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr().lock(), "halo-cloud: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The runtime `run` serves on: multi-threaded, with `--workers` threads if given.
fn runtime(cli: &Cli) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let Command::Serve { workers, .. } = &cli.command;
    if let Some(workers) = workers {
        builder.worker_threads(*workers);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            workers: _,
            data_dir,
            store,
            node_id,
            peer_addr,
            cluster_secret_file,
            admin_token,
            snapshot_every,
            accept_damaged_log,
            max_databases_per_link,
            max_connections,
            max_link_sessions,
            link_heartbeat,
            heartbeat_budget,
            header_read_timeout,
            body_read_timeout,
            write_timeout,
            async_deadline,
            result_retention,
            page_bytes,
            webhook_retry_base,
            webhook_attempts,
            webhook_ca_file,
        } => {
            anyhow::ensure!(
                admin_token.len() >= 16,
                "--admin-token must be at least 16 characters"
            );
            raise_descriptor_limit(max_link_sessions.saturating_add(max_connections));
            let jobs = halo_cloud::JobsConfig {
                execution_limit: async_deadline,
                retention: result_retention,
                page_bytes,
                webhook_retry_base,
                webhook_attempts: webhook_attempts.max(1),
                webhook_roots: webhook_ca_file
                    .iter()
                    .map(|path| {
                        std::fs::read(path).with_context(|| {
                            format!("reading --webhook-ca-file {}", path.display())
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
                ..halo_cloud::JobsConfig::default()
            };
            halo_cloud::webhooks::webhook_client(&jobs)
                .context("--webhook-ca-file must hold PEM certificates")?;
            let mut cluster = cluster_config(&store, node_id, peer_addr, listen)?;
            let secret = cluster_secret(
                cluster_secret_file.as_deref(),
                std::env::var("HALO_CLUSTER_SECRET").ok(),
            )?;
            match cluster.as_mut() {
                Some(cluster) => {
                    anyhow::ensure!(
                        cluster.peer_addr.is_none() || secret.is_some(),
                        "--peer-addr needs a cluster secret (--cluster-secret-file or HALO_CLUSTER_SECRET)"
                    );
                    cluster.cluster_secret = secret;
                }
                None => anyhow::ensure!(
                    secret.is_none(),
                    "a cluster secret is for a cluster (--store postgres://...)"
                ),
            }
            let cloud = halo_cloud::start_cluster(
                CloudConfig {
                    listen,
                    data_dir: Some(data_dir.clone()),
                    admin_token,
                    router: RouterConfig::standard(),
                    availability: AvailabilityConfig::default(),
                    snapshot_every,
                    accept_damaged_log,
                    max_databases_per_link,
                    http: HttpLimits {
                        max_connections,
                        header_read_timeout,
                        body_read_timeout,
                        write_timeout,
                        max_link_sessions,
                        link_heartbeat,
                        heartbeat_budget,
                    },
                },
                jobs,
                cluster,
            )
            .await
            .with_context(|| format!("starting the cloud with data in {}", data_dir.display()))?;
            tracing::info!(addr = %cloud.addr, data_dir = %data_dir.display(), "halo-cloud serving");
            // Machine-readable readiness line for scripts and tests.
            println!("listening on {}", cloud.addr);
            let signal = halo_logging::stop_signal().await;
            tracing::info!(signal, "stopping");
            cloud.stop().await;
        }
    }
    Ok(())
}

/// The cluster settings `--store` asks for: `None` for the embedded SQLite store.
fn cluster_config(
    store: &str,
    node_id: Option<String>,
    peer_addr: Option<SocketAddr>,
    listen: SocketAddr,
) -> anyhow::Result<Option<halo_cloud::ClusterConfig>> {
    if store == "sqlite" {
        anyhow::ensure!(
            node_id.is_none() && peer_addr.is_none(),
            "--node-id and --peer-addr are for a cluster (--store postgres://...)"
        );
        return Ok(None);
    }
    anyhow::ensure!(
        store.starts_with("postgres://") || store.starts_with("postgresql://"),
        "--store must be `sqlite` or a postgres:// URL"
    );
    let mut cluster =
        halo_cloud::ClusterConfig::new(store, node_id.unwrap_or_else(|| listen.to_string()));
    cluster.peer_addr = peer_addr;
    tracing::info!(node = %cluster.node_id, peer_addr = ?cluster.peer_addr, "running as a cluster node on PostgreSQL");
    Ok(Some(cluster))
}

/// The cluster secret, from `--cluster-secret-file` or else `HALO_CLUSTER_SECRET`.
fn cluster_secret(
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> anyhow::Result<Option<halo_cloud::forward::ClusterSecret>> {
    let bytes = match (file, env) {
        (Some(path), _) => std::fs::read(path)
            .with_context(|| format!("reading --cluster-secret-file {}", path.display()))?,
        (None, Some(text)) => text.into_bytes(),
        (None, None) => return Ok(None),
    };
    Ok(Some(halo_cloud::forward::ClusterSecret::new(&bytes)?))
}

/// Raises the soft limit on open files to the hard limit (each Link session and
/// each HTTP connection holds one descriptor) and warns when `needed` plus room for
/// the log and listeners does not fit under it.
fn raise_descriptor_limit(needed: usize) {
    let needed = u64::try_from(needed).unwrap_or(u64::MAX).saturating_add(64);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the file-descriptor limit is below --max-link-sessions + --max-connections; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower the caps"
        ),
        Ok(limit) => tracing::debug!(limit, "file-descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
    }
}

/// A heartbeat interval: a duration of at least one second.
fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if every < Duration::from_secs(1) {
        return Err("the heartbeat interval must be at least 1s".to_owned());
    }
    Ok(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_flags_default_to_the_library_http_limits() {
        let cli = Cli::try_parse_from(["halo-cloud", "serve", "--admin-token", "0123456789abcdef"])
            .expect("parses");
        let Command::Serve {
            max_connections,
            max_link_sessions,
            header_read_timeout,
            body_read_timeout,
            write_timeout,
            link_heartbeat,
            heartbeat_budget,
            ..
        } = cli.command;
        let parsed = HttpLimits {
            max_connections,
            header_read_timeout,
            body_read_timeout,
            write_timeout,
            max_link_sessions,
            link_heartbeat,
            heartbeat_budget,
        };
        assert_eq!(parsed, HttpLimits::default());
    }

    #[test]
    fn a_heartbeat_under_a_second_is_refused() {
        for (value, ok) in [("500ms", false), ("0s", false), ("1s", true), ("30s", true)] {
            let parsed = Cli::try_parse_from([
                "halo-cloud",
                "serve",
                "--admin-token",
                "0123456789abcdef",
                "--link-heartbeat",
                value,
            ]);
            assert_eq!(parsed.is_ok(), ok, "--link-heartbeat {value}");
        }
    }

    #[test]
    fn a_heartbeat_budget_of_zero_is_refused() {
        let parse = |value: &str| {
            Cli::try_parse_from([
                "halo-cloud",
                "serve",
                "--admin-token",
                "0123456789abcdef",
                "--heartbeat-budget",
                value,
            ])
        };
        assert!(parse("0").is_err());
        let Command::Serve {
            heartbeat_budget, ..
        } = parse("200").expect("parses").command;
        assert_eq!(heartbeat_budget, 200);
    }

    #[test]
    fn store_defaults_to_sqlite_and_accepts_only_postgres_urls() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().expect("address");
        assert!(
            cluster_config("sqlite", None, None, listen)
                .unwrap()
                .is_none()
        );
        assert!(cluster_config("mysql://x", None, None, listen).is_err());
        assert!(cluster_config("sqlite", Some("a".into()), None, listen).is_err());
        let peer: SocketAddr = "10.0.0.2:9000".parse().expect("address");
        let cluster = cluster_config(
            "postgres://halo@db/halo",
            Some("n1".into()),
            Some(peer),
            listen,
        )
        .unwrap()
        .expect("cluster");
        assert_eq!(cluster.node_id, "n1");
        assert_eq!(cluster.peer_addr, Some(peer));
        let cli = Cli::try_parse_from(["halo-cloud", "serve", "--admin-token", "0123456789abcdef"])
            .expect("parses");
        let Command::Serve { store, .. } = cli.command;
        assert_eq!(store, "sqlite");
    }

    #[test]
    fn max_connections_must_be_positive() {
        let zero = Cli::try_parse_from([
            "halo-cloud",
            "serve",
            "--admin-token",
            "0123456789abcdef",
            "--max-connections",
            "0",
        ]);
        assert!(zero.is_err());
    }
}

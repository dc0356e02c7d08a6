//! `halo-cloud`: the Cloud server, and `halo-cloud demo`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use halo_cloud::{CloudConfig, demo};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;

/// The Halo Connect Cloud.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
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
        /// Directory of the durable state (event log and snapshots).
        #[arg(long, default_value = "./halo-data", env = "HALO_DATA_DIR")]
        data_dir: PathBuf,
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
    },
    /// Start a Cloud with an in-process Link and demo data, and print curl commands.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Keep the demo's data here (default: a temporary directory, removed on exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
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

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            admin_token,
            snapshot_every,
            accept_damaged_log,
        } => {
            anyhow::ensure!(
                admin_token.len() >= 16,
                "--admin-token must be at least 16 characters"
            );
            let cloud = halo_cloud::start(CloudConfig {
                listen,
                data_dir: Some(data_dir.clone()),
                admin_token,
                router: RouterConfig::standard(),
                availability: AvailabilityConfig::default(),
                snapshot_every,
                accept_damaged_log,
            })
            .await
            .with_context(|| format!("starting the cloud with data in {}", data_dir.display()))?;
            tracing::info!(addr = %cloud.addr, data_dir = %data_dir.display(), "halo-cloud serving");
            // Machine-readable readiness line for scripts and tests.
            println!("listening on {}", cloud.addr);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c: stopping"),
                () = cloud_wait(&cloud) => {}
            }
            cloud.stop().await;
        }
        Command::Demo { listen, data_dir } => {
            let demo = demo::start_demo(listen, data_dir)
                .await
                .context("starting the demo")?;
            print!("{}", demo::instructions(&demo));
            tokio::signal::ctrl_c()
                .await
                .context("waiting for ctrl-c")?;
            let _ = demo.link.shutdown().await;
            demo.cloud.stop().await;
        }
    }
    Ok(())
}

async fn cloud_wait(_cloud: &halo_cloud::RunningCloud) {
    std::future::pending::<()>().await;
}

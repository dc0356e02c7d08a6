//! `halo-link`: run the Link agent, or generate a demo database.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use halo_ids::Crn;
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, LinkConfig};

/// The Halo Link agent.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Path of the TOML config (see crates/link/link.example.toml).
    #[arg(long, env = "HALO_LINK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a small D4W-like demo database (invented data).
    DemoDb {
        /// Where to write it; must not exist.
        #[arg(long)]
        out: PathBuf,
        /// Parent CRN stored in the database.
        #[arg(long, default_value = "DEMO1")]
        crn: String,
        /// Practice name stored in the database.
        #[arg(long, default_value = "Harbourside Dental")]
        name: String,
        /// Mark the database as a demo copy (gets a fake CRN; Stage only).
        #[arg(long)]
        demo: bool,
        /// Number of patients.
        #[arg(long, default_value_t = 40)]
        patients: usize,
        /// Generator seed (default: derived from the CRN).
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (
            Some(Command::DemoDb {
                out,
                crn,
                name,
                demo,
                patients,
                seed,
            }),
            _,
        ) => {
            let crn: Crn = crn.parse().context("--crn")?;
            let mut spec = DemoPractice::new(crn, name);
            spec.is_demo = demo;
            spec.patients = patients;
            if let Some(seed) = seed {
                spec.seed = seed;
            }
            let summary = generate(&out, &spec)?;
            println!(
                "wrote {}: {} patients, {} providers, {} appointments, {} treatments",
                out.display(),
                summary.patients,
                summary.providers,
                summary.appointments,
                summary.treatments
            );
            Ok(())
        }
        (None, Some(path)) => {
            let config = LinkConfig::load(&path)?;
            let link = Agent::prepare(config)?;
            let runtime = tokio::runtime::Runtime::new().context("cannot start tokio")?;
            runtime.block_on(link.run(async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("ctrl-c: shutting down");
            }))?;
            Ok(())
        }
        (None, None) => anyhow::bail!("give --config PATH, or a subcommand (see --help)"),
    }
}

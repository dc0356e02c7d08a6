//! `halo-link`: run the Link agent, check a database or config (`doctor`), or
//! generate a demo database. Logs go to stderr (see `halo-logging`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use halo_ids::Crn;
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, LinkConfig};
use halo_logging::LogFormat;

/// mimalloc: glibc's malloc and free were about a tenth of the Link's samples on
/// the query path (PERFORMANCE.md, "Whole path").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Halo Link agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Path of the TOML config (see crates/link/link.example.toml).
    #[arg(long, env = "HALO_LINK_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr: text for people, json for log pipelines.
    #[arg(
        long,
        env = "HALO_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a database (or every database of a config) for what the Link reads:
    /// the identity tables practice_info and practice_branch, their columns and
    /// rows. Says what is missing; exits 1 if anything is.
    Doctor {
        /// A database file to check (repeatable).
        #[arg(long = "database")]
        databases: Vec<PathBuf>,
        /// A Link config to check, with every database it names.
        #[arg(long = "config")]
        config: Option<PathBuf>,
    },
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

/// Runs `halo-link doctor`; whether everything checked is fine.
fn doctor(databases: &[PathBuf], config: Option<&PathBuf>) -> anyhow::Result<bool> {
    anyhow::ensure!(
        !databases.is_empty() || config.is_some(),
        "give --database PATH (repeatable) and/or --config PATH"
    );
    let mut ok = true;
    let mut out = String::new();
    if let Some(config) = config {
        let report = halo_link::doctor::check_config(config);
        ok &= report.is_ok();
        out.push_str(&report.to_string());
    }
    for db in databases {
        let report = halo_link::doctor::check_database(db);
        ok &= report.is_ok();
        out.push_str(&report.to_string());
    }
    print!("{out}");
    Ok(ok)
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    halo_logging::init(cli.log_format);
    match (cli.command, cli.config) {
        (Some(Command::Doctor { databases, config }), top) => {
            let config = config.or(top);
            Ok(if doctor(&databases, config.as_ref())? {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
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
            Ok(std::process::ExitCode::SUCCESS)
        }
        (None, Some(path)) => {
            let config = LinkConfig::load(&path)?;
            let link = Agent::prepare(config)?;
            // One thread drives the socket and the session loop (short reads run on
            // that loop): no wake-up of another worker per frame. Longer jobs run on
            // the runtime's blocking pool.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start tokio")?;
            let agent = runtime.spawn(link.run(async {
                let signal = halo_logging::stop_signal().await;
                tracing::info!(signal, "shutting down");
            }));
            runtime
                .block_on(agent)
                .context("the agent stopped abnormally")??;
            Ok(std::process::ExitCode::SUCCESS)
        }
        (None, None) => anyhow::bail!("give --config PATH, or a subcommand (see --help)"),
    }
}

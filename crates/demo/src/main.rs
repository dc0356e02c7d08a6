//! `halo-demo`: a Cloud with an in-process Link and demo data; prints curl commands.
//! Stops cleanly (removing its temporary data) on Ctrl-C and on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// mimalloc, the allocator `halo-cloud` and `halo-link` run with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Halo Connect demo: a Cloud on its embedded defaults, an in-process Stage Link
/// serving demo practice databases, and a demo integrator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Keep the demo's data here (default: a temporary directory, removed on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format on stderr: text for people, json for log pipelines.
    #[arg(long, env = "HALO_LOG_FORMAT", value_enum, default_value_t)]
    log_format: halo_logging::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    halo_logging::init(cli.log_format);
    let demo = halo_demo::start_demo(cli.listen, cli.data_dir)
        .await
        .context("starting the demo")?;
    print!("{}", halo_demo::instructions(&demo));
    let signal = halo_logging::stop_signal().await;
    tracing::info!(signal, "stopping the demo");
    let _ = demo.link.shutdown().await;
    demo.cloud.stop().await;
    // Dropping the demo removes its temporary directory.
    Ok(())
}

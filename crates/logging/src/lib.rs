//! One log format for every Halo binary (`halo-cloud`, `halo-link`, `halo-demo`):
//! `tracing-subscriber` on **stderr** (stdout stays for output meant for scripts),
//! filtered by `RUST_LOG` (default `info`), as text for people or one JSON object a
//! line for log pipelines.
//!
//! Choose with `--log-format text|json` or `HALO_LOG_FORMAT`. Lines inside a span
//! carry its fields: the Cloud's `request` span names the Halo GUID and the CRN of
//! the site a request concerns, the Link's `job` span the job's Halo GUID and CRN
//! (the fake CRN for a demo copy).
//!
//! Also the one way every binary waits to stop: [`stop_signal`].

use std::io::IsTerminal as _;

use clap::ValueEnum;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: time, level, span fields, target, message, fields.
    #[default]
    Text,
    /// One JSON object a line, with the current span and its parents.
    Json,
}

/// Installs the subscriber for the whole process. Call once, first thing in
/// `main`; a second call (or a subscriber set elsewhere) is ignored.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// Completes on Ctrl-C or, on Unix, SIGTERM, and says which (`"ctrl-c"` or
/// `"SIGTERM"`). Where SIGTERM cannot be listened for, it warns and waits for Ctrl-C.
pub async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => "ctrl-c",
                    _ = term.recv() => "SIGTERM",
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops this process");
                let _ = tokio::signal::ctrl_c().await;
                "ctrl-c"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

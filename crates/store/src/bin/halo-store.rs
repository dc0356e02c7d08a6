//! `halo-store`: operator commands for a Halo data directory (verify, backup,
//! salvage).
//!
//! Output goes to stdout, progress and errors to stderr. A closed stdout (for
//! example `halo-store verify DIR | head -1`) ends the command quietly with the
//! exit status it would have had.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use halo_store::{SalvageProgress, SqliteLog, StoreError, salvage, verify};

const USAGE: &str = "usage:
  halo-store verify <data-dir>             check every record and snapshot checksum (read-only)
  halo-store backup <data-dir> <file>      write a consistent copy of the store to <file> (safe while the Cloud runs)
  halo-store salvage <data-dir|db> <new-dir>
                                           copy every readable record (and the newest readable snapshot)
                                           of a damaged store into a new log in <new-dir>, and report what
                                           was lost; the damaged store is only read (stop the Cloud first)

exit status: 0 clean; 1 damage found or an error; 2 usage; 3 salvage finished but records were lost";

/// Salvage finished, but some records could not be read.
const SALVAGED_WITH_LOSS: u8 = 3;

/// Why a command stopped early.
enum Failure {
    /// The store's own error.
    Store(StoreError),
    /// Stdout could not be written.
    Output(std::io::Error),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["verify", dir] => run_verify(Path::new(dir)),
        ["backup", dir, dest] => run_backup(Path::new(dir), Path::new(dest)),
        ["salvage", source, dest] => run_salvage(Path::new(source), Path::new(dest)),
        _ => {
            err(USAGE);
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(Failure::Store(e)) => {
            err(&format!("halo-store: {e}"));
            ExitCode::FAILURE
        }
        Err(Failure::Output(e)) => {
            err(&format!("halo-store: cannot write the output: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr; a closed stderr is ignored (never a panic).
fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes `text` to stdout. If stdout was closed by the reader (a broken pipe),
/// returns `Ok(false)`: the caller stops printing and exits with the status it
/// would have had anyway.
fn out(text: &str) -> Result<bool, Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failure::Output(e)),
    }
}

fn status(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_verify(dir: &Path) -> Result<ExitCode, Failure> {
    let log = SqliteLog::open_read_only(dir)?;
    let report = verify(&log)?;
    out(&report.to_string())?;
    Ok(status(report.is_clean()))
}

fn run_backup(dir: &Path, dest: &Path) -> Result<ExitCode, Failure> {
    let log = SqliteLog::open_read_only(dir)?;
    log.backup_to(dest)?;
    let copy = SqliteLog::open_read_only_file(dest)?;
    let report = verify(&copy)?;
    if out(&format!("backup written to {}\n", dest.display()))? {
        out(&report.to_string())?;
    }
    Ok(status(report.is_clean()))
}

fn run_salvage(source: &Path, dest: &Path) -> Result<ExitCode, Failure> {
    let mut last = Instant::now();
    let mut progress = |p: SalvageProgress| {
        // Phase starts always; counts at most once a second.
        let phase_start = matches!(
            p,
            SalvageProgress::Copying
                | SalvageProgress::Scanning { page: 0..=1024, .. }
                | SalvageProgress::Writing {
                    records: 0..=10_000,
                    ..
                }
        );
        if phase_start || last.elapsed() >= Duration::from_secs(1) {
            err(&format!("salvage: {p}"));
            last = Instant::now();
        }
    };
    let report = salvage(source, dest, &mut progress)?;
    out(&report.to_string())?;
    if !report.is_complete() {
        err(
            "halo-store: salvage finished with losses (see above); check them before starting the Cloud on the new directory",
        );
        return Ok(ExitCode::from(SALVAGED_WITH_LOSS));
    }
    Ok(ExitCode::SUCCESS)
}

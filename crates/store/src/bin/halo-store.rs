//! `halo-store`: operator commands for a Halo data directory (verify, backup).

use std::path::Path;
use std::process::ExitCode;

use halo_store::{SqliteLog, verify};

const USAGE: &str = "usage:
  halo-store verify <data-dir>          check every record and snapshot checksum (read-only)
  halo-store backup <data-dir> <file>   write a consistent copy of the store to <file> (safe while the Cloud runs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["verify", dir] => run_verify(Path::new(dir)),
        ["backup", dir, dest] => run_backup(Path::new(dir), Path::new(dest)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("halo-store: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_verify(dir: &Path) -> Result<ExitCode, halo_store::StoreError> {
    let log = SqliteLog::open_read_only(dir)?;
    let report = verify(&log)?;
    print!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_backup(dir: &Path, dest: &Path) -> Result<ExitCode, halo_store::StoreError> {
    let log = SqliteLog::open_read_only(dir)?;
    log.backup_to(dest)?;
    let copy = SqliteLog::open_read_only_file(dest)?;
    let report = verify(&copy)?;
    println!("backup written to {}", dest.display());
    print!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

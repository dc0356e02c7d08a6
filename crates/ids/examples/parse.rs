//! Parses identifiers given on the command line and prints the canonical form or
//! the error: `cargo run -p halo-ids --example parse -- crn " ab12 "`.
//! Kinds: guid, crn, pms-type, pms-id, environment.

use std::process::ExitCode;

use halo_ids::{Crn, Environment, HaloGuid, PmsId, PmsType};

fn parse(kind: &str, text: &str) -> Result<String, String> {
    let shown = |r: Result<String, halo_ids::IdError>| r.map_err(|e| e.to_string());
    match kind {
        "guid" => shown(
            text.parse::<HaloGuid>()
                .map(|g| format!("{g} (fake CRN {})", g.fake_crn())),
        ),
        "crn" => shown(text.parse::<Crn>().map(|c| c.to_string())),
        "pms-type" => shown(text.parse::<PmsType>().map(|t| t.to_string())),
        "pms-id" => shown(text.parse::<PmsId>().map(|p| p.to_string())),
        "environment" => shown(text.parse::<Environment>().map(|e| e.to_string())),
        other => Err(format!(
            "unknown kind {other:?}: use guid, crn, pms-type, pms-id or environment"
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: parse <guid|crn|pms-type|pms-id|environment> <text>...");
        return ExitCode::from(2);
    }
    let mut ok = true;
    for text in &args[1..] {
        match parse(&args[0], text) {
            Ok(canonical) => println!("ok:    {canonical}"),
            Err(e) => {
                ok = false;
                println!("error: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

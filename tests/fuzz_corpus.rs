//! Runs every fuzz target's checks (`halo_test_support::fuzz_checks`, the code the
//! targets run under libFuzzer) over its committed corpus on stable Rust, so CI
//! exercises the targets even where the nightly toolchain or cargo-fuzz is missing.

use std::path::PathBuf;

use halo_test_support::fuzz_checks as checks;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_target_passes_its_corpus() {
    for (target, check) in checks::TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus of {target} at {}: {e}", dir.display()));
        let mut ran = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            check(&data);
            ran += 1;
        }
        assert!(ran > 0, "{target} has an empty corpus");
    }
}

#[test]
fn every_fuzz_target_is_listed() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.trim_end_matches(".rs").to_owned()
        })
        .collect();
    files.sort();
    let mut listed: Vec<String> = checks::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "fuzz/fuzz_targets and checks::TARGETS disagree"
    );
}

#[test]
fn descriptor_check_accepts_lenient_forms_and_skips_garbage() {
    checks::crn(b"AB12");
    let outcome = std::panic::catch_unwind(|| checks::site_descriptor(b"{}"));
    assert!(
        outcome.is_ok(),
        "an undecodable descriptor is skipped, not a failure"
    );
    let desc = br#"{"linkGuid":"11111111-2222-3333-4444-555555555555","haloGuid":"3f2504e0-4f89-11d3-9a0c-0305e82c3301","environment":"Staging","pmsId":"d4w:ab123","branchCrns":["br1"],"practiceName":"Smile"}"#;
    let site: checks::SiteDescriptor = serde_json::from_slice(desc).unwrap();
    assert_eq!(site.environment, halo_ids::Environment::Stage);
    assert_eq!(site.pms_id.to_string(), "D4w:AB123");
}

/// The seeds of `target`, read whole.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .expect("corpus directory")
        .map(|e| {
            let path = e.expect("directory entry").path();
            let data = std::fs::read(&path).expect("seed file");
            (path, data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn sql_seeds_reach_both_outcomes_and_a_nested_comment_is_refused() {
    let outcomes: Vec<bool> = seeds("fuzz_sql")
        .iter()
        .map(|(_, data)| {
            halo_policy::extract_components(std::str::from_utf8(data).unwrap()).is_ok()
        })
        .collect();
    assert!(outcomes.contains(&true), "no sql seed parses");
    assert!(outcomes.contains(&false), "every sql seed parses");
    // SQL Server nests block comments, SQLite does not: to SQL Server this is
    // `SELECT 1`, to SQLite `SELECT 1 FROM secrets`. The analyser refuses to guess.
    let refused = halo_policy::extract_components("SELECT 1 /* /* */ FROM secrets -- */");
    assert!(
        matches!(refused, Err(halo_policy::PolicyError::SqlAmbiguous(_))),
        "{refused:?}"
    );
    checks::sql(b"SELECT 1 /* /* */ , x -- */");
}

#[test]
fn protocol_seeds_decode_in_both_directions() {
    use halo_protocol::{CloudToLink, LinkToCloud, decode};
    let frames: Vec<String> = seeds("fuzz_protocol")
        .into_iter()
        .map(|(_, data)| String::from_utf8(data).unwrap())
        .collect();
    assert!(frames.iter().any(|f| decode::<LinkToCloud>(f).is_ok()));
    assert!(frames.iter().any(|f| decode::<CloudToLink>(f).is_ok()));
    assert!(
        frames
            .iter()
            .any(|f| decode::<LinkToCloud>(f).is_err() && decode::<CloudToLink>(f).is_err())
    );
}

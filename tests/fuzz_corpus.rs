//! Runs every fuzz target's checks over its committed corpus on stable Rust, so CI
//! exercises the targets even where the nightly toolchain or cargo-fuzz is missing.

#[path = "../fuzz/src/checks.rs"]
#[allow(dead_code, unreachable_pub)]
mod checks;

use std::path::PathBuf;

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

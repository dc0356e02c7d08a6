//! Enforces the architecture invariants of ARCHITECTURE.md that a test can see: the
//! core crates depend on no IO runtime and read no clock, and every crate edge is one
//! the table below allows (read from `cargo metadata`).

use std::path::{Path, PathBuf};

const CORE: [&str; 6] = [
    "ids",
    "authority",
    "tenancy",
    "policy",
    "credentials",
    "router",
];
const IO_CRATES: [&str; 7] = [
    "tokio",
    "axum",
    "rusqlite",
    "tokio-tungstenite",
    "hyper",
    "reqwest",
    "halo-store",
];
const CLOCK_READS: [&str; 3] = ["SystemTime::now", "Instant::now", "std::fs::"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Unit-test files (`tests.rs`, anything under a `tests/` folder of `src`) may read
/// fixtures. `relative` is the path below the crate's `src`.
fn is_test_code(relative: &Path) -> bool {
    relative.file_name().is_some_and(|n| n == "tests.rs")
        || relative.components().any(|c| c.as_os_str() == "tests")
}

#[test]
fn core_crates_depend_on_no_io_runtime() {
    for krate in CORE {
        let manifest = root().join("crates").join(krate).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let deps = doc.get("dependencies").and_then(|d| d.as_table());
        for name in deps.into_iter().flat_map(|t| t.keys()) {
            assert!(
                !IO_CRATES.contains(&name.as_str()),
                "core crate {krate} depends on the IO crate {name}"
            );
        }
    }
}

#[test]
fn core_crates_read_no_clock_and_no_files() {
    for krate in CORE {
        let src = root().join("crates").join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        files.retain(|f| f.strip_prefix(&src).is_ok_and(|r| !is_test_code(r)));
        assert!(!files.is_empty(), "no sources found for {krate}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for needle in CLOCK_READS {
                assert!(
                    !text.contains(needle),
                    "{} uses {needle}: core crates take time as a parameter and do no IO",
                    file.display()
                );
            }
        }
    }
}

/// The allowed `halo-*` edges (normal dependencies) of every workspace package. A new
/// package, or a new edge, must be added here on purpose: in particular the Cloud
/// links no agent, the Link knows nothing of the Cloud, and the store knows no domain.
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("halo-ids", &[]),
    ("halo-authority", &["halo-ids"]),
    ("halo-tenancy", &["halo-ids", "halo-authority"]),
    ("halo-policy", &["halo-ids"]),
    ("halo-credentials", &["halo-ids", "halo-policy"]),
    (
        "halo-router",
        &["halo-ids", "halo-authority", "halo-tenancy", "halo-policy"],
    ),
    ("halo-protocol", &["halo-ids"]),
    ("halo-store", &[]),
    (
        "halo-cloud",
        &[
            "halo-ids",
            "halo-authority",
            "halo-tenancy",
            "halo-policy",
            "halo-credentials",
            "halo-router",
            "halo-protocol",
            "halo-store",
            "halo-logging",
        ],
    ),
    // The Link enforces the policy's SQL function list itself (one list, no copy).
    (
        "halo-link",
        &["halo-ids", "halo-protocol", "halo-policy", "halo-logging"],
    ),
    (
        "halo-demo",
        &[
            "halo-ids",
            "halo-tenancy",
            "halo-policy",
            "halo-credentials",
            "halo-router",
            "halo-cloud",
            "halo-link",
            "halo-logging",
        ],
    ),
    (
        "halo-connect",
        &[
            "halo-ids",
            "halo-authority",
            "halo-tenancy",
            "halo-policy",
            "halo-router",
        ],
    ),
    // The admin CLI talks to the Cloud over HTTP only: it links none of it.
    ("halo-admin", &[]),
    // One log format for every binary; it knows no domain.
    ("halo-logging", &[]),
    // Test and benchmark packages may use any crate.
    ("halo-benches", &["*"]),
    ("halo-tests", &["*"]),
    ("halo-test-support", &["*"]),
];

#[test]
fn crate_edges_are_the_allowed_ones() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    assert!(packages.len() >= 12, "workspace packages not found");
    for package in packages {
        let name = package["name"].as_str().unwrap();
        let allowed = ALLOWED_EDGES
            .iter()
            .find(|(p, _)| *p == name)
            .map(|(_, edges)| *edges)
            .unwrap_or_else(|| panic!("package {name} is not in ALLOWED_EDGES: add it on purpose"));
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let normal = dep["kind"].is_null();
            if normal && dep_name.starts_with("halo-") && !allowed.contains(&"*") {
                assert!(
                    allowed.contains(&dep_name),
                    "{name} depends on {dep_name}, which ALLOWED_EDGES does not allow"
                );
            }
        }
    }
}

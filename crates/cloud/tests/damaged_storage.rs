//! Page-level damage to the Cloud's own log (issue 10): `halo.db` cut short by one
//! page, or byte 100 flipped. SQLite then reports the whole file as malformed. The
//! Cloud must refuse to start naming the file, saying the storage is damaged and
//! pointing to `halo-store salvage`; `--accept-damaged-log` must salvage every
//! readable record into a fresh file and keep the damaged one.

use halo_test_support::damage::{flip_byte_100, truncate_one_page};
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use halo_cloud::state::StateError;
use halo_cloud::{CloudState, StateConfig};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use halo_router::{Router, RouterConfig};
use halo_tenancy::{AvailabilityConfig, Catalogue, Event, SiteIdentity};

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);
const SITES: u128 = 60;
const ADMIN: &str = "damaged-storage-admin-token-0123";

fn config(dir: &Path, accept_damaged_log: bool) -> StateConfig {
    StateConfig {
        data_dir: Some(dir.to_path_buf()),
        snapshot_every: 0,
        availability: AvailabilityConfig::default(),
        accept_damaged_log,
    }
}

fn open(dir: &Path, accept_damaged_log: bool) -> Result<CloudState, StateError> {
    CloudState::open(
        &config(dir, accept_damaged_log),
        Arc::new(Router::new(RouterConfig::standard())),
    )
}

fn site(i: u128) -> HaloGuid {
    HaloGuid::from_u128(100 + i).expect("guid")
}

fn site_events(from: u128, to: u128) -> Vec<Event> {
    let link = LinkGuid::from_u128(7).expect("guid");
    let mut events = Vec::new();
    if from == 0 {
        events.push(Event::LinkRegistered {
            link,
            environment: Environment::Stage,
            version: "1".into(),
        });
    }
    for i in from..to {
        events.push(Event::SiteAttached {
            link,
            halo_guid: site(i),
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: format!("CRN{i}").parse::<Crn>().expect("crn"),
                branch_crns: Vec::new(),
                practice_name: format!("Practice {i} with a longer name to fill pages"),
                pms_version: "15".into(),
                catalogues: vec![Catalogue {
                    name: "d4w".into(),
                    is_default: true,
                }],
                is_demo: false,
            },
        });
        events.push(Event::SiteReady {
            link,
            halo_guid: site(i),
        });
    }
    events
}

/// A real data directory: SITES sites registered through the Cloud's state, a
/// snapshot half-way, closed cleanly.
fn build(dir: &Path) {
    let state = open(dir, false).expect("open");
    for r in state.apply_tenancy(site_events(0, SITES / 2), NOW).wait() {
        r.expect("apply");
    }
    state.snapshot_now().wait().expect("snapshot");
    for r in state
        .apply_tenancy(site_events(SITES / 2, SITES), NOW)
        .wait()
    {
        r.expect("apply");
    }
}

fn db(dir: &Path) -> PathBuf {
    dir.join("halo.db")
}

fn assert_names_damage_and_the_way_out(err: &StateError, dir: &Path) {
    assert!(matches!(err, StateError::StorageDamaged { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&db(dir).display().to_string()), "{msg}");
    assert!(msg.contains("storage is damaged"), "{msg}");
    assert!(msg.contains("not to one record"), "{msg}");
    assert!(msg.contains("halo-store salvage"), "{msg}");
    assert!(msg.contains("--accept-damaged-log"), "{msg}");
}

fn set_aside(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("damaged-"))
        })
        .collect()
}

#[test]
fn page_truncation_stops_the_cloud_naming_the_file_and_the_way_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    truncate_one_page(&db(dir.path()));
    let damaged = std::fs::read(db(dir.path())).expect("read");
    let err = open(dir.path(), false).expect_err("refused");
    assert_names_damage_and_the_way_out(&err, dir.path());
    assert_eq!(
        std::fs::read(db(dir.path())).expect("read"),
        damaged,
        "a refused start changes nothing"
    );
}

#[test]
fn flipped_header_byte_stops_the_cloud_naming_the_file_and_the_way_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    flip_byte_100(&db(dir.path()));
    let err = open(dir.path(), false).expect_err("refused");
    assert_names_damage_and_the_way_out(&err, dir.path());
}

#[test]
fn flipped_header_byte_salvaged_dir_opens_cleanly_with_every_site() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    flip_byte_100(&db(dir.path()));
    let out = tempfile::tempdir().expect("tempdir");
    let new_dir = out.path().join("salvaged");
    let report = halo_store::salvage(dir.path(), &new_dir, &mut |_| {}).expect("salvage");
    assert!(report.is_complete(), "{report}");
    assert!(report.snapshot.is_some(), "{report}");
    let state = open(&new_dir, false).expect("the salvaged dir opens without accepting damage");
    let recovery = state.recovery().expect("recovered").clone();
    assert!(recovery.is_complete(), "{recovery}");
    assert!(recovery.snapshot_seq.is_some(), "{recovery}");
    let w = state.registry();
    assert_eq!(w.site_count() as u128, SITES);
    for i in 0..SITES {
        assert!(w.site(site(i)).is_some(), "site {i}");
    }
}

#[test]
fn page_truncation_salvaged_dir_opens_cleanly_with_the_readable_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    truncate_one_page(&db(dir.path()));
    let out = tempfile::tempdir().expect("tempdir");
    let new_dir = out.path().join("salvaged");
    let report = halo_store::salvage(dir.path(), &new_dir, &mut |_| {}).expect("salvage");
    assert!(report.end_known, "{report}");
    assert_eq!(
        report.records_read + report.records_lost,
        report.end.get(),
        "{report}"
    );
    let state = open(&new_dir, false).expect("the salvaged dir opens without accepting damage");
    assert!(state.recovery().expect("recovered").is_complete());
    // Every site whose two events were both readable is there.
    assert!(state.registry().site_count() > 0);
}

#[test]
fn page_truncation_accepted_salvages_in_place_and_keeps_the_damaged_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    truncate_one_page(&db(dir.path()));
    let damaged = std::fs::read(db(dir.path())).expect("read");
    let sites = {
        let state = open(dir.path(), true).expect("accepted");
        let sites = state.registry().site_count();
        assert!(sites > 0);
        // The Cloud writes again after the salvage.
        for r in state
            .apply_tenancy(site_events(SITES, SITES + 1), NOW)
            .wait()
        {
            r.expect("apply after salvage");
        }
        sites
    };
    let aside = set_aside(dir.path());
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join("halo.db")).expect("kept"),
        damaged,
        "the damaged file is kept, byte for byte"
    );
    // A plain start (no --accept-damaged-log) works now, with the change made after.
    let state = open(dir.path(), false).expect("plain start after the salvage");
    assert!(state.recovery().expect("recovered").is_complete());
    assert_eq!(state.registry().site_count(), sites + 1);
    assert!(state.registry().site(site(SITES)).is_some());
}

#[test]
fn flipped_header_byte_accepted_recovers_every_site() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    flip_byte_100(&db(dir.path()));
    let state = open(dir.path(), true).expect("accepted");
    assert_eq!(state.registry().site_count() as u128, SITES);
    assert_eq!(set_aside(dir.path()).len(), 1);
}

fn serve(dir: &Path, accept: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_halo-cloud"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin-token", ADMIN])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if accept {
        cmd.arg("--accept-damaged-log");
    }
    cmd
}

#[test]
fn flipped_header_byte_refused_by_the_binary_then_started_with_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path());
    flip_byte_100(&db(dir.path()));

    let out = serve(dir.path(), false).output().expect("run halo-cloud");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&db(dir.path()).display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("storage is damaged"), "{stderr}");
    assert!(stderr.contains("halo-store salvage"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut child = serve(dir.path(), true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start halo-cloud");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("readiness line");
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    assert!(line.starts_with("listening on "), "{line:?} {stderr}");
    assert!(
        stderr.contains("salvaged the damaged event log"),
        "{stderr}"
    );
    assert_eq!(set_aside(dir.path()).len(), 1);
}

//! `evaluate` does not allocate on the allow path (counted by a global allocator).

mod support;

use std::alloc::System;

use halo_ids::Timestamp;
use halo_policy::{Decision, ExecutionMode, Request, evaluate, extract_components};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use support::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn allow_path_does_not_allocate() {
    let policy = grants().compile();
    let site = stage_site();
    let c = extract_components(
        "SELECT * FROM d4w.dbo.patients p JOIN appointments a ON a.pid = p.id; EXEC GetPatient 1",
    )
    .expect("parses");
    let req = Request {
        key: READER_STAGE,
        halo_guid: site.halo_guid,
        mode: ExecutionMode::Reader,
        catalogue: Some("[D4W]"),
        components: &c,
        caller_ip: None,
        now: Timestamp::from_millis(0),
    };
    // Warm up, then count.
    assert!(matches!(
        evaluate(&policy, &req, Some(&site)),
        Decision::Allow(_)
    ));
    let region = Region::new(GLOBAL);
    let mut allowed = 0;
    for _ in 0..100 {
        if let Decision::Allow(a) = evaluate(&policy, &req, Some(&site)) {
            allowed += usize::from(a.integrator().as_str() == "reader");
        }
    }
    let change = region.change();
    assert_eq!(allowed, 100);
    assert_eq!(change.allocations, 0);
    assert_eq!(change.reallocations, 0);
    drop(policy);
    counter_sees_the_deny_message_allocation();
}

/// The counter works: a deny naming a component formats a message. Called from
/// the one test so that no other test thread allocates while a region is open (the
/// counter is process-wide).
fn counter_sees_the_deny_message_allocation() {
    let policy = grants().compile();
    let site = stage_site();
    let c = extract_components("SELECT * FROM secrets").expect("parses");
    let req = Request {
        key: READER_STAGE,
        halo_guid: site.halo_guid,
        mode: ExecutionMode::Reader,
        catalogue: None,
        components: &c,
        caller_ip: None,
        now: Timestamp::from_millis(0),
    };
    let region = Region::new(GLOBAL);
    let d = evaluate(&policy, &req, Some(&site));
    assert!(region.change().allocations > 0);
    assert!(matches!(d, Decision::Deny(_)));
}

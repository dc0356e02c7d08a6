//! An attached Link session that carries no traffic holds no per-traffic memory: its
//! job queue and in-flight map are allocated on its first query, not at attach
//! (counted by a global allocator). A Cloud node holds tens of thousands of idle
//! sessions, so a queue sized up front (a bounded channel of `2 * link_capacity`
//! slots is about 100 KB) would dominate its memory.

use std::alloc::System;

use halo_ids::LinkGuid;
use halo_router::{Router, RouterConfig};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes an idle session may hold: its shared core and receiver, no buffers.
const IDLE_SESSION_BYTES: usize = 2048;

#[test]
fn idle_sessions_allocate_no_queue() {
    let router = Router::new(RouterConfig::standard());
    let links: Vec<LinkGuid> = (1..=101)
        .map(|n| LinkGuid::from_u128(n).expect("not nil"))
        .collect();
    // The first attach creates the router's table of Links; leave it out.
    let first = router.attach_link(links[0]);
    let region = Region::new(GLOBAL);
    let sessions: Vec<_> = links[1..].iter().map(|l| router.attach_link(*l)).collect();
    let stats = region.change();
    // Net bytes still held (allocated - freed + grown by realloc).
    let held =
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    let per_session = held.max(0) as usize / sessions.len();
    assert!(
        per_session <= IDLE_SESSION_BYTES,
        "an idle session holds {per_session} bytes (at most {IDLE_SESSION_BYTES}): {stats:?}"
    );
    assert!(sessions.iter().all(|s| !s.is_detached()));
    drop(first);
}

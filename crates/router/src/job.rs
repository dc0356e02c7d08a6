//! A job: what the router puts on a Link session's queue for the Link to run.

use halo_authority::Epoch;
use std::sync::Arc;

use halo_ids::{HaloGuid, LinkGuid, Timestamp};
use halo_policy::{Allowed, Components, ExecutionMode};

use crate::dispatch::QueryId;

/// One query for a Link to run, stamped with everything the Link needs to check it
/// again (defence in depth): the epoch it was routed under, its deadlines and the
/// components the policy authorised.
#[derive(Debug, Clone)]
pub struct Job {
    /// The id to answer with ([`crate::LinkSession::complete`]).
    pub query_id: QueryId,
    /// The site to run it on.
    pub halo_guid: HaloGuid,
    /// The Link that serves it.
    pub link: LinkGuid,
    /// The authority epoch the route saw; the Link refuses it if it has seen a newer one.
    pub epoch: Epoch,
    /// The Link must not start the query after this instant (`maxTimeInQueue`).
    pub queue_deadline: Timestamp,
    /// The query times out (504) at this instant.
    pub deadline: Timestamp,
    /// The catalogue to run it in (the request's, or the site's default).
    pub catalogue: Option<Box<str>>,
    /// The command.
    pub command: Command,
    /// Who the policy allowed (integrator, environment, site, practice).
    pub allowed: Allowed,
    /// The components the command touches, every one of them authorised: the
    /// allowlist the Link enforces again at the database.
    pub allowlist: Arc<Components>,
    /// `Some` when the result comes back in pages (the async path), `None` for one
    /// whole result (the immediate path).
    pub paging: Option<Paging>,
}

/// How a Link sends a paged result: pages of at most `page_bytes` bytes of JSON,
/// and at most `window` pages sent and not yet acknowledged (backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// The most bytes of JSON rows in one page (a single larger row is a page alone).
    pub page_bytes: u64,
    /// The most pages in flight before the Link waits for an acknowledgement.
    pub window: u32,
}

/// The command of an immediate query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The SQL text.
    pub text: String,
    /// How to run it.
    pub mode: ExecutionMode,
    /// Parameters, opaque to the router (for example their JSON), forwarded verbatim.
    pub parameters: Option<String>,
    /// `text` is the name of a procedure the Link has configured (`command.type:
    /// storedProcedure`), not SQL: the Link runs the text it holds under that name.
    pub procedure: bool,
}

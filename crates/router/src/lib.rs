//! Lock-free query router: resolves sites, checks authority and policy, dispatches to Link sessions.

mod dispatch;
mod error;
mod job;
mod link;
mod outcome;
mod route;
mod router;
mod sync;

pub use dispatch::{Dispatch, QueryId};
pub use error::{ErrorClass, RouteError};
pub use job::{Command, Job};
pub use link::{Delivery, LinkSession, NextJob};
pub use outcome::{QueryFailure, QueryOutput};
pub use route::{Route, SiteRoute};
pub use router::{Authorised, Published, RouteRequest, Router, RouterConfig, check_route};

#[cfg(all(test, not(loom)))]
mod fixture;
#[cfg(all(test, loom))]
mod loom_publish;
#[cfg(all(test, loom))]
mod loom_slot;
#[cfg(all(test, not(loom)))]
mod tests;

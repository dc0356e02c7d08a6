//! Facade over the Halo Connect routing core.
//!
//! Re-exports the core crates under short names so that a user can depend on one
//! package. The adapters (`halo-protocol`, `halo-cloud`, `halo-link`, `halo-store`)
//! are separate packages because they pull in IO.

pub use halo_authority as authority;
pub use halo_ids as ids;
pub use halo_policy as policy;
pub use halo_router as router;
pub use halo_tenancy as tenancy;

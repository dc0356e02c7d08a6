//! Validated identifier types of Halo Connect.
//!
//! Every identifier that crosses a boundary (HTTP, the Link protocol, the event log)
//! is parsed here once, into a type that cannot hold an invalid value:
//!
//! | type | canonical text | accepted input |
//! | --- | --- | --- |
//! | [`LinkGuid`], [`HaloGuid`] | lowercase hyphenated UUID | hyphenated, `{braced}` or 32 hex digits, any case, trimmed; nil rejected |
//! | [`Crn`] | upper-case | 1 to 20 ASCII letters/digits after trimming |
//! | [`PmsType`] | `D4w`, `BestPractice`, `Zedmed` | also `Best Practice`, any case |
//! | [`PmsId`] | `D4w:AB123` | `<pms type>:<site id>` |
//! | [`Environment`] | `stage`, `production` | any case; also `staging` |
//!
//! Beside the identifiers it holds the few value types that cross a boundary in more
//! than one crate, so that each has one definition: [`Timestamp`] (the instant every
//! core function takes), [`Epoch`] (the fencing token of an authority group, a plain
//! number on the wire and in files) and [`ExecutionMode`] (how a command runs, the
//! API's `executionMode`).
//!
//! Parsing never panics, `parse(display(x)) == x`, and serde uses the canonical text
//! (deserialising goes through the same validation). Errors ([`IdError`]) name the
//! field, the rule broken and an escaped excerpt of at most 40 characters.
//!
//! ```
//! use halo_ids::{HaloGuid, Crn};
//! let halo: HaloGuid = "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}".parse()?;
//! assert_eq!(halo.to_string(), "3f2504e0-4f89-11d3-9a0c-0305e82c3301");
//! assert_eq!(halo.fake_crn(), "3F2504E0".parse::<Crn>()?);
//! # Ok::<(), halo_ids::IdError>(())
//! ```

mod crn;
mod environment;
mod epoch;
mod error;
mod guid;
mod mode;
mod pms;
mod serde_str;
mod time;

pub use crn::Crn;
pub use environment::Environment;
pub use epoch::Epoch;
pub use error::{Field, IdError, Rule};
pub use guid::{HaloGuid, LinkGuid};
pub use mode::ExecutionMode;
pub use pms::{PmsId, PmsType};
pub use time::Timestamp;

#[cfg(test)]
mod tests;

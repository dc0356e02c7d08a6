//! Versioned Cloud <-> Link wire messages with a frame-size limit.
//!
//! The Link keeps one outbound WebSocket to the Cloud. Every WebSocket **text** frame
//! carries exactly one JSON message: [`LinkToCloud`] from the Link, [`CloudToLink`]
//! from the Cloud. Each message is an object with a `"type"` tag (camelCase) and
//! camelCase fields.
//!
//! ## Conversation
//!
//! 1. The Link connects, sending `Authorization: Bearer <token>` on the upgrade.
//! 2. Link → [`Hello`] (its GUID, environment, version, [`PROTOCOL_VERSION`] and the
//!    databases it serves, with the identity each database holds about itself).
//! 3. Cloud → [`CloudToLink::HelloAck`] or [`CloudToLink::Refused`] (then closes).
//! 4. Link → [`Heartbeat`] every few seconds.
//! 5. Cloud → [`QueryJob`]; Link → [`QueryResult`] or [`QueryFailed`] with the same
//!    query id. Cloud → [`CloudToLink::Cancel`] stops a running job or takes a
//!    waiting one out of the Link's queue (the Link then answers with
//!    [`QueryFailed`] of kind [`QueryErrorKind::Cancelled`], or not at all if the
//!    job already finished). A job that has not started within its
//!    [`QueryJob::queue_timeout_ms`] is answered with [`QueryErrorKind::Busy`].
//!
//! 6. Paged results (the async path): Cloud → [`StreamJob`]; Link → [`ResultPage`]s
//!    then [`ResultEnd`] (or [`QueryFailed`]); Cloud → [`CloudToLink::StreamAck`]
//!    as it stores pages, which lets the Link send more (at most `window` pages
//!    unacknowledged). [`CloudToLink::Cancel`] stops it like any job.
//!
//! ## Versioning
//!
//! [`Hello`] carries `protocolVersion`; [`decode`] rejects a hello of any other
//! version with [`ProtocolError::UnsupportedVersion`], so the Cloud can answer with
//! [`CloudToLink::Refused`]. Unknown fields are ignored (adding an optional field is
//! compatible); a new message type or a changed field needs a new version.
//!
//! ## Limits
//!
//! [`decode`] checks the frame length against [`MAX_FRAME_BYTES`] *before* parsing, and
//! [`encode`] refuses to produce a larger frame. Result data is capped at
//! [`MAX_RESULT_BYTES`] (8 MiB of JSON) by the Link; base64 makes that at most
//! 10.7 MiB on the wire, which fits in the frame limit with room for the envelope.
//!
//! ```
//! use halo_protocol::{CloudToLink, decode, encode};
//! let frame = encode(&CloudToLink::Cancel { query_id: 7 })?;
//! assert_eq!(frame, r#"{"type":"cancel","queryId":7}"#);
//! assert_eq!(decode::<CloudToLink>(&frame)?, CloudToLink::Cancel { query_id: 7 });
//! # Ok::<(), halo_protocol::ProtocolError>(())
//! ```

mod error;
mod fast;
mod message;
mod stream;

pub use error::ProtocolError;
pub use fast::{decode_cloud_frame, decode_link_frame};
pub use message::{
    Allowlist, BranchCrn, CatalogueInfo, CloudToLink, DatabaseInfo, DatabaseRejection, Heartbeat,
    Hello, LinkToCloud, QueryError, QueryErrorKind, QueryFailed, QueryJob, QueryResult, rows_json,
};
pub use stream::{ResultEnd, ResultPage, StreamJob};

/// How a command runs (`QueryJob::mode`); defined in [`halo_ids`], shared with policy.
pub use halo_ids::ExecutionMode;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol version this crate speaks; carried in [`Hello::protocol_version`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest result payload, in bytes of compact JSON (before base64): 8 MiB.
pub const MAX_RESULT_BYTES: usize = 8 * 1024 * 1024;

/// The largest frame [`decode`] accepts and [`encode`] produces: 12 MiB, enough for
/// a [`MAX_RESULT_BYTES`] result in base64 plus its envelope.
pub const MAX_FRAME_BYTES: usize = 12 * 1024 * 1024;

/// A message that can travel in a frame, in either direction.
pub trait Message: Serialize + DeserializeOwned + sealed::Sealed {
    /// The protocol version a decoded message declares, if it declares one.
    fn declared_version(&self) -> Option<u32>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::LinkToCloud {}
    impl Sealed for super::CloudToLink {}
}

impl Message for LinkToCloud {
    fn declared_version(&self) -> Option<u32> {
        match self {
            LinkToCloud::Hello(hello) => Some(hello.protocol_version),
            _ => None,
        }
    }
}

impl Message for CloudToLink {
    fn declared_version(&self) -> Option<u32> {
        None
    }
}

/// Serialises `msg` into one text frame.
///
/// # Errors
///
/// [`ProtocolError::FrameTooLarge`] if the frame would exceed [`MAX_FRAME_BYTES`];
/// [`ProtocolError::Encode`] if serialisation fails (it does not for these types).
pub fn encode<M: Message>(msg: &M) -> Result<String, ProtocolError> {
    let text = serde_json::to_string(msg).map_err(|e| ProtocolError::Encode(e.to_string()))?;
    if text.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge {
            len: text.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(text)
}

/// Parses one text frame, checking its size before parsing and the protocol version
/// of a hello after.
///
/// # Errors
///
/// [`ProtocolError::FrameTooLarge`] for a frame over [`MAX_FRAME_BYTES`] (nothing is
/// parsed), [`ProtocolError::Malformed`] for anything that is not one valid message,
/// [`ProtocolError::UnsupportedVersion`] for a hello of another protocol version.
pub fn decode<M: Message>(frame: &str) -> Result<M, ProtocolError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge {
            len: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let msg: M = serde_json::from_str(frame).map_err(|e| ProtocolError::Malformed {
        line: e.line(),
        column: e.column(),
        reason: short(&e.to_string()),
    })?;
    match msg.declared_version() {
        Some(v) if v != PROTOCOL_VERSION => Err(ProtocolError::UnsupportedVersion {
            got: v,
            supported: PROTOCOL_VERSION,
        }),
        _ => Ok(msg),
    }
}

/// At most 120 characters of a parser message (serde quotes bad input back).
fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests;

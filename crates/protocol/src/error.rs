//! The one error type of the protocol crate.

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame is longer than the limit; it was not parsed.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    FrameTooLarge {
        /// Length of the frame in bytes.
        len: usize,
        /// The limit, [`crate::MAX_FRAME_BYTES`].
        max: usize,
    },
    /// The frame is not valid JSON or not a known message.
    #[error("malformed frame at line {line} column {column}: {reason}")]
    Malformed {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's reason, shortened.
        reason: String,
    },
    /// A hello declared a protocol version this build does not speak.
    #[error("unsupported protocol version {got} (this side speaks {supported})")]
    UnsupportedVersion {
        /// The version the peer declared.
        got: u32,
        /// The version this side speaks, [`crate::PROTOCOL_VERSION`].
        supported: u32,
    },
    /// Result data was not valid base64.
    #[error("result data is not valid base64")]
    BadData,
    /// Serialisation failed.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

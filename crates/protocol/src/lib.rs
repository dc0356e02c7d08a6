//! Versioned Cloud <-> Link wire messages with a frame-size limit.

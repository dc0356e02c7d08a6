//! The Cloud's one clock: adapters read it and pass the time into the core.

use halo_ids::Timestamp;

/// Now, as milliseconds since the Unix epoch (the epoch itself if the system clock
/// is set before 1970).
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

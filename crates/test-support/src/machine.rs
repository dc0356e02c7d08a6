//! What a bench reports about the machine it ran on: the load average, and the CPU
//! time the measuring thread actually got (on a shared machine the wall time of a
//! single-threaded measurement includes the time other processes held the CPU).

/// The one-minute load average (Linux), or -1 where unknown.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(-1.0)
}

/// Nanoseconds the calling thread has run on a CPU (Linux `schedstat`), or 0
/// where unknown. The difference of two readings is the CPU time between them.
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

/// Seconds of CPU time the calling thread got since `start` (a [`thread_cpu_ns`]
/// reading).
pub fn cpu_secs_since(start: u64) -> f64 {
    thread_cpu_ns().saturating_sub(start) as f64 / 1e9
}

/// Resident set size in bytes (Linux), or 0 where unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

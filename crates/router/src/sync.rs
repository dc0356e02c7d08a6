//! The one place the router names its synchronisation primitives, so loom can swap them.
//!
//! Under `cfg(loom)` (run with `RUSTFLAGS="--cfg loom" cargo test -p halo-router --release
//! --test loom_slot`) these are loom's model-checked types; otherwise the std ones. Only
//! the router's own protocols (the in-flight slot, the queue's parking flag, the
//! per-Link in-flight counter) go through here: the table (papaya) and the policy cell
//! (arc-swap) are third-party and carry their own model tests.

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

/// Locks a mutex, recovering the data if a holder panicked: the slot and waker cells
/// hold plain values whose every state is valid, so poisoning carries no meaning here.
pub(crate) fn lock<T>(m: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    #[cfg(loom)]
    {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }
    #[cfg(not(loom))]
    {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

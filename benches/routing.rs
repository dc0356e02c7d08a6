//! Placeholder: filled in by the issue that owns this hot path.

fn main() {}

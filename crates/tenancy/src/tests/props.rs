//! Property tests over generated event sequences.

//! Property checks shared by the fuzz targets and by the stable corpus test
//! (`tests/fuzz_corpus.rs` includes `checks.rs` by path).

pub mod checks;

//! Page-level damage to a SQLite file, as the damaged-storage tests of `halo-store`
//! and `halo-cloud` inflict it. Test code: panics on any IO failure.
#![allow(clippy::expect_used)]

use std::path::Path;

/// The page size of the SQLite file at `file`, from its header.
pub fn page_size(file: &Path) -> u64 {
    let bytes = std::fs::read(file).expect("read");
    match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        n => u64::from(n),
    }
}

/// The attack: cut the file short by one page.
pub fn truncate_one_page(file: &Path) {
    let len = std::fs::metadata(file).expect("metadata").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open for truncation");
    f.set_len(len - page_size(file)).expect("truncate");
}

/// The attack: flip byte 100 (the type byte of page 1's b-tree header).
pub fn flip_byte_100(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read");
    bytes[100] ^= 0xff;
    std::fs::write(file, bytes).expect("write");
}

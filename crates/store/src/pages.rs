//! A reader of SQLite's file format, page by page, for salvage.
//!
//! When SQLite itself can no longer read a file (its first page is damaged, say),
//! the records are usually still there, in table leaf pages. This module reads the
//! main file and the committed frames of its WAL the way SQLite would (the newest
//! committed copy of each page wins), and walks every table leaf page's cells,
//! including payloads that spill onto overflow pages. It trusts nothing it reads:
//! every offset and length is checked against the page, and a page or cell that
//! does not make sense is skipped. The caller decides what a cell is (a log record
//! proves itself by its CRC-32).
//!
//! Format reference: <https://www.sqlite.org/fileformat2.html>.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const WAL_MAGIC_LE: u32 = 0x377f_0682;
const WAL_MAGIC_BE: u32 = 0x377f_0683;
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;
/// Table b-tree leaf page.
const LEAF_TABLE: u8 = 0x0d;
/// Payloads larger than this are not reassembled (SQLite's own limit is 1e9).
const MAX_PAYLOAD: u64 = 1 << 30;

/// A damaged database file (and its WAL) opened for page-by-page reading.
#[derive(Debug)]
pub(crate) struct Pages {
    db: File,
    db_len: u64,
    wal: Option<File>,
    /// The newest committed WAL frame of each page: where its page image starts.
    wal_frames: HashMap<u32, u64>,
    page_size: usize,
    usable: usize,
    count: u32,
    /// What was odd about the file, for the salvage report.
    pub(crate) notes: Vec<String>,
}

/// One cell of a table leaf page: a row's rowid and (the start of) its record.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    /// The row's rowid (for an `INTEGER PRIMARY KEY` table, that column's value).
    pub(crate) rowid: i64,
    /// The whole record's length.
    payload_len: u64,
    /// The part of the record stored on the leaf page.
    pub(crate) local: Vec<u8>,
    /// The first overflow page of the rest (0: none).
    overflow: u32,
}

/// A column of a decoded record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Col<'a> {
    /// NULL (also how an `INTEGER PRIMARY KEY` column is stored: the rowid holds it).
    Null,
    /// An integer.
    Int(i64),
    /// A floating-point value.
    Real,
    /// A text value's bytes.
    Text(&'a [u8]),
    /// A blob.
    Blob(&'a [u8]),
    /// A column whose bytes lie past the end of the slice decoded (the record's
    /// start only was given).
    Beyond,
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(usize::from(u16::from_be_bytes([s[0], s[1]])))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// SQLite's variable-length integer: 1 to 9 bytes, big-endian, 7 bits a byte
/// (the ninth byte gives 8). Returns the value and its length.
pub(crate) fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Decodes a record (or the start of one: columns past the end are
/// [`Col::Beyond`]). `None` if its header is malformed or not within `payload`.
pub(crate) fn columns(payload: &[u8]) -> Option<Vec<Col<'_>>> {
    let (header_len, mut at) = varint(payload)?;
    let header_len = usize::try_from(header_len).ok()?;
    if header_len > payload.len() || header_len < at {
        return None;
    }
    let mut body = header_len;
    let mut cols = Vec::new();
    while at < header_len {
        if cols.len() >= 64 {
            return None;
        }
        let (serial, n) = varint(payload.get(at..header_len)?)?;
        at += n;
        let size = match serial {
            0 | 8 | 9 => 0,
            1 => 1,
            2 => 2,
            3 => 3,
            4 => 4,
            5 => 6,
            6 | 7 => 8,
            10 | 11 => return None,
            n => usize::try_from((n - 12) / 2).ok()?,
        };
        let end = body.checked_add(size)?;
        let Some(bytes) = payload.get(body..end) else {
            cols.push(Col::Beyond);
            body = end;
            continue;
        };
        cols.push(match serial {
            0 => Col::Null,
            8 => Col::Int(0),
            9 => Col::Int(1),
            1..=6 => {
                // Big-endian two's complement of 1 to 8 bytes, sign-extended.
                let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
                let mut wide = [fill; 8];
                wide[8 - size..].copy_from_slice(bytes);
                Col::Int(i64::from_be_bytes(wide))
            }
            7 => Col::Real,
            n if n % 2 == 0 => Col::Blob(bytes),
            _ => Col::Text(bytes),
        });
        body = end;
    }
    Some(cols)
}

/// How much of a table leaf cell's payload is stored on the page itself.
fn local_len(payload_len: u64, usable: usize) -> u64 {
    let u = usable as u64;
    let max_local = u - 35;
    if payload_len <= max_local {
        return payload_len;
    }
    let min_local = ((u - 12) * 32 / 255) - 23;
    let k = min_local + ((payload_len - min_local) % (u - 4));
    if k <= max_local { k } else { min_local }
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
fn wal_checksum(big_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    let (mut s0, mut s1) = s;
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let a = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        s0 = s0.wrapping_add(word(&pair[0..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..8])).wrapping_add(s0);
    }
    (s0, s1)
}

fn valid_page_size(n: usize) -> bool {
    (512..=65536).contains(&n) && n.is_power_of_two()
}

fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// The committed frames of a WAL: the newest frame of each page, and the database
/// size in pages at the last commit.
struct Wal {
    frames: HashMap<u32, u64>,
    db_pages: Option<u32>,
    page_size: usize,
}

fn read_wal(wal: &File, notes: &mut Vec<String>) -> std::io::Result<Option<Wal>> {
    let len = wal.metadata()?.len();
    if len < WAL_HEADER {
        return Ok(None);
    }
    let mut header = [0u8; WAL_HEADER as usize];
    read_at(wal, 0, &mut header)?;
    let magic = be32(&header, 0).unwrap_or(0);
    let big_endian = match magic {
        WAL_MAGIC_BE => true,
        WAL_MAGIC_LE => false,
        _ => {
            notes.push("the WAL file has no valid header; it was ignored".to_owned());
            return Ok(None);
        }
    };
    let page_size = be32(&header, 8).and_then(|n| usize::try_from(n).ok());
    let Some(page_size) = page_size.filter(|&n| valid_page_size(n)) else {
        notes.push("the WAL header's page size is invalid; the WAL was ignored".to_owned());
        return Ok(None);
    };
    let mut sum = wal_checksum(big_endian, &header[..24], (0, 0));
    if Some(sum) != be32(&header, 24).zip(be32(&header, 28)) {
        notes.push("the WAL header fails its checksum; the WAL was ignored".to_owned());
        return Ok(None);
    }
    let salts = &header[16..24];
    let mut frames = HashMap::new();
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut db_pages = None;
    let mut frame = vec![0u8; FRAME_HEADER as usize + page_size];
    let mut offset = WAL_HEADER;
    while offset + frame.len() as u64 <= len {
        read_at(wal, offset, &mut frame)?;
        let (Some(page), Some(commit)) = (be32(&frame, 0), be32(&frame, 4)) else {
            break;
        };
        if page == 0 || &frame[8..16] != salts {
            break;
        }
        sum = wal_checksum(big_endian, &frame[..8], sum);
        sum = wal_checksum(big_endian, &frame[FRAME_HEADER as usize..], sum);
        if Some(sum) != be32(&frame, 16).zip(be32(&frame, 20)) {
            break;
        }
        pending.push((page, offset + FRAME_HEADER));
        if commit != 0 {
            frames.extend(pending.drain(..));
            db_pages = Some(commit);
        }
        offset += frame.len() as u64;
    }
    if !pending.is_empty() {
        notes.push(format!(
            "{} WAL frame(s) after the last commit were ignored (never committed)",
            pending.len()
        ));
    }
    Ok(Some(Wal {
        frames,
        db_pages,
        page_size,
    }))
}

impl Pages {
    /// Opens `db` (and `wal`, if given) for reading; neither is written.
    pub(crate) fn open(db: &Path, wal: Option<&Path>) -> std::io::Result<Pages> {
        let db_file = File::open(db)?;
        let db_len = db_file.metadata()?.len();
        let mut notes = Vec::new();
        let mut header = vec![0u8; 100];
        let header_ok = read_at(&db_file, 0, &mut header).is_ok() && header[..16] == MAGIC[..];
        if !header_ok {
            notes.push("the file's header is not SQLite's".to_owned());
        }
        let header_page_size = be16(&header, 16)
            .map(|n| if n == 1 { 65536 } else { n })
            .filter(|&n| header_ok && valid_page_size(n));
        let (wal_file, wal) = match wal {
            Some(path) => {
                let f = File::open(path)?;
                let w = read_wal(&f, &mut notes)?;
                (Some(f), w)
            }
            None => (None, None),
        };
        let wal = match (wal, header_page_size) {
            (Some(w), Some(ps)) if w.page_size != ps => {
                notes.push(format!(
                    "the WAL's page size ({}) differs from the file's ({ps}); the WAL was ignored",
                    w.page_size
                ));
                None
            }
            (w, _) => w,
        };
        let page_size = header_page_size
            .or(wal.as_ref().map(|w| w.page_size))
            .unwrap_or_else(|| {
                notes.push("page size unknown; assuming 4096".to_owned());
                4096
            });
        let reserved = if header_ok {
            usize::from(header[20])
        } else {
            0
        };
        let usable = if page_size - reserved >= 480 {
            page_size - reserved
        } else {
            page_size
        };
        let file_pages = u32::try_from(db_len / page_size as u64).unwrap_or(u32::MAX);
        if db_len % page_size as u64 != 0 {
            notes.push(format!(
                "the file ends {} byte(s) into a page (it was cut short)",
                db_len % page_size as u64
            ));
        }
        let header_pages = be32(&header, 28).filter(|_| header_ok).unwrap_or(0);
        // Only pages that exist somewhere are worth visiting: a damaged header may
        // claim billions.
        let stored = wal
            .as_ref()
            .and_then(|w| w.frames.keys().max().copied())
            .unwrap_or(0)
            .max(file_pages);
        let claimed = match wal.as_ref().and_then(|w| w.db_pages) {
            Some(n) => n,
            None => {
                if header_pages > file_pages {
                    notes.push(format!(
                        "the file holds {file_pages} page(s) but its header records {header_pages}: {} page(s) are missing from its end",
                        header_pages - file_pages
                    ));
                }
                header_pages.max(file_pages)
            }
        };
        let count = claimed.min(stored);
        let (wal_frames, wal) = match wal {
            Some(w) => (w.frames, wal_file),
            None => (HashMap::new(), None),
        };
        Ok(Pages {
            db: db_file,
            db_len,
            wal,
            wal_frames,
            page_size,
            usable,
            count,
            notes,
        })
    }

    /// The number of pages the database has (some may be missing from the file).
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The newest committed image of page `n` (1-based), or `None` if it is not in
    /// the file or cannot be read.
    pub(crate) fn page(&self, n: u32) -> Option<Vec<u8>> {
        if n == 0 || n > self.count {
            return None;
        }
        let mut buf = vec![0u8; self.page_size];
        if let (Some(&at), Some(wal)) = (self.wal_frames.get(&n), self.wal.as_ref()) {
            return read_at(wal, at, &mut buf).ok().map(|()| buf);
        }
        let at = u64::from(n - 1) * self.page_size as u64;
        if at + self.page_size as u64 > self.db_len {
            return None;
        }
        read_at(&self.db, at, &mut buf).ok().map(|()| buf)
    }

    /// The pages on the freelist (unused, possibly holding stale rows), or `None`
    /// if the freelist cannot be read.
    pub(crate) fn free_pages(&self) -> Option<HashSet<u32>> {
        let first = self.page(1)?;
        if first.get(..16)? != &MAGIC[..] {
            return None;
        }
        let mut trunk = be32(&first, 32)?;
        let total = be32(&first, 36)?;
        let mut free = HashSet::new();
        while trunk != 0 {
            if !free.insert(trunk) {
                return None;
            }
            let page = self.page(trunk)?;
            let next = be32(&page, 0)?;
            let leaves = usize::try_from(be32(&page, 4)?).ok()?;
            if leaves > (self.usable - 8) / 4 {
                return None;
            }
            for i in 0..leaves {
                let leaf = be32(&page, 8 + 4 * i)?;
                if leaf == 0 || leaf > self.count || !free.insert(leaf) {
                    return None;
                }
            }
            trunk = next;
        }
        (u32::try_from(free.len()).ok() == Some(total)).then_some(free)
    }

    /// The cells of page `n` if it is a table leaf page (nothing otherwise); cells
    /// that point outside the page are skipped.
    pub(crate) fn leaf_cells(&self, n: u32, page: &[u8]) -> Vec<Cell> {
        let hdr = if n == 1 { 100 } else { 0 };
        let usable = self.usable.min(page.len());
        if page.get(hdr) != Some(&LEAF_TABLE) {
            return Vec::new();
        }
        let Some(cells) = be16(page, hdr + 3) else {
            return Vec::new();
        };
        let pointers = hdr + 8;
        let content_min = pointers + 2 * cells;
        if content_min > usable {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(cells);
        for i in 0..cells {
            if let Some(cell) = self.cell(page, usable, content_min, pointers + 2 * i) {
                out.push(cell);
            }
        }
        out
    }

    fn cell(&self, page: &[u8], usable: usize, content_min: usize, pointer: usize) -> Option<Cell> {
        let at = be16(page, pointer)?;
        if at < content_min || at >= usable {
            return None;
        }
        let area = &page[at..usable];
        let (payload_len, a) = varint(area)?;
        let (rowid, b) = varint(area.get(a..)?)?;
        if payload_len > MAX_PAYLOAD {
            return None;
        }
        let local = usize::try_from(local_len(payload_len, self.usable)).ok()?;
        let start = a + b;
        let local_bytes = area.get(start..start.checked_add(local)?)?.to_vec();
        let overflow = if (local as u64) < payload_len {
            be32(area, start + local)?
        } else {
            0
        };
        Some(Cell {
            rowid: i64::from_be_bytes(rowid.to_be_bytes()),
            payload_len,
            local: local_bytes,
            overflow,
        })
    }

    /// The whole record of `cell`, following its overflow pages; `None` if a page
    /// of the chain is missing or the chain is broken.
    pub(crate) fn payload(&self, cell: &Cell) -> Option<Vec<u8>> {
        // A record cannot be larger than the file it is in.
        if cell.payload_len > u64::from(self.count) * self.usable as u64 {
            return None;
        }
        let total = usize::try_from(cell.payload_len).ok()?;
        let mut out = Vec::with_capacity(total.min(1 << 20));
        out.extend_from_slice(&cell.local);
        let mut next = cell.overflow;
        let per_page = self.usable - 4;
        let mut hops = 0usize;
        while out.len() < total {
            hops += 1;
            if next == 0 || hops > total / per_page + 2 {
                return None;
            }
            let page = self.page(next)?;
            next = be32(&page, 0)?;
            let take = per_page.min(total - out.len());
            out.extend_from_slice(page.get(4..4 + take)?);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_like_sqlite() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x81]), None);
        assert_eq!(varint(&[]), None);
    }

    #[test]
    fn records_decode_and_refuse_nonsense() {
        // header 4 bytes: NULL, 1-byte int, 3-byte blob.
        let rec = [4u8, 0, 1, 18, 0xfe, b'a', b'b', b'c'];
        assert_eq!(
            columns(&rec),
            Some(vec![Col::Null, Col::Int(-2), Col::Blob(b"abc")])
        );
        assert_eq!(
            columns(&rec[..6]),
            Some(vec![Col::Null, Col::Int(-2), Col::Beyond])
        );
        assert_eq!(columns(&[9u8, 0]), None, "header longer than the record");
        assert_eq!(columns(&[2u8, 10]), None, "reserved serial type");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Whatever the bytes, reading pages, cells, records and the freelist
        /// never panics and never allocates past the file.
        #[test]
        fn any_bytes_are_read_without_panicking(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 4 * 512),
            leaf_at in proptest::collection::vec(0usize..4, 0..4),
            reserved in 0u8..40,
        ) {
            let mut bytes = body;
            bytes[..16].copy_from_slice(MAGIC);
            bytes[16..18].copy_from_slice(&512u16.to_be_bytes());
            bytes[20] = reserved;
            for p in leaf_at {
                bytes[p * 512 + if p == 0 { 100 } else { 0 }] = LEAF_TABLE;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let db = dir.path().join("fuzz.db");
            std::fs::write(&db, &bytes).expect("write");
            let pages = Pages::open(&db, None).expect("open");
            let _ = pages.free_pages();
            for n in 1..=pages.count() {
                let Some(page) = pages.page(n) else { continue };
                for cell in pages.leaf_cells(n, &page) {
                    let _ = columns(&cell.local);
                    if let Some(full) = pages.payload(&cell) {
                        let _ = columns(&full);
                    }
                }
            }
        }
    }

    #[test]
    fn local_payload_sizes_match_the_file_format() {
        // 4096-byte pages: up to 4061 bytes stay on the leaf.
        assert_eq!(local_len(4061, 4096), 4061);
        // Past that, the minimum local size: ((4096 - 12) * 32 / 255) - 23.
        assert_eq!(local_len(4062, 4096), 489);
    }
}

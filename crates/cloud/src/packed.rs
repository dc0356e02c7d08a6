//! The large binary parts of a snapshot (the registry, the audit trail) as JSON
//! text. The store keeps snapshots as JSON, so bytes travel as base64; since
//! snapshot format 5 they are LZ4-compressed first (`lz4_flex`, block format with
//! the size in front) and the text starts with `lz4:`. A million sites' parts shrink
//! about sevenfold (270 MB of base64 to under 40 MB), so a restart reads, checks,
//! scans and decodes a seventh of the bytes, and a snapshot writes a seventh.
//! Text without the prefix is the plain base64 of formats 3 and 4, which still loads.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// What marks a compressed part (`:` is not in the base64 alphabet).
const PREFIX: &str = "lz4:";

/// The largest ratio of decompressed to compressed size LZ4 can express (a byte of
/// run length stands for at most 255 bytes); a size claimed beyond it is damage,
/// refused before anything is allocated for it.
const MAX_RATIO: usize = 255;

/// Why a part could not be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PackError {
    /// Not base64.
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The size in front of the compressed bytes cannot be right.
    #[error("the compressed part claims {claimed} bytes from {compressed}")]
    Size {
        /// What the part says it decompresses to.
        claimed: usize,
        /// Its compressed length.
        compressed: usize,
    },
    /// The compressed bytes are damaged.
    #[error("damaged: {0}")]
    Lz4(#[from] lz4_flex::block::DecompressError),
}

/// `bytes` as the text of a format-5 part: `lz4:` and base64 of the LZ4 block.
pub(crate) fn pack(bytes: &[u8]) -> String {
    let compressed = lz4_flex::block::compress_prepend_size(bytes);
    let mut out = String::with_capacity(PREFIX.len() + compressed.len().div_ceil(3) * 4);
    out.push_str(PREFIX);
    STANDARD.encode_string(&compressed, &mut out);
    out
}

/// The bytes of a part: format 5's compressed text, or the plain base64 of
/// formats 3 and 4.
pub(crate) fn unpack(text: &str) -> Result<Vec<u8>, PackError> {
    let Some(packed) = text.strip_prefix(PREFIX) else {
        return Ok(STANDARD.decode(text)?);
    };
    let compressed = STANDARD.decode(packed)?;
    let claimed = compressed.get(..4).map_or(usize::MAX, |b| {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    });
    if claimed > compressed.len().saturating_mul(MAX_RATIO) {
        return Err(PackError::Size {
            claimed,
            compressed: compressed.len(),
        });
    }
    Ok(lz4_flex::block::decompress_size_prepended(&compressed)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn round_trips_and_reads_the_plain_base64_of_older_formats() {
        let bytes: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let text = pack(&bytes);
        assert!(text.starts_with(PREFIX));
        assert!(text.len() < STANDARD.encode(&bytes).len() / 2, "compressed");
        assert_eq!(unpack(&text).unwrap(), bytes);
        assert_eq!(unpack(&STANDARD.encode(&bytes)).unwrap(), bytes);
        assert_eq!(unpack(&pack(&[])).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn damaged_parts_are_refused_never_misread() {
        let bytes: Vec<u8> = (0..4_000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        let text = pack(&bytes);
        let compressed = STANDARD.decode(&text[PREFIX.len()..]).unwrap();
        // Every truncation is refused.
        for cut in 0..compressed.len() {
            let damaged = format!("{PREFIX}{}", STANDARD.encode(&compressed[..cut]));
            assert!(unpack(&damaged).is_err(), "cut at {cut}");
        }
        // A claimed size no LZ4 block can reach is refused before allocating it.
        let mut huge = compressed.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let damaged = format!("{PREFIX}{}", STANDARD.encode(&huge));
        assert!(matches!(unpack(&damaged), Err(PackError::Size { .. })));
        assert!(unpack("lz4:not base64!").is_err());
    }
}

//! Anonymous shared mappings: memory that the `process` model's children share with the parent
//! because it was mapped before the first fork. The tables kept there (sessions, lock-outs)
//! hold only atomics, whose all-zero bit pattern is a valid initial value.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Maps `size` zeroed bytes shared across fork. The mapping is never unmapped: it lives as long
/// as the process, as the tables in it do.
pub fn map_zeroed(size: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous mapping with no address hint has no preconditions; the result is
    // checked against MAP_FAILED.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

/// Writes `text` into `words` (8 bytes each, little-endian), NUL-padded and cut at a
/// character boundary to fit: the tables' way of keeping short strings in atomics.
pub fn store_text(words: &[AtomicU64], text: &str) {
    let mut end = text.len().min(words.len() * 8);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    for (i, word) in words.iter().enumerate() {
        let mut chunk = [0u8; 8];
        let from = (i * 8).min(bytes.len());
        let part = &bytes[from..(from + 8).min(bytes.len())];
        chunk[..part.len()].copy_from_slice(part);
        word.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
    }
}

/// Reads what [`store_text`] wrote (up to the first NUL).
pub fn load_text(words: &[AtomicU64]) -> String {
    let bytes: Vec<u8> =
        words.iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_is_cut_on_a_char_boundary() {
        let words: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        store_text(&words, "peer\tuser");
        assert_eq!(load_text(&words), "peer\tuser");
        store_text(&words, &"ñ".repeat(20));
        assert_eq!(load_text(&words), "ñ".repeat(12), "24 bytes, whole characters");
        store_text(&words, "");
        assert_eq!(load_text(&words), "");
    }
}

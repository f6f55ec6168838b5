//! Anonymous shared mappings: memory that the `process` model's children share with the parent
//! because it was mapped before the first fork. The tables kept there (sessions, lock-outs)
//! hold only atomics, whose all-zero bit pattern is a valid initial value.

use std::io;

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

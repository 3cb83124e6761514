//! Fresh output buffers: a first write to new 4 KiB pages faults once per page, which made a
//! 0.5 GB output cost 5× the write itself. Huge pages cut that to one fault per 2 MiB.

/// Asks the OS to back `buf` with transparent huge pages (Linux; elsewhere a no-op: macOS and
/// Windows have no such advice). Only pages not yet touched benefit; the contents are
/// unchanged either way.
pub fn advise_huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    linux::advise_huge_pages(buf);
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

#[cfg(target_os = "linux")]
mod linux {
    /// Outputs smaller than this keep their pages as they are.
    const HUGE_MIN_BYTES: usize = 4 << 20;
    const HUGE: usize = 2 << 20;

    pub fn advise_huge_pages<T>(buf: &mut [T]) {
        let bytes = std::mem::size_of_val(buf);
        if bytes < HUGE_MIN_BYTES {
            return;
        }
        let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_mut_ptr() as usize + bytes) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside `buf`, which we borrow mutably; MADV_HUGEPAGE is
            // advice only and never changes the memory's contents. Failure is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

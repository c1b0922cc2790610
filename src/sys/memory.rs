//! How the C library's allocator hands memory back. glibc serves large allocations from their
//! own mappings, returned to the kernel on free, but after the first such free it raises that
//! threshold (up to 32 MiB) and serves later ones from its heaps, which keep freed memory. A
//! decoder that allocates and frees a 24 MiB buffer per xz block then holds several of them
//! at once in its threads' heaps: resident memory grows well past what it is using.

/// Allocations of `bytes` and more get mappings of their own, returned to the kernel when
/// freed, for the rest of the process (a fixed threshold also stops glibc from raising it).
/// Nothing to do outside glibc. Returns whether the allocator took the setting.
pub fn return_large_allocations(bytes: usize) -> bool {
    #[cfg(target_env = "gnu")]
    {
        let Ok(bytes) = libc::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: mallopt changes a number in the allocator's state under its own lock; it
        // reads or writes no memory of ours and is safe to call from any thread at any time.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = bytes;
        false
    }
}

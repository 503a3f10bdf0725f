//! Giving freed memory back to the operating system, for the long-running daemon.

/// Returns the allocator's free memory to the operating system.
///
/// A reconcile at a million users allocates and frees a few hundred MB on several threads.
/// glibc keeps freed memory in its per-thread arenas, so an idle daemon would go on holding
/// the peak of its last pass; `malloc_trim` hands it back. Elsewhere this does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only walks the allocator's own free lists,
    // under its own locks; it may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

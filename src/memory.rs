//! Keeping the long-running daemon's memory near what it holds: the allocator's settings, and
//! giving freed memory back to the operating system.

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

/// The size from which the daemon's allocations get pages of their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_PAGES_FROM: libc::c_int = 1 << 20;

/// Sets the allocator up for a process that lives long and holds a few large arrays (the
/// desired state and the snapshot: tens of MB each at a million users), rebuilt at every pass.
///
/// glibc maps an allocation above its threshold into pages of its own, returned to the system
/// when freed; but by default the threshold rises to the size of each such block freed, up to
/// 32 MB, so after the first pass those arrays land in the arenas, where each rebuild leaves
/// a hole the next one may not fit. A fixed threshold keeps them out. Elsewhere this does
/// nothing.
pub fn tune_for_long_running() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes plain integers and only sets the allocator's parameters, under
    // its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM);
    }
}

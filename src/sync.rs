//! The one mutex policy: a lock whose holder panicked is recovered, not propagated. Every
//! update made under attrsync's locks is a whole assignment, push, pop or increment, so the data
//! behind a poisoned lock is still valid, and one panicked task must not take the process down.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering it if a holder panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

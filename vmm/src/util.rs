//! Small helpers any room may use: a lock that survives a poisoned mutex,
//! and an error with its causes as one line.

use std::error::Error;
use std::sync::{Mutex, MutexGuard};

/// A device whose lock was poisoned by a panicking thread is still the best
/// state we have; the VM keeps running rather than panicking every vCPU.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// "outer: cause: root cause", the way the error's sources nest.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

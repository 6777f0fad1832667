//! Monotonic nanoseconds since the first call in this process.

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the monotonic clock since this process first asked.
/// Starts at 1 so 0 can mean "never".
#[inline]
pub fn now_ns() -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_nanos() as u64 + 1
}

/// Seconds to nanoseconds, for command-line durations.
pub fn secs_to_ns(secs: f64) -> u64 {
    (secs.max(0.0) * 1e9) as u64
}

//! When this process started (noted first thing in `main`), for cold-start figures, and elapsed milliseconds.

use std::sync::OnceLock;
use std::time::Instant;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Notes when this process started; call it first thing in `main`.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// Milliseconds from the process's start to `instant`.
pub fn ms_from_process_start(instant: Instant) -> f64 {
    instant.saturating_duration_since(*PROCESS_START.get_or_init(Instant::now)).as_secs_f64() * 1e3
}

/// Milliseconds since `start`.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Milliseconds since the process started.
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
pub fn ms_since_process_start() -> f64 {
    ms_from_process_start(Instant::now())
}

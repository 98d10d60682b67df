//! The process's global allocator: the counting system allocator from `lookout_models::allocations`, read by
//! `lookout bench --suite frames` and by the tests that prove a per-frame path allocation-free.

#[cfg(any(test, feature = "bench"))]
pub use lookout_models::allocations::allocations;
use lookout_models::allocations::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

//! The allocation count of the counting system allocator (`lookout_models::allocations`), which the `lookout`
//! binary and this crate's unit tests install: read by `lookout bench --suite frames` and by the tests that prove a
//! per-frame path allocation-free.

pub use lookout_models::allocations::allocations;

#[cfg(test)]
#[global_allocator]
static GLOBAL: lookout_models::allocations::Counting = lookout_models::allocations::Counting;

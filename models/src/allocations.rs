//! An allocator that counts the allocations each thread makes: the system allocator plus one thread-local add.
//! The `lookout` binary installs it so `lookout bench --suite frames` can report allocations per frame, and tests
//! install it to prove a per-frame or per-token path allocation-free.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting; install it with `#[global_allocator]` in the binary or test that reads the count.
pub struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a thread-local counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (and reallocations) this thread has made so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::allocations;

    #[test]
    fn the_count_sees_this_threads_allocations_only() {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let theirs = barrier.clone();
        let other = std::thread::spawn(move || {
            theirs.wait();
            drop(std::hint::black_box(vec![1u8; 100]));
            theirs.wait();
        });
        let before = allocations();
        barrier.wait();
        barrier.wait();
        assert_eq!(allocations(), before, "another thread's allocation was counted here");
        let v = std::hint::black_box(vec![1u8; 100]);
        let z = std::hint::black_box(vec![0u64; 100]);
        assert_eq!(allocations(), before + 2);
        drop((v, z));
        other.join().unwrap();
    }
}

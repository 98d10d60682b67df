//! An allocator that counts the allocations each thread makes: the system allocator plus one thread-local add.
//! The `lookout` binary installs it so `lookout bench --suite frames` can report allocations per frame, and tests
//! install it to prove a per-frame or per-token path allocation-free. In this crate's own tests it also tracks the
//! bytes a thread holds, to prove a parser's memory bounded whatever its input declares.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting; install it with `#[global_allocator]` in the binary or test that reads the count.
pub struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// Bytes this thread allocated less the bytes it freed (memory freed here that another thread allocated
    /// counts too, so it may go below zero).
    static HELD_BYTES: Cell<i64> = const { Cell::new(0) };
    static PEAK_HELD_BYTES: Cell<i64> = const { Cell::new(0) };
}

#[cfg(test)]
fn hold(bytes: i64) {
    let _ = HELD_BYTES.try_with(|held| {
        let now = held.get() + bytes;
        held.set(now);
        let _ = PEAK_HELD_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; only a thread-local counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        #[cfg(test)]
        hold(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        #[cfg(test)]
        hold(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        #[cfg(test)]
        hold(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        #[cfg(test)]
        hold(new_size as i64 - layout.size() as i64);
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

/// The most bytes this thread has held at once since the measure started, beyond what it held then.
#[cfg(test)]
pub struct PeakBytes {
    start: i64,
}

#[cfg(test)]
impl PeakBytes {
    pub fn start() -> PeakBytes {
        let start = HELD_BYTES.with(Cell::get);
        PEAK_HELD_BYTES.with(|peak| peak.set(start));
        PeakBytes { start }
    }

    pub fn peak(&self) -> u64 {
        (PEAK_HELD_BYTES.with(Cell::get) - self.start).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::{allocations, PeakBytes};

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

    #[test]
    fn the_peak_sees_what_was_held_at_once() {
        let measure = PeakBytes::start();
        let small = std::hint::black_box(vec![1u8; 1000]);
        drop(small);
        let large = std::hint::black_box(vec![1u8; 1 << 20]);
        drop(large);
        let peak = measure.peak();
        assert!((1 << 20..(1 << 20) + 1000).contains(&peak), "peak {peak}");
    }
}

//! The scheduler's fixed buffers: a pool of preallocated frames, bounded queues that drop their oldest entry when
//! full, and an audio ring that overwrites its oldest samples; each counts what it had to drop. Nothing here
//! allocates after construction.

use std::time::Instant;

use heapless::Deque;
use lookout_models::vision::image::RgbImage;

/// Most frames a pool can hold (the board configs allow 2..=64).
pub const MAX_FRAMES: usize = 64;

/// One RGB frame slot of the pool.
/// One captured frame, converted to RGB.
#[derive(Debug)]
pub struct Frame {
    pub sequence: u64,
    pub captured_at: Option<Instant>,
    pub image: RgbImage,
}

/// A frame's place in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameId(u8);

#[derive(Debug)]
pub struct FramePool {
    frames: Vec<Frame>,
    free: heapless::Vec<FrameId, MAX_FRAMES>,
    /// Times a frame was wanted and none was free.
    pub exhausted: u64,
}

impl FramePool {
    pub fn new(count: usize, width: u32, height: u32) -> FramePool {
        let count = count.clamp(1, MAX_FRAMES);
        let frames =
            (0..count).map(|_| Frame { sequence: 0, captured_at: None, image: RgbImage::new(width, height) }).collect();
        let mut free = heapless::Vec::new();
        for i in (0..count).rev() {
            // `count` is at most MAX_FRAMES, the free list's capacity.
            let _ = free.push(FrameId(i as u8));
        }
        FramePool { frames, free, exhausted: 0 }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.frames.len()
    }

    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// A free frame, or `None` (counted) when every frame is in use.
    pub fn acquire(&mut self) -> Option<FrameId> {
        let id = self.free.pop();
        if id.is_none() {
            self.exhausted += 1;
        }
        id
    }

    pub fn release(&mut self, id: FrameId) {
        debug_assert!(!self.free.contains(&id), "frame {id:?} released twice");
        // The free list holds every frame at most once, so it never overflows.
        let _ = self.free.push(id);
    }

    #[cfg(test)]
    pub fn frame(&self, id: FrameId) -> &Frame {
        &self.frames[id.0 as usize]
    }

    pub fn frame_mut(&mut self, id: FrameId) -> &mut Frame {
        &mut self.frames[id.0 as usize]
    }
}

/// A bounded queue between two stages: pushing into a full queue drops the oldest entry, returns it (so its
/// frame can go back to the pool) and counts it.
#[derive(Debug)]
pub struct DropOldest<T, const N: usize> {
    items: Deque<T, N>,
    pub pushed: u64,
    pub dropped: u64,
}

impl<T, const N: usize> Default for DropOldest<T, N> {
    fn default() -> Self {
        DropOldest { items: Deque::new(), pushed: 0, dropped: 0 }
    }
}

impl<T, const N: usize> DropOldest<T, N> {
    /// Adds `item`; when the queue was full the oldest entry is removed and returned.
    pub fn push(&mut self, item: T) -> Option<T> {
        self.pushed += 1;
        let dropped = if self.items.is_full() {
            self.dropped += 1;
            self.items.pop_front()
        } else {
            None
        };
        // There is room now: either it was not full or the oldest entry just left.
        let _ = self.items.push_back(item);
        dropped
    }

    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The last `capacity` samples of 16 kHz audio; writing more than fits overwrites the oldest and counts them.
/// Frames between capture and the vision stage: at most `FRAME_QUEUE` waiting, the oldest dropped (and counted)
/// when a newer one arrives. Images move in and out by swapping buffers with the caller, so a frame is never
/// copied or allocated on its way through.
#[derive(Debug)]
pub struct FrameQueue {
    pool: FramePool,
    waiting: DropOldest<FrameId, FRAME_QUEUE>,
}

pub const FRAME_QUEUE: usize = 4;

impl FrameQueue {
    pub fn new(pool_frames: usize, width: u32, height: u32) -> FrameQueue {
        FrameQueue { pool: FramePool::new(pool_frames, width, height), waiting: DropOldest::default() }
    }

    /// Queues the frame in `image`; `image` gets back an unused buffer of the pool.
    pub fn publish(&mut self, image: &mut RgbImage, sequence: u64, captured_at: Instant) {
        let id = match self.pool.acquire() {
            Some(id) => id,
            None => {
                let Some(oldest) = self.waiting.pop() else { return };
                self.waiting.dropped += 1;
                oldest
            }
        };
        let frame = self.pool.frame_mut(id);
        std::mem::swap(&mut frame.image, image);
        frame.sequence = sequence;
        frame.captured_at = Some(captured_at);
        if let Some(dropped) = self.waiting.push(id) {
            self.pool.release(dropped);
        }
    }

    /// Moves the newest waiting frame into `image` (whose buffer goes back to the pool); older waiting frames
    /// are dropped and counted, since a scene is only worth analysing while it is current.
    pub fn take(&mut self, image: &mut RgbImage) -> Option<(u64, Option<Instant>)> {
        let mut id = self.waiting.pop()?;
        while let Some(newer) = self.waiting.pop() {
            self.waiting.dropped += 1;
            self.pool.release(id);
            id = newer;
        }
        let frame = self.pool.frame_mut(id);
        std::mem::swap(&mut frame.image, image);
        let taken = (frame.sequence, frame.captured_at);
        self.pool.release(id);
        Some(taken)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Frames dropped because a newer one arrived before they were taken.
    pub fn dropped(&self) -> u64 {
        self.waiting.dropped
    }

    /// Frames ever queued.
    #[cfg(test)]
    pub fn published(&self) -> u64 {
        self.waiting.pushed
    }

    #[cfg(test)]
    pub fn pool(&self) -> &FramePool {
        &self.pool
    }
}

#[derive(Debug)]
pub struct AudioRing {
    samples: Vec<f32>,
    /// Index of the next write.
    head: usize,
    len: usize,
    /// Samples overwritten before anyone read them.
    pub overwritten: u64,
}

impl AudioRing {
    pub fn new(capacity: usize) -> AudioRing {
        AudioRing { samples: vec![0.0; capacity.max(1)], head: 0, len: 0, overwritten: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.samples.len()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, input: &[f32]) {
        let capacity = self.samples.len();
        // Only the newest `capacity` samples of an oversized write can survive.
        let skipped = input.len().saturating_sub(capacity);
        let input = &input[skipped..];
        let lost = (self.len + input.len()).saturating_sub(capacity) + skipped;
        self.overwritten += lost as u64;
        let first = input.len().min(capacity - self.head);
        self.samples[self.head..self.head + first].copy_from_slice(&input[..first]);
        self.samples[..input.len() - first].copy_from_slice(&input[first..]);
        self.head = (self.head + input.len()) % capacity;
        self.len = (self.len + input.len()).min(capacity);
    }

    /// Moves the oldest samples, up to `out.len()`, into `out`; returns how many.
    /// Copies the `out.len()` samples that end `skip_newest` samples before the newest, without consuming them;
    /// returns how many were available.
    pub fn copy_latest(&self, skip_newest: usize, out: &mut [f32]) -> usize {
        let capacity = self.samples.len();
        let n = out.len().min(self.len.saturating_sub(skip_newest));
        let end = (self.head + capacity - skip_newest.min(self.len)) % capacity;
        let start = (end + capacity - n) % capacity;
        let first = n.min(capacity - start);
        out[..first].copy_from_slice(&self.samples[start..start + first]);
        out[first..n].copy_from_slice(&self.samples[..n - first]);
        n
    }

    #[cfg(test)]
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        let capacity = self.samples.len();
        let n = out.len().min(self.len);
        let start = (self.head + capacity - self.len) % capacity;
        let first = n.min(capacity - start);
        out[..first].copy_from_slice(&self.samples[start..start + first]);
        out[first..n].copy_from_slice(&self.samples[..n - first]);
        self.len -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_hands_out_each_frame_once_and_counts_exhaustion() {
        let mut pool = FramePool::new(3, 4, 2);
        assert_eq!(pool.frame(FrameId(0)).image.data.len(), 24);
        let ids: Vec<FrameId> = (0..3).map(|_| pool.acquire().unwrap()).collect();
        assert_eq!(ids, [FrameId(0), FrameId(1), FrameId(2)]);
        assert_eq!(pool.acquire(), None);
        assert_eq!(pool.exhausted, 1);
        pool.frame_mut(ids[1]).sequence = 7;
        pool.release(ids[1]);
        let again = pool.acquire().unwrap();
        assert_eq!(again, ids[1]);
        assert_eq!(pool.frame(again).sequence, 7);
        assert_eq!(FramePool::new(1000, 2, 2).capacity(), MAX_FRAMES);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_entry_and_returns_it() {
        let mut queue: DropOldest<u32, 2> = DropOldest::default();
        assert_eq!(queue.push(1), None);
        assert_eq!(queue.push(2), None);
        assert_eq!(queue.push(3), Some(1));
        assert_eq!((queue.pushed, queue.dropped, queue.len()), (3, 1, 2));
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
        assert!(queue.is_empty());
    }

    #[test]
    fn queued_frames_swap_buffers_and_only_the_newest_is_taken() {
        let mut frames = FrameQueue::new(2, 2, 2);
        let mut image = RgbImage::new(2, 2);
        for sequence in 0..3u64 {
            image.data.fill(sequence as u8);
            frames.publish(&mut image, sequence, Instant::now());
        }
        assert_eq!((frames.published(), frames.dropped(), frames.waiting()), (3, 1, 2));
        let (sequence, _) = frames.take(&mut image).unwrap();
        assert_eq!((sequence, image.data[0], frames.dropped()), (2, 2, 2), "the newest is taken, the older dropped");
        assert!(frames.take(&mut image).is_none());
        assert_eq!(frames.pool().available(), 2);
    }

    #[test]
    fn copy_latest_reads_back_from_the_newest_without_consuming() {
        let mut ring = AudioRing::new(4);
        ring.write(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut out = [0.0; 2];
        assert_eq!(ring.copy_latest(1, &mut out), 2);
        assert_eq!(out, [4.0, 5.0]);
        let mut all = [0.0; 8];
        assert_eq!(ring.copy_latest(0, &mut all), 4);
        assert_eq!(&all[..4], &[3.0, 4.0, 5.0, 6.0]);
        assert_eq!(ring.len(), 4);
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_in_order_and_counts_the_overwritten() {
        let mut ring = AudioRing::new(5);
        ring.write(&[1.0, 2.0, 3.0]);
        ring.write(&[4.0, 5.0, 6.0, 7.0]);
        assert_eq!((ring.len(), ring.overwritten), (5, 2));
        let mut out = [0.0; 3];
        assert_eq!(ring.read(&mut out), 3);
        assert_eq!(out, [3.0, 4.0, 5.0]);
        ring.write(&[8.0]);
        let mut rest = [0.0; 8];
        assert_eq!(ring.read(&mut rest), 3);
        assert_eq!(&rest[..3], &[6.0, 7.0, 8.0]);
        assert!(ring.is_empty());
        ring.write(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(ring.overwritten, 6);
        assert_eq!(ring.read(&mut rest), 5);
        assert_eq!(&rest[..5], &[4.0, 5.0, 6.0, 7.0, 8.0]);
    }
}

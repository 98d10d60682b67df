//! The fixed-memory scheduler's parts: preallocated buffers and bounded queues (`buffers`), and deadlines on an
//! injectable clock so tests can run time forward.

pub mod buffers;

use std::time::{Duration, Instant};

/// Time since the pipeline started; the daemon uses the monotonic clock, tests a manual one.
pub trait Clock {
    fn now(&self) -> Duration;

    /// Where `instant`, taken from the monotonic clock by another thread (a frame's capture, a question's arrival),
    /// falls on this clock: now, less the instant's age.
    fn at(&self, instant: Instant) -> Duration {
        self.now().saturating_sub(instant.elapsed())
    }
}

pub struct MonotonicClock(Instant);

impl MonotonicClock {
    /// A clock that reads zero at `origin`.
    pub fn since(origin: Instant) -> MonotonicClock {
        MonotonicClock(origin)
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }

    fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.0)
    }
}

/// A clock that moves only when told to, so tests run the scheduler's time forward without waiting.
#[derive(Debug, Default)]
pub struct ManualClock(std::cell::Cell<Duration>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.set(self.0.get() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.0.get()
    }
}

/// A stage's time limit for one item; every miss is counted.
#[derive(Debug, Default)]
pub struct Deadline {
    pub budget: Duration,
    pub misses: u64,
}

impl Deadline {
    pub fn new(budget: Duration) -> Deadline {
        Deadline { budget, misses: 0 }
    }

    /// Records a piece of work that started at `started`; true when it finished within the budget.
    pub fn finish(&mut self, clock: &dyn Clock, started: Duration) -> bool {
        let on_time = clock.now().saturating_sub(started) <= self.budget;
        if !on_time {
            self.misses += 1;
        }
        on_time
    }
}

#[cfg(test)]
mod tests {
    use super::buffers::{AudioRing, FrameQueue};
    use super::*;
    use crate::allocations::allocations;

    #[test]
    fn deadlines_count_misses_on_an_injected_clock() {
        let clock = ManualClock::default();
        let mut deadline = Deadline::new(Duration::from_millis(500));
        let started = clock.now();
        clock.advance(Duration::from_millis(400));
        assert!(deadline.finish(&clock, started));
        clock.advance(Duration::from_millis(200));
        assert!(!deadline.finish(&clock, started));
        assert_eq!(deadline.misses, 1);
    }

    /// Capture into a pooled frame, queue it, drop the oldest when the consumer lags, hand frames back, and move
    /// audio through the ring: after construction none of it touches the allocator.
    #[test]
    fn per_frame_and_per_sample_work_allocates_nothing() {
        use lookout_models::vision::image::RgbImage;
        use lookout_models::vision::pixels::fit_into;

        use crate::daemon::metrics::Histogram;
        use crate::daemon::pipeline::{signature, CaptionPolicy};
        use crate::daemon::sources::Utterances;

        let mut frames = FrameQueue::new(4, 64, 48);
        let mut captured = RgbImage::new(64, 48);
        let mut working = RgbImage::new(64, 48);
        let mut scene = lookout_models::vision::Scene::default();
        scene.counts.insert("person".into(), 2);
        let mut policy = CaptionPolicy::new(Some(Duration::from_secs(60)), true);
        let latency = Histogram::default();
        let now = std::time::Instant::now();
        let mut ring = AudioRing::new(16_000 * 10);
        let mut utterances = Utterances::new(lookout_models::vad::VadRules::default(), ring.capacity());
        let chunk = [0.25f32; 512];
        let clock = ManualClock::default();
        let mut deadline = Deadline::new(Duration::from_millis(200));

        // Raw camera frames of 128x96 in each layout a V4L2 camera delivers, converted into one reused image.
        use lookout_models::vision::pixels::{convert_frame, PixelFormat};
        let raw = [
            (PixelFormat::Yuyv, vec![128u8; 128 * 96 * 2]),
            (PixelFormat::Nv12, vec![128u8; 128 * 96 * 3 / 2]),
            (PixelFormat::Rgb24, vec![128u8; 128 * 96 * 3]),
        ];
        let mut converted = RgbImage::new(128, 96);

        let before = allocations();
        for sequence in 0..10_000u64 {
            let started = clock.now();
            let (format, bytes) = &raw[sequence as usize % raw.len()];
            convert_frame(*format, bytes, 128, 96, &mut converted).unwrap();
            fit_into(&converted, 64, 48, &mut captured);
            frames.publish(&mut captured, sequence, now);
            // The vision stage keeps up with one frame in three.
            if sequence % 3 == 0 && frames.take(&mut working).is_some() {
                policy.observe(signature(&scene));
                std::hint::black_box(policy.due(clock.now()));
            }
            ring.write(&chunk);
            std::hint::black_box(utterances.push(if sequence % 50 < 20 { 0.9 } else { 0.1 }, chunk.len(), false));
            clock.advance(Duration::from_millis(if sequence % 100 == 0 { 300 } else { 50 }));
            latency.observe(clock.now() - started);
            deadline.finish(&clock, started);
        }
        assert_eq!(allocations(), before, "the per-frame path allocated");
        assert!(
            frames.dropped() > 0 && deadline.misses == 100,
            "dropped {} missed {}",
            frames.dropped(),
            deadline.misses
        );
        let pool = frames.pool();
        assert_eq!(pool.available() + frames.waiting(), pool.capacity(), "every frame is either free or queued");
    }
}

//! Microphones: the `Microphone` trait the scheduler drives, and `SampleReplay`, which plays decoded samples as
//! a microphone in real time, then silence, as a quiet room would.

use std::time::{Duration, Instant};

use crate::DeviceError;

pub trait Microphone: Send {
    /// Mono samples per second.
    fn rate(&self) -> u32;
    /// Blocks until `out` is filled with the next samples, in [-1, 1].
    fn read(&mut self, out: &mut [f32]) -> Result<(), DeviceError>;
    fn name(&self) -> &str;
    /// Reopens a device that reported `Disconnected`.
    fn reconnect(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// How far a late reader may fall behind the replay before time is lost, as a sound card's ring buffer holds what
/// was captured while nobody read.
const REPLAY_BUFFER: Duration = Duration::from_secs(1);

/// Sleeps until the chunk due at `next` has been "captured" and returns when the following one is due. A reader
/// that fell behind gets the chunks it missed at once, up to [`REPLAY_BUFFER`]; beyond that the backlog is
/// dropped, as in an overrun.
fn wait_for_samples(next: Instant, period: Duration) -> Instant {
    let now = Instant::now();
    if next > now {
        std::thread::sleep(next - now);
        next + period
    } else if now - next <= REPLAY_BUFFER {
        next + period
    } else {
        now - REPLAY_BUFFER + period
    }
}

/// Plays `samples` once at `rate` (paced to the wall clock when `pace` is on), then silence forever.
pub struct SampleReplay {
    name: String,
    samples: Vec<f32>,
    position: usize,
    rate: u32,
    pace: bool,
    next_tick: Option<Instant>,
}

impl SampleReplay {
    pub fn new(name: impl Into<String>, samples: Vec<f32>, rate: u32, pace: bool) -> SampleReplay {
        SampleReplay { name: name.into(), samples, position: 0, rate: rate.max(1), pace, next_tick: None }
    }

    /// Whether the recording has been played to its end.
    pub fn finished(&self) -> bool {
        self.position >= self.samples.len()
    }
}

impl Microphone for SampleReplay {
    fn rate(&self) -> u32 {
        self.rate
    }

    fn read(&mut self, out: &mut [f32]) -> Result<(), DeviceError> {
        if self.pace {
            let period = Duration::from_secs_f64(out.len() as f64 / f64::from(self.rate));
            let next = *self.next_tick.get_or_insert_with(|| Instant::now() + period);
            self.next_tick = Some(wait_for_samples(next, period));
        }
        let available = self.samples.len().saturating_sub(self.position).min(out.len());
        out[..available].copy_from_slice(&self.samples[self.position..self.position + available]);
        out[available..].fill(0.0);
        self.position += available;
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_the_samples_then_silence_at_real_time_pace() {
        let mut mic = SampleReplay::new("test", vec![0.5; 1000], 16_000, true);
        let mut chunk = [1.0f32; 800];
        let started = Instant::now();
        mic.read(&mut chunk).unwrap();
        assert!(chunk.iter().all(|&s| s == 0.5));
        mic.read(&mut chunk).unwrap();
        assert!(chunk[..200].iter().all(|&s| s == 0.5) && chunk[200..].iter().all(|&s| s == 0.0));
        assert!(mic.finished());
        // Two chunks of 50 ms each: the first waits one period, the second another.
        assert!(started.elapsed() >= Duration::from_millis(95), "{:?}", started.elapsed());
    }

    #[test]
    fn a_reader_that_fell_behind_gets_the_missed_chunks_at_once() {
        let mut mic = SampleReplay::new("test", vec![0.5; 16_000], 16_000, true);
        let mut chunk = [0.0f32; 800];
        mic.read(&mut chunk).unwrap();
        // Busy for 300 ms: the six 50 ms chunks captured meanwhile come without waiting, the seventh on time.
        std::thread::sleep(Duration::from_millis(300));
        let caught_up = Instant::now();
        for _ in 0..5 {
            mic.read(&mut chunk).unwrap();
        }
        assert!(caught_up.elapsed() < Duration::from_millis(40), "{:?}", caught_up.elapsed());
        let paced = Instant::now();
        mic.read(&mut chunk).unwrap();
        mic.read(&mut chunk).unwrap();
        assert!(paced.elapsed() >= Duration::from_millis(40), "{:?}", paced.elapsed());
    }
}

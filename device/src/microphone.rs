//! Microphones: the `Microphone` trait the scheduler drives, and `SampleReplay`, which plays decoded samples as
//! a microphone in real time, then silence, as a quiet room would.

use std::time::{Duration, Instant};

use crate::{wait_for_tick, DeviceError};

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
            self.next_tick = Some(wait_for_tick(next, period));
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
}

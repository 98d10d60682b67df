//! The capture threads: the camera's frames decoded and scaled into the frame queue, and the microphone's samples
//! through the audio ring and the VAD into spoken questions. Sources are opened from the configuration's device
//! names: `dir:PATH` plays photos as a camera, `wav:PATH` plays a recording as a microphone.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_device::camera::{Camera, FrameFormat, ImageDirCamera};
use lookout_device::microphone::{Microphone, SampleReplay};
use lookout_device::ErrorKind;
use lookout_models::audio;
use lookout_models::vad::{SileroVad, VadRules};
use lookout_models::vision::image::{decode_image_into, RgbImage};
use lookout_models::vision::pixels::{convert_frame, fit_into, PixelFormat};
use serde_json::json;

use super::metrics::Metrics;
use super::state::{Beat, Origin, Question, Shared};
use crate::config::{Config, ConfigError};
use crate::scheduler::buffers::AudioRing;

/// Seconds each photo of a `dir:` camera stays in view.
pub const PHOTO_SECONDS: u32 = 5;
/// Longest pause between reports of the same kind of source error.
const ERROR_REPORT_EVERY: u64 = 100;

/// A device path from the configuration: relative paths are relative to the configuration file.
fn source_path(spec: &str, config_path: &Path) -> PathBuf {
    let path = Path::new(spec);
    match config_path.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

fn unavailable(config_path: &Path, field: &str, reason: String) -> anyhow::Error {
    ConfigError::Field { path: config_path.to_path_buf(), field: field.into(), reason }.into()
}

/// Opens the configured camera; `pace` off delivers frames as fast as they are taken (the soak command).
pub fn open_camera(config: &Config, config_path: &Path, pace: bool) -> anyhow::Result<Box<dyn Camera>> {
    let device = &config.camera.device;
    let Some(dir) = device.strip_prefix("dir:") else {
        return Err(unavailable(
            config_path,
            "camera.device",
            format!("`{device}`: V4L2 cameras are not supported by this build yet; use `dir:PATH` to play photos"),
        ));
    };
    let fps = config.camera.fps;
    let camera = ImageDirCamera::open(&source_path(dir, config_path), fps, fps * PHOTO_SECONDS, pace)
        .map_err(|e| unavailable(config_path, "camera.device", e.to_string()))?;
    Ok(Box::new(camera))
}

/// Opens the configured microphone (16 kHz mono).
pub fn open_microphone(config: &Config, config_path: &Path) -> anyhow::Result<Box<dyn Microphone>> {
    let device = &config.microphone.device;
    let Some(file) = device.strip_prefix("wav:") else {
        return Err(unavailable(
            config_path,
            "microphone.device",
            format!("`{device}`: ALSA capture is not supported by this build yet; use `wav:PATH` to play a recording"),
        ));
    };
    let path = source_path(file, config_path);
    let samples = audio::load_mono_16k(&path).map_err(|e| unavailable(config_path, "microphone.device", format!("{}: {e}", path.display())))?;
    Ok(Box::new(SampleReplay::new(device.clone(), samples, audio::TARGET_SAMPLE_RATE, true)))
}

/// Reads frames until the stop flag is set: decode, scale into the configured size, queue (dropping the oldest).
pub fn run_camera(mut camera: Box<dyn Camera>, width: u32, height: u32, shared: Arc<Shared>) {
    let mut decoded = RgbImage::new(width, height);
    let mut fitted = RgbImage::new(width, height);
    let metrics = &shared.metrics;
    while !shared.stopping() {
        shared.beat(Beat::Camera);
        let frame = match camera.next_frame() {
            Ok(frame) => frame,
            Err(e) => {
                let n = metrics.camera_errors.fetch_add(1, Relaxed);
                if n % ERROR_REPORT_EVERY == 0 {
                    shared.events.emit("error", json!({ "stage": "camera", "kind": format!("{:?}", e.kind), "error": e.message, "count": n + 1 }));
                }
                let backoff = if e.kind == ErrorKind::Disconnected { 1000 } else { 100 };
                std::thread::sleep(Duration::from_millis(backoff));
                continue;
            }
        };
        let started = Instant::now();
        let (sequence, captured_at) = (frame.sequence, frame.captured_at);
        let converted = match frame.format {
            FrameFormat::Mjpeg | FrameFormat::Png => decode_image_into(frame.bytes, &mut decoded).map_err(|e| e.to_string()),
            raw => {
                let format = match raw {
                    FrameFormat::Yuyv => PixelFormat::Yuyv,
                    FrameFormat::Nv12 => PixelFormat::Nv12,
                    _ => PixelFormat::Rgb24,
                };
                convert_frame(format, frame.bytes, frame.width, frame.height, &mut decoded).map_err(|e| e.to_string())
            }
        };
        if let Err(reason) = converted {
            let n = metrics.frames_bad.fetch_add(1, Relaxed);
            if n % ERROR_REPORT_EVERY == 0 {
                shared.events.emit("error", json!({ "stage": "camera", "source": frame.source, "error": reason, "count": n + 1 }));
            }
            continue;
        }
        fit_into(&decoded, width, height, &mut fitted);
        metrics.latency.capture.observe(started.elapsed());
        let mut inbox = shared.inbox();
        inbox.frames.publish(&mut fitted, sequence, captured_at);
        metrics.frames_dropped.store(inbox.frames.dropped(), Relaxed);
        metrics.frame_queue_depth.store(inbox.frames.waiting() as u64, Relaxed);
        drop(inbox);
        Metrics::add(&metrics.frames_captured, 1);
        shared.wake.notify_all();
    }
    shared.heartbeats.retire(Beat::Camera);
}

/// Turns per-chunk speech probabilities into utterances: speech starts above the VAD threshold, ends after
/// `min_silence` below the release level, gets `pad` samples on both sides, and is kept when it lasted
/// `min_speech`. Push-to-talk holds speech open regardless of the probabilities and ends it on release.
#[derive(Debug)]
pub struct Utterances {
    rules: VadRules,
    max_len: u64,
    /// Samples seen so far.
    position: u64,
    speech: Option<Speech>,
    held: bool,
}

#[derive(Debug, Clone, Copy)]
struct Speech {
    began: u64,
    silence: u64,
}

impl Utterances {
    pub fn new(rules: VadRules, max_len: usize) -> Utterances {
        Utterances { rules, max_len: max_len as u64, position: 0, speech: None, held: false }
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Feeds the probability of the next `chunk` samples; returns a finished utterance as `[start, end)`.
    pub fn push(&mut self, probability: f32, chunk: usize, held: bool) -> Option<(u64, u64)> {
        let chunk_start = self.position;
        self.position += chunk as u64;
        let released = self.held && !held;
        self.held = held;
        let pad = self.rules.pad as u64;
        let Some(mut speech) = self.speech else {
            if held || probability >= self.rules.threshold {
                self.speech = Some(Speech { began: chunk_start, silence: 0 });
            }
            return None;
        };
        if held || probability >= self.rules.release {
            speech.silence = 0;
        } else {
            speech.silence += chunk as u64;
        }
        let spoken_until = self.position - speech.silence;
        let start = speech.began.saturating_sub(pad);
        let ended = released || (!held && speech.silence >= self.rules.min_silence as u64);
        let too_long = self.position - start >= self.max_len;
        if !ended && !too_long {
            self.speech = Some(speech);
            return None;
        }
        self.speech = None;
        let end = (spoken_until + pad).min(self.position);
        let long_enough = released || spoken_until - speech.began >= self.rules.min_speech as u64;
        long_enough.then_some((start, end))
    }
}

/// Listens until the stop flag is set: samples into the ring, VAD per chunk, utterances queued as questions.
pub fn run_microphone(mut microphone: Box<dyn Microphone>, vad: Arc<SileroVad>, ring_s: u32, shared: Arc<Shared>) {
    let result = listen(&mut *microphone, &vad, ring_s, &shared);
    if let Err(e) = result {
        Metrics::add(&shared.metrics.microphone_errors, 1);
        shared.events.emit("error", json!({ "stage": "microphone", "error": format!("{e:#}") }));
    }
    shared.heartbeats.retire(Beat::Microphone);
}

fn listen(microphone: &mut dyn Microphone, vad: &SileroVad, ring_s: u32, shared: &Shared) -> anyhow::Result<()> {
    let rate = microphone.rate();
    anyhow::ensure!(rate == audio::TARGET_SAMPLE_RATE, "{}: {rate} Hz; the VAD needs 16 kHz", microphone.name());
    let mut session = vad.session()?;
    let mut chunk = vec![0.0f32; vad.chunk()];
    let mut ring = AudioRing::new(ring_s as usize * rate as usize);
    let mut utterances = Utterances::new(vad.rules, ring.capacity());
    let metrics = &shared.metrics;
    while !shared.stopping() {
        shared.beat(Beat::Microphone);
        if let Err(e) = microphone.read(&mut chunk) {
            let n = metrics.microphone_errors.fetch_add(1, Relaxed);
            if n % ERROR_REPORT_EVERY == 0 {
                shared.events.emit("error", json!({ "stage": "microphone", "kind": format!("{:?}", e.kind), "error": e.message }));
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        ring.write(&chunk);
        metrics.audio_overwritten.store(ring.overwritten, Relaxed);
        let probability = session.probability(&chunk)?;
        let held = shared.push_to_talk.load(Relaxed);
        let Some((start, end)) = utterances.push(probability, chunk.len(), held) else { continue };
        let skip = (utterances.position() - end) as usize;
        let mut samples = vec![0.0f32; (end - start) as usize];
        let got = ring.copy_latest(skip, &mut samples);
        samples.drain(..samples.len() - got);
        Metrics::add(&metrics.utterances, 1);
        shared.events.emit("heard", json!({ "seconds": samples.len() as f64 / f64::from(rate) }));
        if let Err(e) = shared.ask(Question::Speech(samples), Origin::Voice) {
            shared.events.emit("unanswered", json!({ "origin": Origin::Voice, "reason": e.to_string() }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> VadRules {
        VadRules { threshold: 0.5, release: 0.35, min_speech: 1_000, min_silence: 1_000, pad: 200 }
    }

    fn feed(u: &mut Utterances, probabilities: &[f32], held: bool) -> Vec<(u64, u64)> {
        probabilities.iter().filter_map(|&p| u.push(p, 500, held)).collect()
    }

    #[test]
    fn speech_becomes_an_utterance_after_enough_silence_with_padding() {
        let mut u = Utterances::new(rules(), 100_000);
        let found = feed(&mut u, &[0.1, 0.9, 0.8, 0.4, 0.9, 0.1, 0.1, 0.1], false);
        // Speech from 500 to 2500 (0.4 is above the release level), silence from 2500; ends at 3500.
        assert_eq!(found, vec![(300, 2700)]);
        let short = feed(&mut u, &[0.9, 0.1, 0.1, 0.1], false);
        assert!(short.is_empty(), "500 samples of speech is under min_speech");
    }

    #[test]
    fn push_to_talk_holds_the_utterance_open_through_silence_and_ends_it_on_release() {
        let mut u = Utterances::new(rules(), 100_000);
        assert!(feed(&mut u, &[0.0, 0.0, 0.0, 0.0], true).is_empty());
        assert_eq!(feed(&mut u, &[0.0], false), vec![(0, 2200)]);
    }

    #[test]
    fn an_utterance_longer_than_the_ring_is_cut() {
        let mut u = Utterances::new(rules(), 2_000);
        let found = feed(&mut u, &[0.9; 6], false);
        assert_eq!(found, vec![(0, 2000)]);
    }
}

//! The capture threads: the camera's frames decoded and scaled into the frame queue (a camera that goes away is
//! reopened with backoff), and the microphone's samples resampled to 16 kHz when needed, then through the audio
//! ring and the VAD into spoken questions. Sources are opened from the configuration's device names: a V4L2 path
//! or card name and an ALSA PCM name, or `dir:PATH` (photos played as a camera) and `wav:PATH` (a recording
//! played as a microphone).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(any(feature = "v4l2", feature = "alsa"))]
use anyhow::Context as _;
#[cfg(feature = "alsa")]
use lookout_device::alsa_capture::AlsaMicrophone;
use lookout_device::camera::{Camera, FrameFormat, ImageDirCamera};
use lookout_device::microphone::{Microphone, SampleReplay};
#[cfg(feature = "v4l2")]
use lookout_device::v4l2::V4l2Camera;
use lookout_device::ErrorKind;
use lookout_models::audio::{self, StreamResampler};
use lookout_models::vad::{SileroVad, VadRules, VadSession};
use lookout_models::vision::image::{decode_image_into, RgbImage};
use lookout_models::vision::pixels::{convert_frame, fit_into, PixelFormat};
use serde_json::json;

use super::metrics::Metrics;
use super::state::{Beat, Origin, Question, Shared};
use crate::config::{Config, ConfigError, Source};
use crate::scheduler::buffers::AudioRing;

/// Seconds each photo of a `dir:` camera stays in view.
pub const PHOTO_SECONDS: u32 = 5;
/// Reports of a repeated source error: the first, then every this many.
const ERROR_REPORT_EVERY: u64 = 100;
/// Buffers mapped between a V4L2 camera and Lookout.
#[cfg(feature = "v4l2")]
const CAMERA_BUFFERS: u32 = 4;
/// Longest wait between two attempts to reopen a device that went away.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

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

/// A button or LED configured in a binary built without GPIO: a configuration error naming the cargo feature.
#[cfg(not(feature = "gpio"))]
pub fn refuse_gpio(config: &Config, config_path: &Path) -> anyhow::Result<()> {
    let gpio = &config.gpio;
    if gpio.chip == "none" || (gpio.button.is_none() && gpio.led.is_none()) {
        return Ok(());
    }
    let reason = "a button or LED needs GPIO, and this lookout was built without it (cargo feature `gpio`); set \
                  `chip = \"none\"` or use a build with the feature";
    Err(unavailable(config_path, "gpio.chip", reason.into()))
}

/// A device this binary was built without the driver for: a configuration error naming the cargo feature.
#[cfg(not(all(feature = "v4l2", feature = "alsa")))]
fn built_without(
    config_path: &Path,
    field: &str,
    device: &str,
    driver: &str,
    feature: &str,
    file: &str,
) -> anyhow::Error {
    let reason = format!(
        "`{device}` needs {driver}, and this lookout was built without it (cargo feature `{feature}`); use a `{file}` source or a build with the feature"
    );
    unavailable(config_path, field, reason)
}

/// Opens the configured camera; `pace` off delivers frames as fast as they are taken (the soak command).
pub fn open_camera(config: &Config, config_path: &Path, pace: bool) -> anyhow::Result<Box<dyn Camera>> {
    let cam = &config.camera;
    let dir = match &cam.device {
        Source::File(dir, _) => dir,
        #[cfg(feature = "v4l2")]
        Source::Device(device) => {
            let camera = V4l2Camera::open(device, cam.width, cam.height, cam.fps, CAMERA_BUFFERS)
                .with_context(|| format!("camera.device `{device}`"))?;
            return Ok(Box::new(camera));
        }
        #[cfg(not(feature = "v4l2"))]
        Source::Device(device) => {
            return Err(built_without(config_path, "camera.device", device, "V4L2", "v4l2", cam.device.file_prefix()))
        }
    };
    let fps = config.camera.fps;
    let camera = ImageDirCamera::open(&source_path(dir, config_path), fps, fps * PHOTO_SECONDS, pace)
        .map_err(|e| unavailable(config_path, "camera.device", e.to_string()))?;
    Ok(Box::new(camera))
}

/// Opens the configured microphone.
pub fn open_microphone(config: &Config, config_path: &Path) -> anyhow::Result<Box<dyn Microphone>> {
    let mic = &config.microphone;
    let file = match &mic.device {
        Source::File(file, _) => file,
        #[cfg(feature = "alsa")]
        Source::Device(device) => {
            // A period of about one VAD chunk (32 ms).
            let period = (mic.rate as usize * 32).div_ceil(1000);
            let microphone = AlsaMicrophone::open(device, mic.rate, period)
                .with_context(|| format!("microphone.device `{device}`"))?;
            return Ok(Box::new(microphone));
        }
        #[cfg(not(feature = "alsa"))]
        Source::Device(device) => {
            return Err(built_without(
                config_path,
                "microphone.device",
                device,
                "ALSA",
                "alsa",
                mic.device.file_prefix(),
            ))
        }
    };
    let path = source_path(file, config_path);
    let samples = audio::load_mono_16k(&path, audio::AudioLimit::RECORDING)
        .map_err(|e| unavailable(config_path, "microphone.device", format!("{}: {e}", path.display())))?;
    Ok(Box::new(SampleReplay::new(mic.device.to_string(), samples, audio::TARGET_SAMPLE_RATE, true)))
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
            Err(e) if e.kind == ErrorKind::Disconnected => {
                Metrics::add(&metrics.camera_errors, 1);
                shared.events.emit("camera_disconnected", json!({ "camera": camera.name(), "error": e.message }));
                reconnect(&mut || camera.reconnect(), &shared, Beat::Camera, "camera");
                continue;
            }
            Err(e) => {
                let n = metrics.camera_errors.fetch_add(1, Relaxed);
                if n.is_multiple_of(ERROR_REPORT_EVERY) {
                    shared.events.emit("error", json!({ "stage": "camera", "kind": format!("{:?}", e.kind), "error": e.message, "count": n + 1 }));
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let started = Instant::now();
        let (sequence, captured_at) = (frame.sequence, frame.captured_at);
        let converted = match frame.format {
            FrameFormat::Mjpeg | FrameFormat::Png => {
                decode_image_into(frame.bytes, &mut decoded).map_err(|e| e.to_string())
            }
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
            if n.is_multiple_of(ERROR_REPORT_EVERY) {
                shared.events.emit(
                    "error",
                    json!({ "stage": "camera", "source": frame.source, "error": reason, "count": n + 1 }),
                );
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

/// Opens a capture device, waiting up to `wait` while it is absent or busy (a USB camera still appearing at boot):
/// each retry comes after twice the previous pause (up to `MAX_BACKOFF`) and is announced by a `waiting_for_device`
/// event. Any other error, or the device still absent at the end of the wait or when the daemon stops, is returned.
pub fn open_waiting<T>(
    field: &str,
    wait: Duration,
    shared: &Shared,
    mut open: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(500);
    loop {
        let error = match open() {
            Ok(device) => return Ok(device),
            Err(error) => error,
        };
        let absent = error
            .chain()
            .filter_map(|c| c.downcast_ref::<lookout_device::DeviceError>())
            .any(|d| matches!(d.kind, ErrorKind::NotFound | ErrorKind::Busy));
        if !absent || started.elapsed() + pause > wait || shared.stopping() {
            return Err(error);
        }
        shared.events.emit(
            "waiting_for_device",
            json!({ "field": field, "error": format!("{error:#}"), "retry_in_s": pause.as_secs_f64(),
                    "waited_s": started.elapsed().as_secs_f64(), "wait_s": wait.as_secs() }),
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

/// Tries to reopen a device that went away, waiting twice as long after each failure (up to `MAX_BACKOFF`),
/// until it is back or the daemon stops.
fn reconnect(
    reopen: &mut dyn FnMut() -> Result<(), lookout_device::DeviceError>,
    shared: &Shared,
    beat: Beat,
    what: &str,
) {
    let mut backoff = Duration::from_millis(250);
    let mut attempts = 0u32;
    while !shared.stopping() {
        std::thread::sleep(backoff);
        shared.beat(beat);
        attempts += 1;
        match reopen() {
            Ok(()) => {
                shared.events.emit(&format!("{what}_reconnected"), json!({ "attempts": attempts }));
                return;
            }
            Err(_) => backoff = (backoff * 2).min(MAX_BACKOFF),
        }
    }
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

    /// Whether an utterance has begun and not yet ended.
    pub fn in_speech(&self) -> bool {
        self.speech.is_some()
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
    let mut resampler = match rate {
        audio::TARGET_SAMPLE_RATE => None,
        _ => Some(StreamResampler::new(rate, audio::TARGET_SAMPLE_RATE)?),
    };
    let chunk = vad.chunk();
    let mut captured = vec![0.0f32; (rate as usize * chunk).div_ceil(audio::TARGET_SAMPLE_RATE as usize)];
    let mut at_16k: Vec<f32> = Vec::with_capacity(chunk * 16);
    let mut hearing = Hearing::new(vad, ring_s)?;
    let metrics = &shared.metrics;
    while !shared.stopping() {
        shared.beat(Beat::Microphone);
        if let Err(e) = microphone.read(&mut captured) {
            let n = metrics.microphone_errors.fetch_add(1, Relaxed);
            if n.is_multiple_of(ERROR_REPORT_EVERY) || e.kind != ErrorKind::Overrun {
                shared.events.emit("error", json!({ "stage": "microphone", "kind": format!("{:?}", e.kind), "error": e.message, "count": n + 1 }));
            }
            match e.kind {
                ErrorKind::Overrun => {}
                ErrorKind::Disconnected => {
                    reconnect(&mut || microphone.reconnect(), shared, Beat::Microphone, "microphone")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
            continue;
        }
        match &mut resampler {
            Some(r) => r.push(&captured, &mut at_16k)?,
            None => at_16k.extend_from_slice(&captured),
        }
        let mut used = 0;
        while at_16k.len() - used >= chunk {
            hearing.hear(&at_16k[used..used + chunk], shared)?;
            used += chunk;
        }
        at_16k.drain(..used);
    }
    Ok(())
}

/// The 16 kHz side of listening: the audio ring, the VAD and the utterance rules.
struct Hearing<'v> {
    session: VadSession<'v>,
    ring: AudioRing,
    utterances: Utterances,
}

impl<'v> Hearing<'v> {
    fn new(vad: &'v SileroVad, ring_s: u32) -> anyhow::Result<Hearing<'v>> {
        let ring = AudioRing::new(ring_s as usize * audio::TARGET_SAMPLE_RATE as usize);
        let utterances = Utterances::new(vad.rules, ring.capacity());
        Ok(Hearing { session: vad.session()?, ring, utterances })
    }

    /// One VAD chunk: into the ring, scored, and a finished utterance queued as a spoken question.
    fn hear(&mut self, chunk: &[f32], shared: &Shared) -> anyhow::Result<()> {
        self.ring.write(chunk);
        shared.metrics.audio_overwritten.store(self.ring.overwritten, Relaxed);
        let probability = self.session.probability(chunk)?;
        let held = shared.push_to_talk.load(Relaxed);
        let finished = self.utterances.push(probability, chunk.len(), held);
        shared.hearing.store(self.utterances.in_speech(), Relaxed);
        let Some((start, end)) = finished else { return Ok(()) };
        let skip = (self.utterances.position() - end) as usize;
        let mut samples = vec![0.0f32; (end - start) as usize];
        let got = self.ring.copy_latest(skip, &mut samples);
        samples.drain(..samples.len() - got);
        Metrics::add(&shared.metrics.utterances, 1);
        shared.events.emit("heard", json!({ "seconds": samples.len() as f64 / f64::from(audio::TARGET_SAMPLE_RATE) }));
        if let Err(e) = shared.ask(Question::Speech(samples), Origin::Voice) {
            shared.events.emit("unanswered", json!({ "origin": Origin::Voice, "reason": e.to_string() }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::buffers::FrameQueue;

    #[test]
    fn an_absent_device_is_waited_for_with_backoff_and_other_errors_are_not() {
        use lookout_device::DeviceError;
        let shared = Shared::new(FrameQueue::new(2, 2, 2), "x86-dev");
        let failing = |kind| move || -> anyhow::Result<()> { Err(DeviceError::new(kind, "/dev/video0").into()) };

        // Absent twice, then there: found after pauses of 0.5 and 1 s.
        let (mut attempts, started) = (0, Instant::now());
        let opened = open_waiting("camera.device", Duration::from_secs(5), &shared, || {
            attempts += 1;
            match attempts {
                1 | 2 => Err(anyhow::Error::from(DeviceError::new(ErrorKind::NotFound, "/dev/video0"))
                    .context("camera.device `/dev/video0`")),
                n => Ok(n),
            }
        });
        assert_eq!(opened.unwrap(), 3);
        assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());

        // Still absent when the wait is over: the last error, after one pause that fitted in 0.7 s.
        let mut attempts = 0;
        let absent = failing(ErrorKind::NotFound);
        let error = open_waiting("camera.device", Duration::from_millis(700), &shared, || {
            attempts += 1;
            absent()
        });
        assert!(error.unwrap_err().to_string().contains("/dev/video0"));
        assert_eq!(attempts, 2);

        // Not an absent device: no waiting at all.
        let mut attempts = 0;
        let broken = failing(ErrorKind::BadData);
        assert!(open_waiting("camera.device", Duration::from_secs(60), &shared, || {
            attempts += 1;
            broken()
        })
        .is_err());
        assert_eq!(attempts, 1);
    }

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

//! Whisper's log-mel spectrogram of 16 kHz mono audio, matching openai-whisper's `log_mel_spectrogram`.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the spectrogram is defined for.
pub const SAMPLE_RATE: u32 = 16_000;
/// STFT window length in samples (25 ms).
pub const N_FFT: usize = 400;
/// STFT hop in samples (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Frequency bins of one STFT frame.
pub const N_FREQ_BINS: usize = N_FFT / 2 + 1;
/// Mel bands of the Whisper models other than large-v3.
pub const N_MELS: usize = 80;
/// Frames in Whisper's standard 30 s window.
pub const CHUNK_FRAMES: usize = 3000;

/// Mel energies are clamped to this before the logarithm.
const MIN_MEL_ENERGY: f32 = 1e-10;
/// Dynamic range kept below the loudest value, in log10 units.
const DYNAMIC_RANGE: f32 = 8.0;

/// Slaney-normalised mel filterbank on the Slaney mel scale from 0 Hz to `sample_rate / 2`,
/// row-major `[n_mels][n_fft / 2 + 1]`; the same values as
/// `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)`.
pub fn mel_filterbank(n_mels: usize, n_fft: usize, sample_rate: u32) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let nyquist = f64::from(sample_rate) / 2.0;
    let bin_frequencies = linspace(0.0, nyquist, n_bins);
    let band_edges: Vec<f64> = linspace(0.0, hz_to_mel(nyquist), n_mels + 2).into_iter().map(mel_to_hz).collect();

    let mut weights = vec![0.0f32; n_mels * n_bins];
    for (band, row) in weights.chunks_exact_mut(n_bins.max(1)).enumerate().take(n_mels) {
        let (left, centre, right) = (band_edges[band], band_edges[band + 1], band_edges[band + 2]);
        let area_norm = 2.0 / (right - left);
        for (weight, &frequency) in row.iter_mut().zip(&bin_frequencies) {
            let rising = -(left - frequency) / (centre - left);
            let falling = (right - frequency) / (right - centre);
            // librosa stores the triangle as f32 and then scales it in f64.
            let triangle = rising.min(falling).max(0.0) as f32;
            *weight = (f64::from(triangle) * area_norm) as f32;
        }
    }
    weights
}

/// numpy's `linspace(start, stop, count)`, including its rounding.
fn linspace(start: f64, stop: f64, count: usize) -> Vec<f64> {
    if count == 1 {
        return vec![start];
    }
    let step = (stop - start) / (count - 1) as f64;
    (0..count).map(|i| if i + 1 == count { stop } else { i as f64 * step + start }).collect()
}

const SLANEY_HZ_PER_MEL: f64 = 200.0 / 3.0;
const SLANEY_LOG_START_HZ: f64 = 1000.0;

fn slaney_log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    let log_start_mel = SLANEY_LOG_START_HZ / SLANEY_HZ_PER_MEL;
    if hz >= SLANEY_LOG_START_HZ {
        log_start_mel + (hz / SLANEY_LOG_START_HZ).ln() / slaney_log_step()
    } else {
        hz / SLANEY_HZ_PER_MEL
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let log_start_mel = SLANEY_LOG_START_HZ / SLANEY_HZ_PER_MEL;
    if mel >= log_start_mel {
        SLANEY_LOG_START_HZ * (slaney_log_step() * (mel - log_start_mel)).exp()
    } else {
        SLANEY_HZ_PER_MEL * mel
    }
}

/// The non-zero part of one mel filter.
struct MelBand {
    first_bin: usize,
    weights_start: usize,
    weights_end: usize,
}

/// Whisper log-mel spectrogram computer. Build once; [`LogMel::compute_into`] then runs
/// without allocating.
pub struct LogMel {
    n_mels: usize,
    bands: Vec<MelBand>,
    band_weights: Vec<f32>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
    frame: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    fft_scratch: Vec<Complex<f32>>,
    power: Vec<f32>,
}

impl Default for LogMel {
    fn default() -> Self {
        Self::new()
    }
}

impl LogMel {
    /// Spectrogram with Whisper's 80 mel bands.
    pub fn new() -> Self {
        Self::with_mel_bands(N_MELS)
    }

    /// Spectrogram with `n_mels` mel bands (128 for Whisper large-v3).
    pub fn with_mel_bands(n_mels: usize) -> Self {
        let dense = mel_filterbank(n_mels, N_FFT, SAMPLE_RATE);
        let mut bands = Vec::with_capacity(n_mels);
        let mut band_weights = Vec::new();
        for row in dense.chunks_exact(N_FREQ_BINS) {
            let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
            let end = row.iter().rposition(|&w| w != 0.0).map_or(first, |last| last + 1);
            let weights_start = band_weights.len();
            band_weights.extend_from_slice(&row[first..end]);
            bands.push(MelBand { first_bin: first, weights_start, weights_end: band_weights.len() });
        }

        // Periodic Hann window, as torch.hann_window(N_FFT).
        let window = (0..N_FFT)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64;
                (0.5 - 0.5 * phase.cos()) as f32
            })
            .collect();

        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let frame = fft.make_input_vec();
        let spectrum = fft.make_output_vec();
        let fft_scratch = fft.make_scratch_vec();
        LogMel { n_mels, bands, band_weights, window, fft, frame, spectrum, fft_scratch, power: vec![0.0; N_FREQ_BINS] }
    }

    /// Number of mel bands, the row count of the output.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Writes the log-mel spectrogram of `samples` (16 kHz mono) into `out`, row-major
    /// `[n_mels][n_frames]`.
    ///
    /// The samples are zero-padded or trimmed to `n_frames * HOP_LENGTH`, reflect-padded by
    /// `N_FFT / 2` on both sides and transformed with a periodic Hann window; the STFT's last
    /// frame is dropped, as Whisper does. The `max - 8` clamp applies over this window.
    /// `n_frames = CHUNK_FRAMES` gives Whisper's standard 30 s input; `n_frames` must be at
    /// least 2 for the reflection to match torch.stft.
    ///
    /// # Panics
    /// If `out.len() != n_mels * n_frames`.
    pub fn compute_into(&mut self, samples: &[f32], n_frames: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.n_mels * n_frames, "log-mel output buffer must hold n_mels * n_frames values");
        if n_frames == 0 {
            return;
        }
        let padded_len = n_frames * HOP_LENGTH;
        let signal = &samples[..samples.len().min(padded_len)];
        let silent_log = MIN_MEL_ENERGY.log10();
        let mut max_log = f32::NEG_INFINITY;

        for frame_index in 0..n_frames {
            let start = (frame_index * HOP_LENGTH) as isize - (N_FFT / 2) as isize;
            let end = start + N_FFT as isize;
            if start >= signal.len() as isize && end <= padded_len as isize {
                // Only zero padding under this frame: every mel energy is 0.
                for band in 0..self.n_mels {
                    out[band * n_frames + frame_index] = silent_log;
                }
                max_log = max_log.max(silent_log);
                continue;
            }
            if start >= 0 && end <= signal.len() as isize {
                let source = &signal[start as usize..end as usize];
                for ((x, &s), &w) in self.frame.iter_mut().zip(source).zip(&self.window) {
                    *x = s * w;
                }
            } else {
                for (offset, (x, &w)) in self.frame.iter_mut().zip(&self.window).enumerate() {
                    *x = reflected_sample(signal, padded_len, start + offset as isize) * w;
                }
            }

            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.fft_scratch)
                .expect("FFT buffers are sized by the plan at construction");
            for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }

            for (band_index, band) in self.bands.iter().enumerate() {
                let weights = &self.band_weights[band.weights_start..band.weights_end];
                let power = &self.power[band.first_bin..band.first_bin + weights.len()];
                let energy: f32 = weights.iter().zip(power).map(|(w, p)| w * p).sum();
                let log = energy.max(MIN_MEL_ENERGY).log10();
                out[band_index * n_frames + frame_index] = log;
                max_log = max_log.max(log);
            }
        }

        let floor = max_log - DYNAMIC_RANGE;
        for value in out.iter_mut() {
            *value = (value.max(floor) + 4.0) / 4.0;
        }
    }

    /// Allocating form of [`LogMel::compute_into`].
    pub fn compute(&mut self, samples: &[f32], n_frames: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.n_mels * n_frames];
        self.compute_into(samples, n_frames, &mut out);
        out
    }
}

/// Sample `index` of `signal` zero-padded to `padded_len` and then reflect-padded
/// (mirrored about its first and last samples, without repeating them).
fn reflected_sample(signal: &[f32], padded_len: usize, index: isize) -> f32 {
    let len = padded_len as isize;
    let index = if len <= 1 {
        0
    } else {
        let period = 2 * (len - 1);
        let folded = index.rem_euclid(period);
        if folded >= len {
            period - folded
        } else {
            folded
        }
    };
    signal.get(index as usize).copied().unwrap_or(0.0)
}

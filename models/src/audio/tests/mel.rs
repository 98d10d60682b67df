//! Log-mel tests: against whisper's own filterbank and spectrogram, and against a direct
//! transcription of whisper's algorithm.

use std::f64::consts::PI;

use super::{max_abs_diff, read_npy_f32, require_testdata};
use crate::audio::mel::{CHUNK_FRAMES, HOP_LENGTH, N_FFT, N_FREQ_BINS, N_MELS};
use crate::audio::{decode_file, mel_filterbank, to_mono_16k, AudioLimit, LogMel};

/// openai-whisper's `log_mel_spectrogram(pad_or_trim(audio, n_frames * HOP))`, written out
/// step by step in f64 with a direct DFT.
fn whisper_log_mel(samples: &[f32], n_frames: usize, filters: &[f32]) -> Vec<f32> {
    let len = n_frames * HOP_LENGTH;
    let mut audio: Vec<f64> = samples.iter().take(len).map(|&s| f64::from(s)).collect();
    audio.resize(len, 0.0);

    let pad = N_FFT / 2;
    let mut padded: Vec<f64> = (1..=pad).rev().map(|j| audio[j]).collect();
    padded.extend_from_slice(&audio);
    padded.extend((0..pad).map(|j| audio[len - 2 - j]));

    let window: Vec<f64> = (0..N_FFT).map(|n| 0.5 - 0.5 * (2.0 * PI * n as f64 / N_FFT as f64).cos()).collect();
    let cos: Vec<f64> = (0..N_FFT).map(|i| (2.0 * PI * i as f64 / N_FFT as f64).cos()).collect();
    let sin: Vec<f64> = (0..N_FFT).map(|i| (2.0 * PI * i as f64 / N_FFT as f64).sin()).collect();

    let stft_frames = 1 + len / HOP_LENGTH;
    let kept_frames = stft_frames - 1;
    let mut log_spec = vec![0.0f64; N_MELS * kept_frames];
    let mut power = vec![0.0f64; N_FREQ_BINS];
    for t in 0..kept_frames {
        let frame = &padded[t * HOP_LENGTH..t * HOP_LENGTH + N_FFT];
        for (k, p) in power.iter_mut().enumerate() {
            let (mut re, mut im) = (0.0, 0.0);
            for n in 0..N_FFT {
                let x = frame[n] * window[n];
                re += x * cos[(k * n) % N_FFT];
                im -= x * sin[(k * n) % N_FFT];
            }
            *p = re * re + im * im;
        }
        for m in 0..N_MELS {
            let row = &filters[m * N_FREQ_BINS..(m + 1) * N_FREQ_BINS];
            let energy: f64 = row.iter().zip(&power).map(|(&w, &p)| f64::from(w) * p).sum();
            log_spec[m * kept_frames + t] = energy.max(1e-10).log10();
        }
    }
    let max = log_spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    log_spec.iter().map(|&x| ((x.max(max - 8.0) + 4.0) / 4.0) as f32).collect()
}

/// Deterministic speech-like test signal: two tones, a chirp and pseudo-random noise.
fn test_signal(len: usize) -> Vec<f32> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (state >> 8) as f64 / f64::from(1u32 << 24) - 0.5;
            let t = i as f64 / 16_000.0;
            let value = 0.3 * (2.0 * PI * 220.0 * t).sin()
                + 0.1 * (2.0 * PI * 3_100.0 * t).sin()
                + 0.05 * (2.0 * PI * (500.0 + 2_000.0 * t) * t).sin()
                + 0.02 * noise;
            value as f32
        })
        .collect()
}

#[test]
fn log_mel_matches_whisper_algorithm_on_short_windows() {
    let filters = mel_filterbank(N_MELS, N_FFT, 16_000);
    let mut log_mel = LogMel::new();
    // (signal length, frames): zero-padded, trimmed, exactly filled, and minimal windows.
    for (len, n_frames) in [(12_345usize, 100usize), (20_000, 64), (16_000, 100), (1_000, 2), (50, 10)] {
        let samples = test_signal(len);
        let expected = whisper_log_mel(&samples, n_frames, &filters);
        let mut out = vec![f32::NAN; N_MELS * n_frames];
        log_mel.compute_into(&samples, n_frames, &mut out);
        let diff = max_abs_diff(&out, &expected);
        assert!(diff < 1e-4, "{len} samples, {n_frames} frames: max abs diff {diff}");
    }
}

#[test]
fn log_mel_of_silence_is_constant() {
    let mut log_mel = LogMel::new();
    let out = log_mel.compute(&[0.0; 4_000], 50);
    let expected = (1e-10f32.log10() + 4.0) / 4.0;
    assert!(out.iter().all(|&v| v == expected), "{:?}", &out[..4]);
    assert!(log_mel.compute(&[], 0).is_empty());
}

#[test]
fn log_mel_buffer_is_reused_across_calls() {
    let mut log_mel = LogMel::new();
    let first = log_mel.compute(&test_signal(8_000), 60);
    let _ = log_mel.compute(&test_signal(30_000), 200);
    let again = log_mel.compute(&test_signal(8_000), 60);
    assert_eq!(first, again);
}

#[test]
fn filterbank_matches_whisper_mel_80() {
    let path = require_testdata("speech/mel_80.npy");
    let reference = read_npy_f32(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reference.shape, vec![N_MELS, N_FREQ_BINS], "{}", path.display());
    let filters = mel_filterbank(N_MELS, N_FFT, 16_000);
    let diff = max_abs_diff(&filters, &reference.values);
    assert!(diff < 1e-6, "mel filterbank max abs diff {diff} against {}", path.display());
}

#[test]
fn log_mel_matches_whisper_reference_for_beckett() {
    let wav_path = require_testdata("speech/beckett.wav");
    let mel_path = require_testdata("speech/beckett.mel.npy");
    let reference = read_npy_f32(&mel_path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reference.shape, vec![N_MELS, CHUNK_FRAMES], "{}", mel_path.display());

    let samples = to_mono_16k(decode_file(&wav_path, AudioLimit::RECORDING).unwrap()).unwrap();
    let mut out = vec![0.0f32; N_MELS * CHUNK_FRAMES];
    LogMel::new().compute_into(&samples, CHUNK_FRAMES, &mut out);
    let diff = max_abs_diff(&out, &reference.values);
    assert!(diff < 1e-3, "log-mel max abs diff {diff} against {}", mel_path.display());
}

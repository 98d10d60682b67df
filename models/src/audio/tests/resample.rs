//! Resampling tests: exact length, no time shift, pass-band fidelity and anti-aliasing.

use std::f64::consts::PI;

use crate::audio::{downmix_to_mono, resample, to_mono_16k, AudioError, DecodedAudio, StreamResampler};

fn sine(frequency: f64, amplitude: f64, rate: u32, len: usize) -> Vec<f32> {
    (0..len).map(|i| (amplitude * (2.0 * PI * frequency * i as f64 / f64::from(rate)).sin()) as f32).collect()
}

fn energy(samples: &[f32]) -> f64 {
    samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len() as f64
}

/// Samples this far from either end (10 ms) are excluded from accuracy checks: the input
/// starts and stops abruptly, which rings through the filter.
const EDGE: usize = 160;

#[test]
fn sine_1khz_keeps_frequency_and_amplitude() {
    for rate in [44_100u32, 48_000, 22_050, 11_025, 8_000, 32_000, 96_000] {
        let input = sine(1000.0, 0.5, rate, rate as usize);
        let output = resample(&input, rate, 16_000).unwrap();
        assert_eq!(output.len(), 16_000, "{rate} Hz");
        let ideal = sine(1000.0, 0.5, 16_000, 16_000);
        let error = super::max_abs_diff(&output[EDGE..16_000 - EDGE], &ideal[EDGE..16_000 - EDGE]);
        assert!(error < 1e-3, "{rate} Hz -> 16 kHz: max error {error}");
    }
}

#[test]
fn output_length_is_rounded_input_length_ratio() {
    for rate in [44_100u32, 48_000, 8_000, 11_025, 22_050] {
        for len in [0usize, 1, 2, 3, 5, 440, 441, 1000, 4410, 12_345] {
            let expected = ((len as f64) * 16_000.0 / f64::from(rate)).round() as usize;
            let output = resample(&vec![0.1; len], rate, 16_000).unwrap();
            assert_eq!(output.len(), expected, "{len} samples at {rate} Hz");
        }
    }
}

#[test]
fn impulse_lands_at_the_same_time() {
    for (rate, at) in [(48_000u32, 24_000usize), (8_000, 4_000), (44_100, 22_050), (22_050, 11_025)] {
        let mut input = vec![0.0f32; rate as usize];
        input[at] = 1.0;
        let output = resample(&input, rate, 16_000).unwrap();
        let peak = output.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap();
        assert_eq!(peak, 8_000, "impulse at {at} of {rate} Hz");
        // Symmetric filter: equal response either side of the peak.
        assert!((output[peak - 1] - output[peak + 1]).abs() < 1e-5, "{rate} Hz asymmetric");
    }
}

/// Energy of `frequency` after resampling from `rate` to 16 kHz, relative to the input, in dB.
fn gain_db(frequency: f64, rate: u32) -> f64 {
    let input = sine(frequency, 0.5, rate, rate as usize);
    let output = resample(&input, rate, 16_000).unwrap();
    // Wider margin than EDGE: the onset of a tone near the cut-off rings longest.
    let settled = &output[1_600..16_000 - 1_600];
    10.0 * (energy(settled) / energy(&input)).log10()
}

#[test]
fn tone_above_new_nyquist_is_removed() {
    for rate in [48_000u32, 44_100] {
        let leak = gain_db(12_000.0, rate);
        assert!(leak < -40.0, "12 kHz at {rate} Hz leaks {leak:.1} dB after resampling");
        let leak = gain_db(8_500.0, rate);
        assert!(leak < -40.0, "8.5 kHz at {rate} Hz leaks {leak:.1} dB after resampling");
    }
}

#[test]
fn tone_just_below_new_nyquist_passes() {
    for rate in [48_000u32, 44_100] {
        let gain = gain_db(7_500.0, rate);
        assert!(gain.abs() < 0.1, "7.5 kHz at {rate} Hz: gain {gain:.3} dB");
    }
}

#[test]
fn downmix_averages_channels() {
    let stereo = [1.0, 0.0, 0.5, -0.5, -1.0, -1.0, 0.25];
    assert_eq!(downmix_to_mono(&stereo, 2), vec![0.5, 0.0, -1.0]);
    assert_eq!(downmix_to_mono(&[0.3, 0.6, 0.9], 3), vec![0.6]);
    assert_eq!(downmix_to_mono(&[0.3, 0.6], 1), vec![0.3, 0.6]);
}

#[test]
fn mono_16k_passes_through_without_copy() {
    let samples = vec![0.1f32, -0.2, 0.3];
    let address = samples.as_ptr();
    let audio = DecodedAudio { sample_rate: 16_000, channels: 1, samples };
    let output = to_mono_16k(audio).unwrap();
    assert_eq!(output.as_ptr(), address);
    assert_eq!(output, vec![0.1, -0.2, 0.3]);
}

#[test]
fn stereo_48k_becomes_16k_mono() {
    let left = sine(1000.0, 0.5, 48_000, 48_000);
    let interleaved: Vec<f32> = left.iter().flat_map(|&s| [s, s]).collect();
    let audio = DecodedAudio { sample_rate: 48_000, channels: 2, samples: interleaved };
    let output = to_mono_16k(audio).unwrap();
    let ideal = sine(1000.0, 0.5, 16_000, 16_000);
    assert!(super::max_abs_diff(&output[EDGE..16_000 - EDGE], &ideal[EDGE..16_000 - EDGE]) < 1e-3);
}

#[test]
fn absurd_rates_are_errors() {
    let error = resample(&[0.0; 10], 0, 16_000).unwrap_err();
    assert!(matches!(error, AudioError::Resample { from: 0, .. }), "{error:?}");
    let error = resample(&[0.0; 10], 10, 16_000).unwrap_err();
    assert_eq!(error.to_string(), "cannot resample from 10 Hz to 16000 Hz: rates must lie within 1000..=768000 Hz");
    assert!(resample(&[0.0; 10], 3_000_000, 16_000).is_err());
    assert_eq!(resample(&[0.25; 10], 7, 7).unwrap(), vec![0.25; 10]);
    let audio = DecodedAudio { sample_rate: 16_000, channels: 0, samples: vec![0.0] };
    assert!(matches!(to_mono_16k(audio), Err(AudioError::InvalidHeader { .. })));
}

#[test]
fn streaming_in_small_chunks_gives_the_batch_result_delayed_by_the_filter() {
    let input = sine(440.0, 0.5, 48_000, 48_000);
    let batch = resample(&input, 48_000, 16_000).unwrap();
    let mut stream = StreamResampler::new(48_000, 16_000).unwrap();
    let mut streamed = Vec::new();
    for chunk in input.chunks(1_536) {
        stream.push(chunk, &mut streamed).unwrap();
    }
    let delay = stream.delay();
    assert!(streamed.len() > delay + 14_000, "{} samples", streamed.len());
    for (i, (s, b)) in streamed[delay..].iter().zip(&batch).enumerate() {
        assert!((s - b).abs() < 1e-6, "sample {i}: {s} vs {b}");
    }
    assert!(StreamResampler::new(48_000, 0).is_err());
}

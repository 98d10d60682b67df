//! Speech to text for whole clips: VAD finds the speech, speech is packed into windows of at most 30 s, each
//! window is transcribed by Whisper; the result carries segments, token counts and per-stage timings.

use std::time::Instant;

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::vad::{SileroVad, SpeechRegion, VadSession};
use crate::whisper::{DecodeOptions, Whisper, WhisperSession, WINDOW_SAMPLES};

/// Audio rate every speech model here expects.
pub const SAMPLE_RATE: usize = 16_000;

/// One transcribed stretch of audio.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
    pub tokens: Vec<u32>,
}

/// Milliseconds spent per stage, summed over windows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpeechTimings {
    pub vad: f64,
    pub mel: f64,
    pub encode: f64,
    pub decode: f64,
}

/// The transcript of a clip.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<Segment>,
    /// Tokens emitted, over all segments.
    pub tokens: usize,
    pub timings_ms: SpeechTimings,
    pub variant: String,
    /// Mel frames encoded per window (3000 = the full 30 s window).
    pub frames: Vec<usize>,
}

/// Packs speech regions into consecutive windows of at most `max` samples; a longer region is cut.
pub fn plan_windows(regions: &[SpeechRegion], max: usize) -> Vec<SpeechRegion> {
    let mut windows: Vec<SpeechRegion> = Vec::new();
    for region in regions {
        let mut start = region.start;
        while start < region.end {
            let end = region.end.min(start + max);
            match windows.last_mut() {
                Some(w) if end - w.start <= max => w.end = end,
                _ => windows.push(SpeechRegion { start, end }),
            }
            start = end;
        }
    }
    windows
}

/// A speech recognizer for one stream: Whisper plus, optionally, VAD segmentation.
pub struct Transcriber<'m> {
    whisper: WhisperSession<'m>,
    variant: String,
    vad: Option<VadSession<'m>>,
}

impl<'m> Transcriber<'m> {
    pub fn new(whisper: &'m Whisper, vad: Option<&'m SileroVad>) -> Result<Transcriber<'m>> {
        Ok(Transcriber {
            whisper: whisper.session()?,
            variant: whisper.variant.clone(),
            vad: vad.map(|v| v.session()).transpose()?,
        })
    }

    /// Transcribes a whole clip of 16 kHz mono samples.
    pub fn transcribe(&mut self, samples: &[f32], options: &DecodeOptions) -> Result<Transcript> {
        self.transcribe_until(samples, options, &|| false)
    }

    /// As `transcribe`, asking `cancel` before each window (a daemon beats its watchdog there); a `true` ends the
    /// transcription with [`ModelError::Cancelled`].
    pub fn transcribe_until(
        &mut self,
        samples: &[f32],
        options: &DecodeOptions,
        cancel: &dyn Fn() -> bool,
    ) -> Result<Transcript> {
        let mut timings = SpeechTimings::default();
        let regions = match self.vad.as_mut() {
            Some(vad) => {
                let started = Instant::now();
                let regions = vad.speech_regions(samples)?;
                timings.vad = started.elapsed().as_secs_f64() * 1e3;
                regions
            }
            None => vec![SpeechRegion { start: 0, end: samples.len() }],
        };
        let mut segments = Vec::new();
        let mut frames = Vec::new();
        for window in plan_windows(&regions, WINDOW_SAMPLES) {
            if cancel() {
                return Err(ModelError::Cancelled);
            }
            let result = self.whisper.transcribe_window(&samples[window.start..window.end], options)?;
            timings.mel += result.mel_ms;
            timings.encode += result.encode_ms;
            timings.decode += result.decode_ms;
            frames.push(result.frames);
            if !result.text.is_empty() {
                segments.push(Segment {
                    start_s: window.start as f64 / SAMPLE_RATE as f64,
                    end_s: window.end as f64 / SAMPLE_RATE as f64,
                    text: result.text,
                    tokens: result.tokens,
                });
            }
        }
        let text = segments.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join(" ");
        let tokens = segments.iter().map(|s| s.tokens.len()).sum();
        Ok(Transcript { text, segments, tokens, timings_ms: timings, variant: self.variant.clone(), frames })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pack_regions_and_cut_long_ones() {
        let r = |start, end| SpeechRegion { start, end };
        let windows = plan_windows(&[r(0, 100), r(150, 250), r(400, 1000)], 300);
        assert_eq!(windows, vec![r(0, 250), r(400, 700), r(700, 1000)]);
        assert!(plan_windows(&[], 300).is_empty());
    }
}

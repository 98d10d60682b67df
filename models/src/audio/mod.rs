//! Audio front-end: decoding WAV/FLAC, conversion to 16 kHz mono and the Whisper log-mel spectrogram.

pub mod decode;
pub mod mel;
pub mod resample;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use decode::{decode_bytes, decode_file, AudioLimit, DecodedAudio};
pub use mel::{mel_filterbank, LogMel};
pub use resample::{downmix_to_mono, resample, to_mono_16k, StreamResampler, TARGET_SAMPLE_RATE};

/// Sample rates the resampler converts between (outside it the FFT blocks grow without bound), and so the rates
/// a decoder accepts.
pub const RESAMPLE_RATE_RANGE: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Everything that can go wrong while reading or converting audio.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file does not exist.
    #[error("audio file not found: {}", path.display())]
    NotFound { path: PathBuf },

    /// The file exists but could not be read.
    #[error("cannot read audio file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The input is neither a WAV nor a FLAC stream.
    #[error("not a WAV or FLAC file: {detail}")]
    NotAudio { detail: String },

    /// A recognised container holding an encoding this crate cannot decode.
    #[error("unsupported audio encoding: {encoding}")]
    Unsupported { encoding: String },

    /// The stream ends before the data its header declares.
    #[error("truncated audio: {detail}")]
    Truncated { detail: String },

    /// The stream is malformed.
    #[error("corrupt audio: {detail}")]
    Corrupt { detail: String },

    /// The header holds an impossible parameter such as a zero sample rate.
    #[error("invalid audio header: {detail}")]
    InvalidHeader { detail: String },

    /// A well-formed stream without a single sample.
    #[error("audio contains no samples")]
    Empty,

    /// The header declares more audio than the caller's [`AudioLimit`] allows for its rate and channels; refused
    /// before anything is allocated.
    #[error("audio declares {} s, more than the limit of {} s", seconds(*.declared_seconds), seconds(*.limit_seconds))]
    TooLong { declared_seconds: f64, limit_seconds: f64 },

    /// A stream that does not declare its length decoded past the caller's [`AudioLimit`]; stopped there.
    #[error("audio runs longer than the limit of {} s", seconds(*.limit_seconds))]
    RunsPastLimit { limit_seconds: f64 },

    /// The resampler could not be built for this pair of rates.
    #[error("cannot resample from {from} Hz to {to} Hz: {detail}")]
    Resample { from: u32, to: u32, detail: String },
}

/// Seconds as people read them: whole seconds, or tenths below ten.
fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.0}")
    }
}

/// Decodes a WAV or FLAC file within `limit` and converts it to 16 kHz mono samples in [-1, 1].
pub fn load_mono_16k(path: impl AsRef<Path>, limit: AudioLimit) -> Result<Vec<f32>, AudioError> {
    to_mono_16k(decode_file(path, limit)?)
}

//! Downmixing to mono and band-limited resampling to the 16 kHz rate the speech models expect.

use rubato::{FftFixedInOut, Resampler};

use super::decode::DecodedAudio;
use super::{AudioError, RESAMPLE_RATE_RANGE};

/// Sample rate of every speech model input.
pub const TARGET_SAMPLE_RATE: u32 = 16_000;

/// Smallest FFT block, in samples on each side of the conversion. Longer blocks give a
/// longer anti-aliasing filter and so a narrower transition band below the new Nyquist
/// frequency.
const MIN_BLOCK_LEN: usize = 1024;

/// Converts decoded audio to 16 kHz mono. 16 kHz mono input is returned as is, without a copy.
pub fn to_mono_16k(audio: DecodedAudio) -> Result<Vec<f32>, AudioError> {
    if audio.channels == 0 {
        return Err(AudioError::InvalidHeader { detail: "channel count is 0".to_string() });
    }
    let mono =
        if audio.channels == 1 { audio.samples } else { downmix_to_mono(&audio.samples, usize::from(audio.channels)) };
    if audio.sample_rate == TARGET_SAMPLE_RATE {
        return Ok(mono);
    }
    resample(&mono, audio.sample_rate, TARGET_SAMPLE_RATE)
}

/// Averages the channels of interleaved samples; an incomplete trailing frame is dropped.
pub fn downmix_to_mono(interleaved: &[f32], channels: usize) -> Vec<f32> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    let scale = 1.0 / channels as f32;
    interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() * scale).collect()
}

/// Resamples mono audio from `from_rate` to `to_rate` with an FFT-based windowed-sinc filter.
///
/// The output has exactly `round(len * to_rate / from_rate)` samples and is aligned in time
/// with the input: the filter delay is removed, so output sample `k` is the band-limited
/// input at time `k / to_rate`.
pub fn resample(samples: &[f32], from_rate: u32, to_rate: u32) -> Result<Vec<f32>, AudioError> {
    let resample_error = |detail: String| AudioError::Resample { from: from_rate, to: to_rate, detail };
    if from_rate == to_rate {
        return Ok(samples.to_vec());
    }
    if !RESAMPLE_RATE_RANGE.contains(&from_rate) || !RESAMPLE_RATE_RANGE.contains(&to_rate) {
        return Err(resample_error(format!(
            "rates must lie within {}..={} Hz",
            RESAMPLE_RATE_RANGE.start(),
            RESAMPLE_RATE_RANGE.end()
        )));
    }
    let output_len = rounded_output_len(samples.len(), from_rate, to_rate);
    if output_len == 0 {
        return Ok(Vec::new());
    }

    let (mut resampler, block_in, block_out) = block_resampler(from_rate, to_rate)?;
    let delay = resampler.output_delay();

    let blocks = (delay + output_len).div_ceil(block_out);
    let mut output = vec![0.0f32; blocks * block_out];
    let mut padded_block = vec![0.0f32; block_in];
    for (index, out_block) in output.chunks_exact_mut(block_out).enumerate() {
        let start = (index * block_in).min(samples.len());
        let end = (start + block_in).min(samples.len());
        let in_block: &[f32] = if end - start == block_in {
            &samples[start..end]
        } else {
            padded_block[..end - start].copy_from_slice(&samples[start..end]);
            padded_block[end - start..].fill(0.0);
            &padded_block
        };
        resampler
            .process_into_buffer(&[in_block], &mut [out_block], None)
            .map_err(|e| resample_error(e.to_string()))?;
    }
    output.drain(..delay);
    output.truncate(output_len);
    Ok(output)
}

/// The FFT resampler for a pair of rates, with its input and output block lengths.
fn block_resampler(from_rate: u32, to_rate: u32) -> Result<(FftFixedInOut<f32>, usize, usize), AudioError> {
    let resample_error = |detail: String| AudioError::Resample { from: from_rate, to: to_rate, detail };
    let divisor = gcd(from_rate, to_rate);
    let unit_in = (from_rate / divisor) as usize;
    let unit_out = (to_rate / divisor) as usize;
    // An even number of units makes both block lengths even, which puts the centre of
    // the filter on a whole output sample, so the delay can be removed exactly.
    let mut units = MIN_BLOCK_LEN.div_ceil(unit_in).max(MIN_BLOCK_LEN.div_ceil(unit_out)).max(2);
    units += units % 2;
    let block_in = units * unit_in;
    let block_out = units * unit_out;
    let resampler = FftFixedInOut::<f32>::new(from_rate as usize, to_rate as usize, block_in, 1)
        .map_err(|e| resample_error(e.to_string()))?;
    if resampler.input_frames_next() != block_in || resampler.output_frames_next() != block_out {
        return Err(resample_error(format!(
            "unexpected block lengths {} -> {}",
            resampler.input_frames_next(),
            resampler.output_frames_next()
        )));
    }
    Ok((resampler, block_in, block_out))
}

/// Resamples a live mono stream block by block (a microphone that cannot deliver 16 kHz): the same filter as
/// [`resample`], with its delay left in, and no allocation once its buffers have reached their working size.
pub struct StreamResampler {
    resampler: FftFixedInOut<f32>,
    pending: Vec<f32>,
    block_in: usize,
    block_out: usize,
    from_rate: u32,
    to_rate: u32,
}

impl StreamResampler {
    pub fn new(from_rate: u32, to_rate: u32) -> Result<StreamResampler, AudioError> {
        if !RESAMPLE_RATE_RANGE.contains(&from_rate) || !RESAMPLE_RATE_RANGE.contains(&to_rate) {
            return Err(AudioError::Resample {
                from: from_rate,
                to: to_rate,
                detail: "rates must lie within the supported range".into(),
            });
        }
        let (resampler, block_in, block_out) = block_resampler(from_rate, to_rate)?;
        Ok(StreamResampler {
            resampler,
            pending: Vec::with_capacity(2 * block_in),
            block_in,
            block_out,
            from_rate,
            to_rate,
        })
    }

    /// Output samples the filter lags behind its input.
    pub fn delay(&self) -> usize {
        self.resampler.output_delay()
    }

    /// Feeds `input`; appends every completed output block to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        self.pending.extend_from_slice(input);
        let mut consumed = 0;
        while self.pending.len() - consumed >= self.block_in {
            let start = out.len();
            out.resize(start + self.block_out, 0.0);
            self.resampler
                .process_into_buffer(
                    &[&self.pending[consumed..consumed + self.block_in]],
                    &mut [&mut out[start..]],
                    None,
                )
                .map_err(|e| AudioError::Resample { from: self.from_rate, to: self.to_rate, detail: e.to_string() })?;
            consumed += self.block_in;
        }
        self.pending.drain(..consumed);
        Ok(())
    }
}

/// `round(len * to_rate / from_rate)`, halves rounded up.
fn rounded_output_len(len: usize, from_rate: u32, to_rate: u32) -> usize {
    let numerator = len as u128 * u128::from(to_rate);
    let from = u128::from(from_rate);
    ((2 * numerator + from) / (2 * from)) as usize
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

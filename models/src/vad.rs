//! Voice activity detection with Silero VAD v6: speech probabilities per 32 ms chunk, then speech regions with
//! hysteresis, minimum durations and padding (the rules of Silero's own `get_speech_timestamps`).

use crate::bundle::{Bundle, Component};
use crate::engine::{self, DatumType, Dim, Graph, GraphSpec, GraphState};
use crate::error::{ModelError, Result};

/// A stretch of speech, in samples at 16 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechRegion {
    pub start: usize,
    pub end: usize,
}

/// Segmentation rules, in samples at 16 kHz.
#[derive(Debug, Clone, Copy)]
pub struct VadRules {
    pub threshold: f32,
    /// Speech ends only when the probability falls below this.
    pub release: f32,
    pub min_speech: usize,
    pub min_silence: usize,
    pub pad: usize,
}

impl Default for VadRules {
    fn default() -> Self {
        VadRules { threshold: 0.5, release: 0.35, min_speech: 4_000, min_silence: 1_600, pad: 3_200 }
    }
}

/// The loaded VAD graph.
pub struct SileroVad {
    graph: Graph,
    chunk: usize,
    context: usize,
    state_len: usize,
    pub rules: VadRules,
}

impl SileroVad {
    /// What the graph runs on this CPU.
    pub fn kernels(&self) -> Vec<engine::KernelReport> {
        vec![self.graph.kernels()]
    }

    /// The component `load` reads.
    pub fn component(bundle: &Bundle) -> Result<&Component> {
        bundle.component("vad", None)
    }

    pub fn load(bundle: &Bundle) -> Result<SileroVad> {
        let c = Self::component(bundle)?;
        let chunk = c.param_usize("chunk")?;
        let context = c.param_usize("context")?;
        let state_len = c.param_usize("state_size")?;
        let threshold = c.param_f64("threshold")? as f32;
        let graph = engine::load_component(bundle, c, &Self::graph_spec(c)?)?;
        let rules = VadRules { threshold, release: (threshold - 0.15).max(0.01), ..VadRules::default() };
        Ok(SileroVad { graph, chunk, context, state_len, rules })
    }

    /// How the VAD graph is declared: one chunk with its context, and the recurrent state.
    pub fn graph_spec(c: &Component) -> Result<GraphSpec> {
        let (chunk, context, state_len) =
            (c.param_usize("chunk")?, c.param_usize("context")?, c.param_usize("state_size")?);
        Ok(GraphSpec::new(vec![
            (DatumType::F32, vec![Dim::Fixed(1), Dim::Fixed(context + chunk)]),
            (DatumType::F32, vec![Dim::Fixed(2), Dim::Fixed(1), Dim::Fixed(state_len)]),
        ]))
    }

    /// Samples per probability.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    pub fn session(&self) -> Result<VadSession<'_>> {
        Ok(VadSession {
            vad: self,
            state: self.graph.new_state()?,
            rnn: vec![0.0; 2 * self.state_len],
            input: vec![0.0; self.context + self.chunk],
        })
    }
}

/// One audio stream's VAD state: the recurrent state and the last context samples.
pub struct VadSession<'v> {
    vad: &'v SileroVad,
    state: GraphState,
    rnn: Vec<f32>,
    input: Vec<f32>,
}

impl VadSession<'_> {
    /// Forgets the stream so far.
    pub fn reset(&mut self) {
        self.rnn.iter_mut().for_each(|v| *v = 0.0);
        self.input.iter_mut().for_each(|v| *v = 0.0);
    }

    /// Speech probability of the next chunk (shorter chunks are zero-padded).
    pub fn probability(&mut self, chunk: &[f32]) -> Result<f32> {
        let (context, size) = (self.vad.context, self.vad.chunk);
        self.input.copy_within(size.., 0);
        let fresh = &mut self.input[context..];
        let n = chunk.len().min(size);
        fresh[..n].copy_from_slice(&chunk[..n]);
        fresh[n..].iter_mut().for_each(|v| *v = 0.0);
        let inputs = [
            engine::tensor(&[1, context + size], &self.input)?,
            engine::tensor(&[2, 1, self.vad.state_len], &self.rnn)?,
        ]
        .into_iter()
        .collect();
        let outputs = self.state.run(inputs)?;
        let component = self.vad.graph.component();
        if outputs.len() < 2 {
            return Err(ModelError::run(component, "VAD returned fewer than 2 outputs"));
        }
        let p = engine::f32_slice(component, &outputs[0])?.first().copied().unwrap_or(0.0);
        let next = engine::f32_slice(component, &outputs[1])?;
        if next.len() != self.rnn.len() {
            return Err(ModelError::run(component, "VAD state has an unexpected size"));
        }
        self.rnn.copy_from_slice(next);
        Ok(p)
    }

    /// Speech probabilities for a whole clip, one per chunk.
    pub fn probabilities(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        self.reset();
        samples.chunks(self.vad.chunk).map(|c| self.probability(c)).collect()
    }

    /// Speech regions of a whole clip.
    pub fn speech_regions(&mut self, samples: &[f32]) -> Result<Vec<SpeechRegion>> {
        let probs = self.probabilities(samples)?;
        Ok(regions_from_probabilities(&probs, self.vad.chunk, samples.len(), &self.vad.rules))
    }
}

/// Turns per-chunk probabilities into padded, merged speech regions.
pub fn regions_from_probabilities(probs: &[f32], chunk: usize, total: usize, rules: &VadRules) -> Vec<SpeechRegion> {
    let mut raw = Vec::new();
    let mut start = None;
    let mut silence_since = None;
    for (i, p) in probs.iter().enumerate() {
        let at = i * chunk;
        match start {
            None if *p >= rules.threshold => {
                start = Some(at);
                silence_since = None;
            }
            None => {}
            Some(s) => {
                if *p >= rules.threshold {
                    silence_since = None;
                } else if *p < rules.release {
                    let since = *silence_since.get_or_insert(at);
                    if at + chunk - since >= rules.min_silence {
                        raw.push(SpeechRegion { start: s, end: since });
                        start = None;
                        silence_since = None;
                    }
                }
            }
        }
    }
    if let Some(s) = start {
        raw.push(SpeechRegion { start: s, end: total });
    }
    let mut merged: Vec<SpeechRegion> = Vec::new();
    for r in raw.into_iter().filter(|r| r.end - r.start >= rules.min_speech) {
        let padded = SpeechRegion { start: r.start.saturating_sub(rules.pad), end: (r.end + rules.pad).min(total) };
        match merged.last_mut() {
            Some(last) if padded.start <= last.end => last.end = padded.end,
            _ => merged.push(padded),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_pads_and_merges() {
        let rules = VadRules { threshold: 0.5, release: 0.35, min_speech: 1000, min_silence: 1000, pad: 100 };
        // 512-sample chunks: speech 2..6, a short dip at 6 (not long enough to end), speech to 9, silence after.
        let probs = [0.0, 0.1, 0.9, 0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1];
        let regions = regions_from_probabilities(&probs, 512, probs.len() * 512, &rules);
        // The lone speech chunk at 13 is shorter than min_speech and is dropped.
        assert_eq!(regions, vec![SpeechRegion { start: 2 * 512 - 100, end: 9 * 512 + 100 }]);
    }

    #[test]
    fn speech_running_to_the_end_is_kept() {
        let rules = VadRules::default();
        let probs = vec![0.9; 20];
        let regions = regions_from_probabilities(&probs, 512, 20 * 512, &rules);
        assert_eq!(regions, vec![SpeechRegion { start: 0, end: 20 * 512 }]);
    }
}

//! Whisper speech recognition through tract: the encoder turns a log-mel window into cross-attention keys and
//! values, the decoder emits tokens greedily with a self-attention KV cache so no step recomputes the prefix.

use std::time::Instant;

use crate::audio::mel::LogMel;
use crate::bundle::{Bundle, Component};
use crate::engine::{self, DatumType, Dim, Graph, GraphSpec, GraphState, TValue};
use crate::error::{ModelError, Result};
use crate::tokenizer::ByteLevelVocab;

/// Samples per mel frame at 16 kHz.
pub const HOP: usize = 160;
/// The samples in one full 30 s window.
pub const WINDOW_SAMPLES: usize = 480_000;

/// Sizes and special tokens of one Whisper model, from the manifest.
#[derive(Debug, Clone)]
pub struct WhisperConfig {
    pub n_mels: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub n_text_ctx: usize,
    pub max_frames: usize,
    pub sot: u32,
    pub eot: u32,
    pub transcribe: u32,
    pub translate: u32,
    pub no_timestamps: u32,
    /// Never emitted (punctuation-like tokens the model was trained to avoid, task tokens).
    pub suppress: Vec<u32>,
    /// Never emitted as the first token (blank, end of text).
    pub suppress_begin: Vec<u32>,
}

impl WhisperConfig {
    fn from_components(encoder: &Component, decoder: &Component) -> Result<WhisperConfig> {
        let id = |key: &str| -> Result<u32> {
            u32::try_from(decoder.param_usize(key)?)
                .map_err(|_| ModelError::BadParam { component: decoder.name.clone(), param: key.into() })
        };
        Ok(WhisperConfig {
            n_mels: encoder.param_usize("n_mels")?,
            n_layers: decoder.param_usize("n_layers")?,
            n_heads: decoder.param_usize("n_heads")?,
            head_dim: decoder.param_usize("head_dim")?,
            n_vocab: decoder.param_usize("n_vocab")?,
            n_text_ctx: decoder.param_usize("n_text_ctx")?,
            max_frames: encoder.param_usize("max_frames")?,
            sot: id("sot")?,
            eot: id("eot")?,
            transcribe: id("transcribe")?,
            translate: id("translate")?,
            no_timestamps: id("no_timestamps")?,
            suppress: decoder.param_ids("suppress_ids")?,
            suppress_begin: decoder.param_ids("suppress_ids_begin")?,
        })
    }
}

/// What the decoder is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    Translate,
}

/// How much of the 30 s window the encoder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Always the full 30 s window, as Whisper was trained.
    Full,
    /// Only the frames the audio needs plus a margin of silence, rounded up to whole seconds, never fewer than
    /// `min_frames` (below about 5 s the model tends to loop on short queries).
    Fit { margin_frames: usize, min_frames: usize },
}

impl Window {
    /// The short window: 1 s of margin, at least 5 s.
    pub const FIT: Window = Window::Fit { margin_frames: 100, min_frames: 500 };

    /// The mel frames to encode for `samples` samples of audio.
    pub fn frames_for(self, samples: usize, max_frames: usize) -> usize {
        match self {
            Window::Full => max_frames,
            Window::Fit { margin_frames, min_frames } => {
                let needed = (samples.div_ceil(HOP) + margin_frames).max(min_frames);
                needed.div_ceil(100).saturating_mul(100).min(max_frames)
            }
        }
    }
}

/// The languages of the multilingual Whisper models before large-v3, in the order of their `<|xx|>` tokens.
pub const LANGUAGES: [&str; 99] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi",
    "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml",
    "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs",
    "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am",
    "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su",
];

/// Options for one transcription.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// ISO language code such as `en`.
    pub language: String,
    pub task: Task,
    pub window: Window,
    /// Most tokens emitted for one window.
    pub max_tokens: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { language: "en".into(), task: Task::Transcribe, window: Window::Full, max_tokens: 224 }
    }
}

/// The result of one window.
#[derive(Debug, Clone, Default)]
pub struct WindowTranscript {
    pub tokens: Vec<u32>,
    pub text: String,
    pub frames: usize,
    pub mel_ms: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
}

/// A loaded Whisper model: optimized encoder and decoder plans plus the vocabulary; shared by sessions.
pub struct Whisper {
    pub variant: String,
    pub config: WhisperConfig,
    encoder: Graph,
    decoder: Graph,
    vocab: ByteLevelVocab,
}

impl Whisper {
    /// What the encoder and decoder graphs run on this CPU.
    pub fn kernels(&self) -> Vec<engine::KernelReport> {
        vec![self.encoder.kernels(), self.decoder.kernels()]
    }

    /// The components `load` reads for `variant`: encoder, decoder and tokenizer.
    pub fn components<'b>(bundle: &'b Bundle, variant: Option<&str>) -> Result<[&'b Component; 3]> {
        let encoder = bundle.component("asr-encoder", variant)?;
        let decoder = bundle.component("asr-decoder", Some(&encoder.variant))?;
        Ok([encoder, decoder, bundle.component("asr-tokenizer", None)?])
    }

    /// Loads the encoder, decoder and tokenizer of `variant` (or the bundle's first listed variant).
    pub fn load(bundle: &Bundle, variant: Option<&str>) -> Result<Whisper> {
        let [encoder_c, decoder_c, tokenizer_c] = Self::components(bundle, variant)?;
        let config = WhisperConfig::from_components(encoder_c, decoder_c)?;
        let vocab = ByteLevelVocab::from_tokenizer_json(&bundle.checked_path(tokenizer_c)?)?;
        if vocab.len() > config.n_vocab {
            return Err(ModelError::BadTokenizer {
                path: bundle.path_of(tokenizer_c),
                reason: format!("{} tokens, but the decoder has {} outputs", vocab.len(), config.n_vocab),
            });
        }
        // The larger graph first: its transient copies (the f32 output head packed beside its source, 100 MiB) then
        // come before the other graph is resident, not on top of it.
        let decoder = engine::load_component(bundle, decoder_c, &Self::decoder_spec(decoder_c)?)?;
        let encoder = engine::load_component(bundle, encoder_c, &Self::encoder_spec(encoder_c)?)?;
        Ok(Whisper { variant: encoder_c.variant.clone(), config, encoder, decoder, vocab })
    }

    /// How the encoder graph is declared: a log-mel spectrogram of any number of frames.
    pub fn encoder_spec(encoder: &Component) -> Result<GraphSpec> {
        let mel = vec![Dim::Fixed(1), Dim::Fixed(encoder.param_usize("n_mels")?), Dim::Symbol("frames")];
        Ok(GraphSpec::new(vec![(DatumType::F32, mel)]))
    }

    /// How the decoder graph is declared: the step's tokens, the self-attention keys and values so far (all layers
    /// stacked), and the encoder's cross-attention keys, then values, one input per layer.
    pub fn decoder_spec(decoder: &Component) -> Result<GraphSpec> {
        let (layers, heads, head_dim) =
            (decoder.param_usize("n_layers")?, decoder.param_usize("n_heads")?, decoder.param_usize("head_dim")?);
        let past =
            vec![Dim::Fixed(layers), Dim::Fixed(1), Dim::Fixed(heads), Dim::Symbol("past"), Dim::Fixed(head_dim)];
        let audio = vec![Dim::Fixed(1), Dim::Fixed(heads), Dim::Symbol("audio"), Dim::Fixed(head_dim)];
        let mut inputs = vec![
            // Not the input's own name: a compiled graph's text would read the symbol as the tensor.
            (DatumType::I64, vec![Dim::Fixed(1), Dim::Symbol("new_tokens")]),
            (DatumType::F32, past.clone()),
            (DatumType::F32, past),
        ];
        inputs.extend(std::iter::repeat_n((DatumType::F32, audio), 2 * layers));
        Ok(GraphSpec::new(inputs))
    }

    pub fn vocab(&self) -> &ByteLevelVocab {
        &self.vocab
    }

    /// A session: engine states and buffers for one audio stream.
    pub fn session(&self) -> Result<WhisperSession<'_>> {
        Ok(WhisperSession {
            model: self,
            encoder: self.encoder.new_state()?,
            decoder: self.decoder.new_state()?,
            mel: LogMel::with_mel_bands(self.config.n_mels),
            mel_buf: vec![0.0; self.config.n_mels * self.config.max_frames],
            logits: Vec::with_capacity(self.config.n_vocab),
        })
    }

    fn language_token(&self, language: &str) -> Result<u32> {
        self.vocab.special(&format!("<|{language}|>")).ok_or_else(|| ModelError::UnknownLanguage(language.to_string()))
    }

    /// The decoder prompt: start of transcript, language, task, no timestamps.
    pub fn prompt(&self, options: &DecodeOptions) -> Result<[u32; 4]> {
        let task = match options.task {
            Task::Transcribe => self.config.transcribe,
            Task::Translate => self.config.translate,
        };
        Ok([self.config.sot, self.language_token(&options.language)?, task, self.config.no_timestamps])
    }
}

/// Engine states and reusable buffers for one stream of audio.
pub struct WhisperSession<'m> {
    model: &'m Whisper,
    encoder: GraphState,
    decoder: GraphState,
    mel: LogMel,
    mel_buf: Vec<f32>,
    logits: Vec<f32>,
}

impl WhisperSession<'_> {
    /// Transcribes up to 30 s of 16 kHz mono audio.
    pub fn transcribe_window(&mut self, samples: &[f32], options: &DecodeOptions) -> Result<WindowTranscript> {
        let model = self.model;
        let cfg = &model.config;
        let prompt = model.prompt(options)?;
        let frames = options.window.frames_for(samples.len().min(WINDOW_SAMPLES), cfg.max_frames);

        let started = Instant::now();
        let mel = &mut self.mel_buf[..cfg.n_mels * frames];
        self.mel.compute_into(samples, frames, mel);
        let mel_ms = ms_since(started);

        let started = Instant::now();
        let cross = self.encoder.run(tvec_of([engine::tensor(&[1, cfg.n_mels, frames], mel)?]))?;
        if cross.len() != 2 * cfg.n_layers {
            let message = format!(
                "encoder returned {} outputs, expected {} (keys and values per layer)",
                cross.len(),
                2 * cfg.n_layers
            );
            return Err(ModelError::run(model.encoder.component(), message));
        }
        let encode_ms = ms_since(started);

        let started = Instant::now();
        let tokens = self.greedy_decode(&prompt, &cross, options.max_tokens)?;
        let decode_ms = ms_since(started);
        let text = model.vocab.decode(&tokens).trim().to_string();
        Ok(WindowTranscript { tokens, text, frames, mel_ms, encode_ms, decode_ms })
    }

    /// Greedy decoding with the KV cache: the prompt in one step, then one token per step. `cross` holds the
    /// encoder's outputs: each layer's cross-attention keys, then each layer's values.
    pub fn greedy_decode(&mut self, prompt: &[u32], cross: &[TValue], max_tokens: usize) -> Result<Vec<u32>> {
        let cfg = &self.model.config;
        let component = self.model.decoder.component().to_string();
        let max_tokens = max_tokens.min(cfg.n_text_ctx.saturating_sub(prompt.len()));
        let empty_kv = engine::tensor::<f32>(&[cfg.n_layers, 1, cfg.n_heads, 0, cfg.head_dim], &[])?;
        let (mut self_k, mut self_v) = (empty_kv.clone(), empty_kv);
        let mut step_ids: Vec<i64> = Vec::with_capacity(prompt.len());
        for id in prompt {
            step_ids.push(self.checked_id(*id)?);
        }
        let mut out = Vec::with_capacity(max_tokens);
        while out.len() < max_tokens {
            let mut inputs = tvec_of([engine::tensor(&[1, step_ids.len()], &step_ids)?, self_k, self_v]);
            inputs.extend(cross.iter().cloned());
            let mut outputs = self.decoder.run(inputs)?;
            if outputs.len() < 3 {
                return Err(ModelError::run(&component, "decoder returned fewer than 3 outputs"));
            }
            self_v = outputs.remove(2);
            self_k = outputs.remove(1);
            let logits = engine::f32_slice(&component, &outputs[0])?;
            if logits.len() != cfg.n_vocab {
                return Err(ModelError::run(&component, format!("{} logits, expected {}", logits.len(), cfg.n_vocab)));
            }
            let next = self.pick_token(logits, out.is_empty());
            if next == cfg.eot {
                break;
            }
            out.push(next);
            if let Some(keep) = repetition_cut(&out) {
                out.truncate(keep);
                break;
            }
            step_ids.clear();
            step_ids.push(self.checked_id(next)?);
        }
        Ok(out)
    }

    /// Greedy choice among the tokens the text may contain: no task or timestamp tokens, no suppressed ids.
    fn pick_token(&mut self, logits: &[f32], first: bool) -> u32 {
        let cfg = &self.model.config;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        for id in cfg.suppress.iter().chain(if first { cfg.suppress_begin.iter() } else { [].iter() }) {
            if let Some(l) = self.logits.get_mut(*id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        for l in self.logits.iter_mut().skip(cfg.eot as usize + 1) {
            *l = f32::NEG_INFINITY;
        }
        argmax(&self.logits) as u32
    }

    fn checked_id(&self, id: u32) -> Result<i64> {
        if (id as usize) < self.model.config.n_vocab {
            Ok(id as i64)
        } else {
            Err(ModelError::InvalidToken { id: id as i64, vocab: self.model.config.n_vocab })
        }
    }
}

fn tvec_of<const N: usize>(values: [TValue; N]) -> tract_onnx::prelude::TVec<TValue> {
    values.into_iter().collect()
}

/// Where a decoding loop begins, as the length that keeps the phrase's first occurrence: the output ends with the
/// same phrase three times over (2 to 32 tokens), or twice over when the phrase is 5 tokens or longer. A short
/// encoder window makes Whisper say a short query twice ("Did I leave the stove on? Did I leave the stove on?");
/// a phrase that long said twice in a row is rarely what was spoken.
pub fn repetition_cut(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    let ends_with = |k: usize, times: usize| (1..times).all(|t| tokens[n - k..] == tokens[n - (t + 1) * k..n - t * k]);
    (2..=32).take_while(|k| 2 * k <= n).find_map(|k| {
        let times = if k >= 5 { 2 } else { 3 };
        (times * k <= n && ends_with(k, times)).then(|| n - (times - 1) * k)
    })
}

/// Index of the largest value (the first on ties); NaN never wins.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phrase_said_three_times_is_cut_to_one() {
        let looped = [7, 1, 2, 3, 1, 2, 3, 1, 2, 3];
        assert_eq!(repetition_cut(&looped), Some(4));
        assert_eq!(repetition_cut(&[5, 5, 5]), None, "one-token repeats are real speech (\"no no no\")");
        assert_eq!(repetition_cut(&[1, 2, 3, 1, 2, 4, 1, 2, 3]), None);
        assert_eq!(repetition_cut(&[1, 2, 3, 1, 2, 3]), None, "a short phrase twice can be real speech");
        let twice = [9, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5];
        assert_eq!(repetition_cut(&twice), Some(6), "a whole question said twice is kept once");
    }

    #[test]
    fn fit_window_covers_the_audio_with_margin_and_floor() {
        assert_eq!(Window::FIT.frames_for(16_000, 3000), 500);
        assert_eq!(Window::FIT.frames_for(16_000 * 8 + 1, 3000), 1000);
        assert_eq!(Window::FIT.frames_for(WINDOW_SAMPLES, 3000), 3000);
        assert_eq!(Window::Full.frames_for(100, 3000), 3000);
    }
}

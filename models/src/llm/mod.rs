//! The language decoder: a Llama-family GGUF's tokenizer and chat template, its ONNX decoder run by tract with the
//! KV cache kept in the run state, and generation (prefill, then token by token) streamed to the caller.
//!
//! KV cache policy: a session holds at most `context` tokens (prompt + answer), the bundle's `context` parameter
//! unless the caller asks for less. A prompt that leaves no room for one answer token is refused before any work;
//! an answer that reaches the limit stops with [`Finish::ContextFull`]. Every generation starts from an empty cache,
//! so memory is bounded by the capacity and never grows across requests.

pub mod bpe;
pub mod chat;
pub mod gguf;
pub mod sampler;

use std::time::Instant;

use serde::Serialize;

use crate::bundle::{Bundle, Component};
use crate::engine::{self, DatumType, Dim, Graph, GraphSpec};
use crate::error::{ModelError, Result};
use bpe::TextStream;
use chat::ChatText;
use gguf::{Gguf, LlamaConfig};
pub use sampler::Sampling;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model ended its answer (end-of-sequence or another control token).
    Stop,
    /// The caller's token limit was reached.
    Length,
    /// The KV cache is full.
    ContextFull,
    /// The caller asked to stop (a more urgent request is waiting).
    Cancelled,
}

/// What a generation produced, with its timings.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish: Finish,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// From the start of prefill to the first generated token.
    pub first_token_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// Limits and sampling of one generation.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions { max_tokens: 64, sampling: Sampling::default() }
    }
}

/// A loaded decoder with its tokenizer and chat template; shareable by every session.
pub struct LanguageModel {
    graph: Graph,
    pub config: LlamaConfig,
    pub text: ChatText,
    /// KV cache capacity in tokens.
    pub context: usize,
    pub variant: String,
    /// For each graph input in order, its index in [`INPUTS`].
    input_slots: Vec<usize>,
}

const COMPONENT: &str = "llm-decoder";
/// The role of the GGUF file a decoder was converted from (its tokenizer, chat template and hyperparameters).
const GGUF_ROLE: &str = "llm-gguf";
const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "position_ids"];
/// Turns the graph's past/present key and value pairs into a KV cache kept in the run state.
const KV_CACHE_TRANSFORM: &str = "transformers_detect_all";

/// The decoder graph as declared to the engine: ids, mask and positions, then, where the manifest lists them (the
/// f32 graph; the q4 graph's attention keeps its own cache), every layer's past keys and values (the GGUF's
/// hyperparameters size them, so a graph and GGUF that do not match fail to load), folded into the run state.
fn graph_spec_for(config: &LlamaConfig, component: &Component) -> GraphSpec {
    let tokens = vec![Dim::Fixed(1), Dim::Symbol("S")];
    let mut inputs = vec![
        (DatumType::I64, tokens.clone()),
        (DatumType::I64, vec![Dim::Fixed(1), Dim::Expr("P+S")]),
        (DatumType::I64, tokens),
    ];
    if component.inputs.len() > INPUTS.len() {
        let kv = vec![Dim::Fixed(1), Dim::Fixed(config.n_kv_heads), Dim::Symbol("P"), Dim::Fixed(config.head_dim)];
        inputs.extend(std::iter::repeat_n((DatumType::F32, kv), 2 * config.n_layers));
    }
    GraphSpec::new(inputs).with_transforms(&[KV_CACHE_TRANSFORM]).with_weight_rows()
}

impl LanguageModel {
    /// What the decoder graph runs on this CPU.
    pub fn kernels(&self) -> Vec<engine::KernelReport> {
        vec![self.graph.kernels()]
    }

    /// Loads the bundle's decoder (`variant` or the first listed), from its compiled form when the bundle has one,
    /// and reads tokenizer, chat template and hyperparameters from the GGUF it was converted from.
    pub fn load(bundle: &Bundle, variant: Option<&str>) -> Result<LanguageModel> {
        let [component, _] = Self::components(bundle, variant)?;
        let (config, text, context) = Self::read_gguf(bundle, component)?;
        let graph = engine::load_component(bundle, component, &graph_spec_for(&config, component))?;
        let names = graph.input_names();
        let input_slots: Vec<usize> = names.iter().filter_map(|n| INPUTS.iter().position(|i| i == n)).collect();
        if names.len() != INPUTS.len() || input_slots.len() != INPUTS.len() {
            return Err(ModelError::load(
                COMPONENT,
                format!("the KV cache was not folded into the run state; graph inputs are {names:?}"),
            ));
        }
        Ok(LanguageModel { graph, config, text, context, variant: component.variant.clone(), input_slots })
    }

    /// The components `load` reads for `variant`: the decoder graph and the GGUF it was converted from.
    pub fn components<'b>(bundle: &'b Bundle, variant: Option<&str>) -> Result<[&'b Component; 2]> {
        Ok([bundle.component(COMPONENT, variant)?, bundle.component(GGUF_ROLE, None)?])
    }

    /// How a decoder component's graph is declared (see [`GraphSpec`]).
    pub fn graph_spec(bundle: &Bundle, component: &Component) -> Result<GraphSpec> {
        let (config, _, _) = Self::read_gguf(bundle, component)?;
        Ok(graph_spec_for(&config, component))
    }

    /// The hyperparameters, tokenizer and chat template of the GGUF a decoder component was converted from, and
    /// the KV cache capacity, each checked against the component's parameters.
    fn read_gguf(bundle: &Bundle, component: &Component) -> Result<(LlamaConfig, ChatText, usize)> {
        let gguf_file = component.param_str("gguf")?;
        let gguf_component = bundle.component(GGUF_ROLE, None)?;
        if gguf_component.file != gguf_file {
            return Err(ModelError::BadParam { component: component.name.clone(), param: "gguf".into() });
        }
        let gguf = Gguf::open(&bundle.checked_path(gguf_component)?)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let text = ChatText::from_gguf(&gguf)?;
        let context = component.param_usize("context")?;
        if context < 2 || context > config.n_ctx_train {
            return Err(ModelError::BadParam { component: COMPONENT.into(), param: format!("context ({context})") });
        }
        let c = &config;
        for (param, value) in
            [("n_layers", c.n_layers), ("n_kv_heads", c.n_kv_heads), ("head_dim", c.head_dim), ("n_vocab", c.n_vocab)]
        {
            if component.param_usize(param)? != value {
                return Err(ModelError::BadParam {
                    component: component.name.clone(),
                    param: format!("{param} (the GGUF says {value})"),
                });
            }
        }
        Ok((config, text, context))
    }

    /// Holds at most `tokens` (at least 2) in any session from now on: a board's configured context, which may be
    /// shorter than the bundle's but never longer.
    pub fn limit_context(&mut self, tokens: usize) {
        self.context = self.context.min(tokens.max(2));
    }

    /// A session with an empty KV cache of `capacity` tokens at most (the model's context when `None`).
    pub fn session(&self, capacity: Option<usize>) -> Result<LmSession<'_>> {
        let capacity = capacity.unwrap_or(self.context).min(self.context);
        Ok(LmSession { model: self, capacity })
    }
}

/// One stream of generations over a [`LanguageModel`].
pub struct LmSession<'m> {
    model: &'m LanguageModel,
    capacity: usize,
}

impl LmSession<'_> {
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The logits after feeding `prompt` from an empty cache (for checks against a reference).
    pub fn prompt_logits(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        self.check_prompt(prompt)?;
        let mut state = self.model.graph.new_state()?;
        let mut logits = Vec::new();
        self.step(&mut state, prompt, 0, &mut logits)?;
        Ok(logits)
    }

    /// The logits after feeding all of `prompt` but its last token at once and the last token alone, as a
    /// decoding step computes it (for checks of that path against a reference).
    pub fn prompt_logits_stepped(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        self.check_prompt(prompt)?;
        let (last, head) = prompt.split_last().expect("checked non-empty");
        let mut state = self.model.graph.new_state()?;
        let mut logits = Vec::new();
        if !head.is_empty() {
            self.step(&mut state, head, 0, &mut logits)?;
        }
        self.step(&mut state, &[*last], head.len(), &mut logits)?;
        Ok(logits)
    }

    fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        let vocab = self.model.config.n_vocab;
        if let Some(bad) = prompt.iter().find(|id| **id as usize >= vocab) {
            return Err(ModelError::InvalidToken { id: *bad as i64, vocab });
        }
        if prompt.is_empty() {
            return Err(ModelError::PromptTooLong { tokens: 0, capacity: self.capacity });
        }
        if prompt.len() >= self.capacity {
            return Err(ModelError::PromptTooLong { tokens: prompt.len(), capacity: self.capacity });
        }
        Ok(())
    }

    /// Runs `ids` after `past` cached positions and copies the last position's logits into `logits`.
    fn step(&self, state: &mut engine::GraphState, ids: &[u32], past: usize, logits_out: &mut Vec<f32>) -> Result<()> {
        let n = ids.len();
        let ids: Vec<i64> = ids.iter().map(|i| *i as i64).collect();
        let positions: Vec<i64> = (past..past + n).map(|p| p as i64).collect();
        let mask = vec![1i64; past + n];
        let mut values = [
            Some(engine::tensor(&[1, n], &ids)?),
            Some(engine::tensor(&[1, past + n], &mask)?),
            Some(engine::tensor(&[1, n], &positions)?),
        ];
        let inputs = self.model.input_slots.iter().filter_map(|slot| values[*slot].take()).collect();
        let outputs = state.run(inputs)?;
        let logits = engine::f32_slice(COMPONENT, &outputs[0])?;
        if logits.len() != self.model.config.n_vocab {
            return Err(ModelError::run(COMPONENT, format!("logits have {} values", logits.len())));
        }
        logits_out.clear();
        logits_out.extend_from_slice(logits);
        Ok(())
    }

    /// Generates after `prompt` (token ids, chat formatting included), calling `on_text` with each new piece of
    /// text as soon as it is complete.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        self.generate_until(prompt, options, on_text, &|| false)
    }

    /// As `generate`, asking `cancel` before each decoding step; a `true` ends the generation with
    /// `Finish::Cancelled`.
    pub fn generate_until(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        cancel: &dyn Fn() -> bool,
    ) -> Result<Generation> {
        self.check_prompt(prompt)?;
        options.sampling.validate().map_err(ModelError::BadRequest)?;
        let tokenizer = &self.model.text.tokenizer;
        let mut sampler = sampler::Sampler::new(options.sampling);
        let mut state = self.model.graph.new_state()?;
        let mut stream = TextStream::default();
        // Sized up front so the per-token loop appends without reallocating.
        let mut text = String::with_capacity(options.max_tokens * 16);
        let mut tokens = Vec::with_capacity(options.max_tokens);
        let mut logits = Vec::with_capacity(self.model.config.n_vocab);

        let start = Instant::now();
        self.step(&mut state, prompt, 0, &mut logits)?;
        let prefill = start.elapsed();
        let mut decode_steps = 0usize;
        let mut first_token = None;
        let mut finish = Finish::Length;
        let mut position = prompt.len();
        while tokens.len() < options.max_tokens {
            let next = sampler.choose(&logits);
            first_token.get_or_insert_with(|| start.elapsed());
            if next == tokenizer.eos || tokenizer.is_control(next) {
                finish = Finish::Stop;
                break;
            }
            tokens.push(next);
            let before = text.len();
            stream.push_into(tokenizer, next, &mut text);
            if text.len() > before {
                on_text(&text[before..]);
            }
            if position + 1 >= self.capacity {
                finish = Finish::ContextFull;
                break;
            }
            if tokens.len() == options.max_tokens {
                break;
            }
            if cancel() {
                finish = Finish::Cancelled;
                break;
            }
            self.step(&mut state, &[next], position, &mut logits)?;
            decode_steps += 1;
            position += 1;
        }
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
            text.push_str(&rest);
        }
        let total = start.elapsed();
        let decode = total.saturating_sub(prefill);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Ok(Generation {
            text,
            prompt_tokens: prompt.len(),
            finish,
            prefill_ms: ms(prefill),
            decode_ms: ms(decode),
            first_token_ms: ms(first_token.unwrap_or(total)),
            prefill_tokens_per_s: prompt.len() as f64 / prefill.as_secs_f64().max(1e-9),
            decode_tokens_per_s: decode_steps as f64 / decode.as_secs_f64().max(1e-9),
            tokens,
        })
    }
}

/// Image features for a vision-language decoder: `rows` embeddings of the decoder's width, to take the places of
/// `rows` consecutive image placeholder tokens in the prompt (as SmolVLM-style exports expect).
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    pub rows: usize,
    pub width: usize,
    /// Row-major, `rows * width` values.
    pub values: Vec<f32>,
}

/// Where one image's rows go in the prompt: token positions `start..start + rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpan {
    pub image: usize,
    pub start: usize,
    pub rows: usize,
}

/// Matches each image to its run of `placeholder` tokens in `tokens`, in order, checking that every run has as
/// many tokens as its image has rows, that every row is `width` wide, and that no placeholder is left over. A
/// decoder that takes input embeddings fills its embedding matrix from these spans; a text-only decoder has none.
pub fn image_spans(
    tokens: &[u32],
    placeholder: u32,
    images: &[ImageEmbedding],
    width: usize,
) -> Result<Vec<ImageSpan>> {
    let bad = |reason: String| ModelError::BadRequest(format!("image embeddings: {reason}"));
    let mut runs = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == placeholder {
            let start = i;
            while i < tokens.len() && tokens[i] == placeholder {
                i += 1;
            }
            runs.push((start, i - start));
        } else {
            i += 1;
        }
    }
    if runs.len() != images.len() {
        return Err(bad(format!("{} image slots in the prompt for {} images", runs.len(), images.len())));
    }
    images
        .iter()
        .zip(runs)
        .enumerate()
        .map(|(n, (image, (start, len)))| {
            if image.width != width || image.values.len() != image.rows * width {
                return Err(bad(format!(
                    "image {n} is {}x{} with {} values; the decoder is {width} wide",
                    image.rows,
                    image.width,
                    image.values.len()
                )));
            }
            if image.rows != len {
                return Err(bad(format!("image {n} has {} rows but its slot holds {len} tokens", image.rows)));
            }
            Ok(ImageSpan { image: n, start, rows: len })
        })
        .collect()
}

impl LmSession<'_> {
    /// Generation after a prompt that may carry images. This decoder reads token ids only, so any image is refused
    /// with a clear error; a vision-language decoder plugs in here, splicing the images at [`image_spans`].
    pub fn generate_multimodal(
        &mut self,
        prompt: &[u32],
        images: &[ImageEmbedding],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        if !images.is_empty() {
            return Err(ModelError::BadRequest(format!(
                "the {} decoder takes token ids only; image embeddings need a vision-language decoder",
                self.model.variant
            )));
        }
        self.generate(prompt, options, on_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(rows: usize, width: usize) -> ImageEmbedding {
        ImageEmbedding { rows, width, values: vec![0.5; rows * width] }
    }

    #[test]
    fn image_spans_follow_placeholder_runs() {
        let p = 99;
        let tokens = [1, p, p, p, 5, 6, p, p, 7];
        let spans = image_spans(&tokens, p, &[image(3, 4), image(2, 4)], 4).unwrap();
        assert_eq!(spans, [ImageSpan { image: 0, start: 1, rows: 3 }, ImageSpan { image: 1, start: 6, rows: 2 }]);
        assert!(image_spans(&tokens, p, &[image(3, 4)], 4).is_err(), "one slot left over");
        assert!(image_spans(&tokens, p, &[image(2, 4), image(2, 4)], 4).is_err(), "rows differ from the slot");
        assert!(image_spans(&tokens, p, &[image(3, 5), image(2, 4)], 4).is_err(), "wrong width");
    }
}

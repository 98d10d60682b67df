//! The language step of the pipeline: a scene and a task in, one checked sentence out. Fuses the prompt under the
//! decoder's budget, generates (streaming pieces to the caller), keeps the first sentence, checks it against the
//! scene and falls back to the deterministic sentence when it is not faithful, when the prompt does not fit, or
//! when no decoder is loaded.

use lookout_models::llm::chat::ChatText;
use lookout_models::llm::{GenerateOptions, Generation, LanguageModel};
use lookout_models::vision::Scene;
use serde::Serialize;

use crate::fusion::{answer_sentence, Exchange, FusedPrompt, Grounding, SceneFacts, Task};

/// Where the final sentence came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The decoder's sentence, checked against the scene.
    Decoder,
    /// The deterministic sentence built from the scene.
    Scene,
}

/// One answer (or caption) with everything that explains it.
#[derive(Debug, Serialize)]
pub struct Reply {
    pub text: String,
    pub source: Source,
    /// Why the deterministic sentence was used, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<FusedPrompt>,
    /// The chat-formatted prompt text the decoder saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grounding: Option<Grounding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationStats>,
}

/// Token counts and timings of the decoder run.
#[derive(Debug, Serialize)]
pub struct GenerationStats {
    pub variant: String,
    pub prompt_tokens: usize,
    pub answer_tokens: usize,
    pub finish: lookout_models::llm::Finish,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub first_token_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

impl GenerationStats {
    fn of(g: &Generation, variant: &str) -> GenerationStats {
        GenerationStats {
            variant: variant.to_string(),
            prompt_tokens: g.prompt_tokens,
            answer_tokens: g.tokens.len(),
            finish: g.finish,
            prefill_ms: g.prefill_ms,
            decode_ms: g.decode_ms,
            first_token_ms: g.first_token_ms,
            prefill_tokens_per_s: g.prefill_tokens_per_s,
            decode_tokens_per_s: g.decode_tokens_per_s,
        }
    }
}

/// The language decoder a reply runs: Lookout's own, or (in `lookout bench`) a peer engine on the same GGUF.
pub trait Decoder {
    /// The tokenizer and chat template the prompt is written with.
    fn chat(&self) -> &ChatText;
    /// The most tokens, prompt and answer together, one generation may hold.
    fn capacity(&self) -> usize;
    fn variant(&self) -> &str;
    /// Generates from `prompt`, streaming text pieces to `on_text` and asking `cancel` between tokens.
    fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        cancel: &dyn Fn() -> bool,
    ) -> anyhow::Result<Generation>;
}

impl Decoder for LanguageModel {
    fn chat(&self) -> &ChatText {
        &self.text
    }

    fn capacity(&self) -> usize {
        self.context
    }

    fn variant(&self) -> &str {
        &self.variant
    }

    fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        cancel: &dyn Fn() -> bool,
    ) -> anyhow::Result<Generation> {
        Ok(self.session(None)?.generate_until(prompt, options, on_text, cancel)?)
    }
}

/// Answers `task` about `scene`; with `decoder` = None the deterministic sentence is the answer. `cancel` is asked
/// between decoding steps; a cancelled reply has `Finish::Cancelled` in its generation.
#[allow(clippy::too_many_arguments)] // each is a different role; every front end passes all of them
pub fn reply(
    scene: &Scene,
    known_labels: &[String],
    task: &Task,
    history: &[Exchange],
    decoder: Option<&dyn Decoder>,
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
    cancel: &dyn Fn() -> bool,
) -> anyhow::Result<Reply> {
    let facts = SceneFacts { scene, known_labels };
    let fallback = |reason: &str| Reply {
        text: facts.sentence(task),
        source: Source::Scene,
        fallback_reason: Some(reason.to_string()),
        prompt: None,
        prompt_text: None,
        decoder_text: None,
        grounding: None,
        generation: None,
    };
    if let Some((kind, _)) = facts.scene_answer(task) {
        return Ok(fallback(&format!("{} questions are answered from the scene", kind.phrase())));
    }
    let Some(lm) = decoder else { return Ok(fallback("decoder disabled")) };
    if facts.beyond_perception(task) {
        return Ok(fallback("the question is about nothing the detector or the text reader reports"));
    }
    let budget = lm.capacity().saturating_sub(options.max_tokens.max(1));
    let mut count = |messages: &[lookout_models::llm::chat::Message]| {
        lm.chat().prompt_ids(messages).map_or(usize::MAX, |ids| ids.len())
    };
    let Some(fused) = facts.prompt(task, history, budget, &mut count) else {
        return Ok(fallback(&format!("the prompt does not fit in {budget} tokens")));
    };
    let prompt_text = lm.chat().prompt(&fused.chat())?;
    let ids = lm.chat().prompt_ids(&fused.chat())?;
    let generation = lm.generate(&ids, options, on_text, cancel)?;
    let sentence = answer_sentence(&generation.text).unwrap_or_default();
    let grounding = facts.grounding(&sentence, task);
    let stats = GenerationStats::of(&generation, lm.variant());
    let on_topic = facts.takes_up_the_question(task, &sentence);
    let faithful = !sentence.is_empty() && grounding.faithful(task) && on_topic;
    let reason = match on_topic {
        true => unfaithful_reason(&grounding, &sentence),
        false => "the decoder's sentence does not take up what was asked".to_string(),
    };
    let mut out = fallback(&reason);
    if faithful {
        out.text = sentence;
        out.source = Source::Decoder;
        out.fallback_reason = None;
    }
    out.prompt = Some(fused);
    out.prompt_text = Some(prompt_text);
    out.decoder_text = Some(generation.text);
    out.grounding = Some(grounding);
    out.generation = Some(stats);
    Ok(out)
}

fn unfaithful_reason(g: &Grounding, sentence: &str) -> String {
    let mut parts = Vec::new();
    if sentence.is_empty() {
        parts.push("the decoder finished no sentence".to_string());
    }
    if !g.invented.is_empty() {
        parts.push(format!("names what the scene lacks: {}", g.invented.join(", ")));
    }
    if !g.miscounted.is_empty() {
        parts.push(format!("miscounts: {}", g.miscounted.join(", ")));
    }
    if !g.missing.is_empty() {
        parts.push(format!("leaves out: {}", g.missing.join(", ")));
    }
    if !g.ungrounded.is_empty() {
        parts.push(format!("says what nothing supports: {}", g.ungrounded.join(", ")));
    }
    format!("decoder sentence not faithful to the scene ({})", parts.join("; "))
}

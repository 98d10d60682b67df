//! The turn every front end runs, in one place: each stage's models loaded as a configuration or the command line
//! chooses them (the VAD and Whisper, the vision encoders, the language decoder), and the steps of "frame + question
//! → scene → answer" that surround the models: a spoken question heard, the task a question sets, the checked
//! answer. The CLI commands, the daemon's pipeline, the soak and the benchmarks call these; none of them loads a
//! model or composes a turn by itself.

use std::collections::BTreeMap;
use std::time::Duration;

use lookout_models::bundle::Bundle;
use lookout_models::engine;
use lookout_models::llm::LanguageModel;
use lookout_models::speech::{Transcriber, Transcript};
use lookout_models::vad::SileroVad;
use lookout_models::vision::VisionModels;
use lookout_models::whisper::{DecodeOptions, Whisper};
use lookout_models::ModelError;

pub use crate::answer::{reply as answer, Decoder, Reply};
use crate::config::{Config, LabelFilterConfig, OcrModel};
use crate::fusion::Task;

/// The vision models a front end runs.
#[derive(Debug, Clone, Default)]
pub struct VisionChoice {
    /// The detector variant; `None`: the bundle's first.
    pub detector: Option<String>,
    /// Whether the OCR models are loaded too.
    pub with_text: bool,
    /// Per-label filters laid over the detector's defaults (`[objects.filters]`).
    pub filters: BTreeMap<String, LabelFilterConfig>,
    /// How long reading one image's text may take; `None`: the reader's default.
    pub text_budget: Option<Duration>,
    /// Whether the detector looks at a large frame's tiles too.
    pub tiles: bool,
}

impl VisionChoice {
    /// The bundle's detector or the one named, with or without text, and the detector's own filters.
    pub fn new(detector: Option<&str>, with_text: bool) -> VisionChoice {
        let detector = detector.map(str::to_string);
        VisionChoice { detector, with_text, filters: BTreeMap::new(), text_budget: None, tiles: false }
    }

    pub fn with_text_budget(self, text_budget: Option<Duration>) -> VisionChoice {
        VisionChoice { text_budget, ..self }
    }

    pub fn with_tiles(self, tiles: bool) -> VisionChoice {
        VisionChoice { tiles, ..self }
    }
}

/// The vision stage: the detector (its label filters applied) and, when chosen, the OCR models.
pub fn load_vision(bundle: &Bundle, choice: &VisionChoice) -> anyhow::Result<VisionModels> {
    let mut vision = VisionModels::load(bundle, choice.detector.as_deref(), choice.with_text)?;
    vision.detector.set_tiles(choice.tiles);
    for (label, configured) in &choice.filters {
        let detector = &mut vision.detector;
        let current = detector.labels().iter().position(|l| l == label).map(|id| detector.label_filters()[id]);
        let Some(current) = current else {
            anyhow::bail!("objects.filters: `{label}` is not one of the detector's labels");
        };
        detector.set_label_filter(label, configured.over(current));
    }
    if let (Some(budget), Some(reader)) = (choice.text_budget, vision.reader.as_mut()) {
        reader.set_budget(budget);
    }
    Ok(vision)
}

/// The speech recognizer of this variant (`None`: the bundle's first).
pub fn load_speech(bundle: &Bundle, variant: Option<&str>) -> Result<Whisper, ModelError> {
    Whisper::load(bundle, variant)
}

/// The voice activity detector that finds the speech in a recording before Whisper hears it.
pub fn load_vad(bundle: &Bundle) -> Result<SileroVad, ModelError> {
    SileroVad::load(bundle)
}

/// The language decoder of this variant (`None`: the bundle's first), its context cut to `context` tokens when
/// given (a small board's budget).
pub fn load_decoder(
    bundle: &Bundle,
    variant: Option<&str>,
    context: Option<usize>,
) -> Result<LanguageModel, ModelError> {
    let mut decoder = LanguageModel::load(bundle, variant)?;
    if let Some(tokens) = context {
        decoder.limit_context(tokens);
    }
    Ok(decoder)
}

/// Checks every file the configuration's stages load (size, sha256, compiled forms against their source and this
/// engine) without loading any: a reload refuses a damaged bundle while the running pipeline still serves.
pub fn check_stage_files(bundle: &Bundle, config: &Config) -> Result<(), ModelError> {
    let m = &config.models;
    let mut components = Vec::new();
    if config.stage_enabled("speech") {
        components.push(SileroVad::component(bundle)?);
        components.extend(Whisper::components(bundle, Some(m.speech.as_str()))?);
    }
    if config.stage_enabled("vision") {
        components.extend(VisionModels::components(bundle, config.detector_variant(), m.ocr != OcrModel::Off)?);
    }
    if config.stage_enabled("decoder") {
        components.extend(LanguageModel::components(bundle, Some(m.decoder.as_str()))?);
    }
    components.into_iter().try_for_each(|c| engine::check_component(bundle, c))
}

/// Hears a spoken question: Whisper's transcript (`stop` is asked before each window) and the question in it,
/// `None` when no speech was found.
pub fn hear(
    transcriber: &mut Transcriber,
    samples: &[f32],
    options: &DecodeOptions,
    stop: &dyn Fn() -> bool,
) -> Result<(Transcript, Option<String>), ModelError> {
    let transcript = transcriber.transcribe_until(samples, options, stop)?;
    let question = question_in(&transcript.text);
    Ok((transcript, question))
}

/// The question a transcript's text holds: the text trimmed, `None` when it is empty.
pub fn question_in(transcript: &str) -> Option<String> {
    let text = transcript.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// What a question asks of the turn: an answer, or a caption when there is no question or it is blank (an image
/// sent alone).
pub fn task_for(question: Option<&str>) -> Task {
    match question.map(str::trim) {
        Some(q) if !q.is_empty() => Task::Answer(q.to_string()),
        _ => Task::Caption,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_or_missing_question_asks_for_a_caption() {
        assert_eq!(task_for(None), Task::Caption);
        assert_eq!(task_for(Some("  \n")), Task::Caption);
        assert_eq!(task_for(Some(" is there a dog? ")), Task::Answer("is there a dog?".into()));
    }

    #[test]
    fn a_transcript_without_words_holds_no_question() {
        assert_eq!(question_in(" \n "), None);
        assert_eq!(question_in(" How many people? ").as_deref(), Some("How many people?"));
    }
}

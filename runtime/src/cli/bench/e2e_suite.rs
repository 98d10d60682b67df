//! End-to-end suite files (`kind = "e2e"`): a photo with the objects in it, captioned, and optionally a question
//! about it (typed, or a recording heard through Whisper) with the words a right answer contains. Scored per
//! language-decoder variant (and `scene`, the deterministic sentence without a decoder, and `llama.cpp`, the same
//! pipeline with llama.cpp decoding the bundle's GGUF): caption object recall, the rate of objects named in
//! captions that are not in the photo, answer correctness, and invented facts: in captions and answers, labels not
//! in the photo and words that neither the annotation, the question nor the photo's text support.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use lookout_models::audio;
use lookout_models::llm::GenerateOptions;
use lookout_models::speech::Transcriber;
use lookout_models::vision::image::load_image;
use lookout_models::vision::Scene;
use lookout_models::whisper::{DecodeOptions, Window};
use serde::{Deserialize, Serialize};

use super::llama_cpp::LlamaCppDecoder;
use super::suite::{
    check_split, in_own_processes, not_scored_markdown, percent, prepare_items, print_worker_output, process_cells,
    split_chart, suite_heading, worker_variant, ItemError, ProcessFigures, ScoredVariant, SuiteReport, WorkerOutput,
    PROCESS_NOTE, SPLITS,
};
use super::{median, peer_python, write_report, BenchArgs};
use crate::answer::Decoder;
use crate::cli::Context;
use crate::fusion::{SceneFacts, Task, MAX_QUESTION_AUDIO};
use crate::question::number_value;
use crate::started::ms_since_process_start;
use crate::turn::{self, VisionChoice};

/// The variant that answers from the scene alone, without a decoder.
const SCENE_ONLY: &str = "scene";
/// The variant whose decoder is llama.cpp on the bundle's GGUF.
const LLAMA_CPP: &str = "llama.cpp";
const PEER_PYTHON: [&str; 1] = [".cache/venv-peers/bin/python"];
const MAX_TOKENS: usize = 48;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct E2eItem {
    id: String,
    split: String,
    source: String,
    /// Relative to the suite file.
    image: PathBuf,
    /// COCO label → count in the photo (0: present, not counted); a caption should name them.
    objects: BTreeMap<String, usize>,
    /// Labels a caption may name without being required.
    #[serde(default)]
    also: Vec<String>,
    /// A typed question...
    #[serde(default)]
    question: Option<String>,
    /// ...or a spoken one (a recording, relative to the suite file).
    #[serde(default)]
    audio: Option<PathBuf>,
    /// Words or phrases of which a right answer contains at least one.
    #[serde(default)]
    expect: Vec<String>,
    /// The text in the image, line by line, which an answer may quote.
    #[serde(default)]
    text: Option<String>,
}

struct Ready {
    item: E2eItem,
    scene: Scene,
    /// The typed question, or what Whisper heard.
    question: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Scored {
    id: String,
    split: String,
    source: String,
    caption: String,
    named: Vec<String>,
    missed: Vec<String>,
    not_in_photo: Vec<String>,
    question: Option<String>,
    answer: Option<String>,
    answer_right: Option<bool>,
    /// The image, relative to the suite file.
    #[serde(default)]
    image: String,
    /// What the caption says that the image does not support.
    #[serde(default)]
    caption_invented: Vec<String>,
    /// What the answer says that the image does not support.
    #[serde(default)]
    answer_invented: Vec<String>,
    ms: f64,
    /// The caption's decoding, when a decoder wrote it.
    first_token_ms: Option<f64>,
    tokens_per_s: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SplitScore {
    split: String,
    items: usize,
    caption_recall: f64,
    /// Objects named in captions that are not in the photo, over all objects named.
    not_in_photo_rate: f64,
    answers: usize,
    answer_accuracy: Option<f64>,
    /// Invented facts over all captions and answers of the split.
    #[serde(default)]
    invented_facts: usize,
}

type VariantResult = ScoredVariant<SplitScore, Scored>;

pub(super) fn run(
    ctx: &Context,
    args: &BenchArgs,
    path: &Path,
    description: &str,
    items: &[toml::Value],
) -> anyhow::Result<()> {
    if args.worker.is_some() {
        let choice = VisionChoice::new(args.detector.as_deref(), true)
            .with_text_budget(args.text_budget)
            .with_tiles(!args.no_tiles);
        return run_variant(ctx, worker_variant(args)?, &choice, path, items);
    }
    let bundle = ctx.open_bundle()?;
    let variants: Vec<String> = if args.variants.is_empty() {
        let mut all: Vec<String> = std::iter::once(SCENE_ONLY.to_string())
            .chain(bundle.variants("llm-decoder").into_iter().map(str::to_string))
            .collect();
        match (args.no_peers, peer_python(&PEER_PYTHON)) {
            (true, _) => eprintln!("bench: peers skipped (--no-peers)"),
            (false, None) => {
                eprintln!("bench: llama.cpp not installed (runtime/bench/setup-peers.sh); scoring lookout alone")
            }
            (false, Some(_)) => all.push(LLAMA_CPP.to_string()),
        }
        all
    } else {
        args.variants.clone()
    };
    let outputs: Vec<WorkerOutput<VariantResult>> = in_own_processes(ctx, args, path, &variants)?;
    let skipped = outputs.first().map(|o| o.skipped.clone()).unwrap_or_default();
    let results: Vec<VariantResult> = outputs.into_iter().map(|o| o.result).collect();
    let suite = path.display().to_string();
    let markdown = report_markdown(&suite, description, &skipped, &results);
    write_report(
        &args.out,
        &markdown,
        &SuiteReport { suite: suite.clone(), kind: "e2e", description, skipped: &skipped, variants: &results },
    )?;
    let bars: Vec<_> = results
        .iter()
        .map(|r| {
            let of = |name: &str| r.splits.iter().find(|s| s.split == name).and_then(|s| s.answer_accuracy);
            (r.variant.clone(), of("in-domain"), of("held-out"))
        })
        .collect();
    let svg = args.out.join("answers.svg");
    std::fs::write(&svg, split_chart("Right answers per decoder variant", &bars))
        .with_context(|| svg.display().to_string())?;
    Ok(())
}

/// One variant in this process (`--worker suite`): every model the job needs is loaded first (the cold start),
/// then each item's scene is described and its spoken question heard, then the variant captions and answers.
fn run_variant(
    ctx: &Context,
    variant: &str,
    vision: &VisionChoice,
    path: &Path,
    items: &[toml::Value],
) -> anyhow::Result<()> {
    lookout_models::engine::set_threads(1);
    let bundle = ctx.open_bundle()?;
    let vision = turn::load_vision(&bundle, vision)?;
    let whisper = turn::load_speech(&bundle, None)?;
    let vad = turn::load_vad(&bundle)?;
    let mut transcriber = Transcriber::new(&whisper, Some(&vad))?;
    let (mut ours, mut peer) = (None, None);
    match variant {
        SCENE_ONLY => {}
        LLAMA_CPP => {
            let python = peer_python(&PEER_PYTHON)
                .context("llama.cpp needs the peers' Python (runtime/bench/setup-peers.sh)")?;
            peer = Some(LlamaCppDecoder::start(&python, &bundle)?);
        }
        v => ours = Some(turn::load_decoder(&bundle, Some(v), None).with_context(|| format!("decoder variant {v}"))?),
    }
    let decoder: Option<&dyn Decoder> = match (&ours, &peer) {
        (Some(lm), _) => Some(lm),
        (_, Some(llama)) => Some(llama),
        _ => None,
    };
    let cold_start_ms = ms_since_process_start();
    let labels: BTreeSet<String> = vision.detector.labels().iter().cloned().collect();
    let mut session = vision.session()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (ready, skipped) = prepare_items(path, items, |value| {
        let item: E2eItem = value.clone().try_into().context("malformed entry")?;
        check_split(&item.split)?;
        if let Some(unknown) = item.objects.keys().chain(&item.also).find(|l| !labels.contains(*l)) {
            bail!("`{unknown}` is not one of the detector's labels");
        }
        if (item.question.is_some() || item.audio.is_some()) && item.expect.is_empty() {
            bail!("a question needs `expect`, the words a right answer contains");
        }
        let file = base.join(&item.image);
        let image = load_image(&file).with_context(|| file.display().to_string())?;
        let scene = session.describe(&image)?;
        let question = match (&item.question, &item.audio) {
            (Some(q), None) => Some(q.clone()),
            (None, Some(recording)) => {
                let file = base.join(recording);
                let samples =
                    audio::load_mono_16k(&file, MAX_QUESTION_AUDIO).with_context(|| file.display().to_string())?;
                let options = DecodeOptions { window: Window::FIT, ..DecodeOptions::default() };
                let (_, heard) = turn::hear(&mut transcriber, &samples, &options, &|| false)?;
                Some(heard.ok_or_else(|| anyhow::anyhow!("no speech heard in {}", file.display()))?)
            }
            (None, None) => None,
            (Some(_), Some(_)) => bail!("give `question` or `audio`, not both"),
        };
        Ok(Ready { item, scene, question })
    })?;
    drop(session);
    let known: Vec<String> = labels.into_iter().collect();
    let mut result = evaluate(decoder.map_or(variant, |d| d.variant()), decoder, &known, &ready);
    let mut process = ProcessFigures::now(cold_start_ms);
    if let Some(llama) = &peer {
        // The decoder's memory is in its own process.
        process.peak_rss_mib += llama.peak_rss_mib()?;
    }
    result.process = Some(process);
    print_worker_output(skipped, result)
}

fn evaluate(variant: &str, decoder: Option<&dyn Decoder>, known: &[String], items: &[Ready]) -> VariantResult {
    let options = GenerateOptions { max_tokens: MAX_TOKENS, ..GenerateOptions::default() };
    let (mut scored, mut failed) = (Vec::new(), Vec::new());
    // Greedy captions of one image are the same every time: written once per image.
    let mut captions: BTreeMap<PathBuf, (String, Option<f64>, Option<f64>)> = BTreeMap::new();
    for (i, ready) in items.iter().enumerate() {
        eprint!("\rbench: {variant} {}/{} {:<30}", i + 1, items.len(), ready.item.id);
        let started = Instant::now();
        let run = |task: &Task| turn::answer(&ready.scene, known, task, &[], decoder, &options, &mut |_| {}, &|| false);
        let caption = match captions.get(&ready.item.image) {
            Some(known) => Ok(known.clone()),
            None => run(&Task::Caption).map(|r| {
                let timing = (
                    r.generation.as_ref().map(|g| g.first_token_ms),
                    r.generation.as_ref().map(|g| g.decode_tokens_per_s),
                );
                let entry = (r.text, timing.0, timing.1);
                captions.insert(ready.item.image.clone(), entry.clone());
                entry
            }),
        };
        let (caption, first_token_ms, tokens_per_s) = match caption {
            Ok(c) => c,
            Err(e) => {
                failed.push(ItemError { item: ready.item.id.clone(), error: format!("{e:#}") });
                continue;
            }
        };
        let answer = match &ready.question {
            Some(q) => match run(&Task::Answer(q.clone())) {
                Ok(r) => Some(r.text),
                Err(e) => {
                    failed.push(ItemError { item: ready.item.id.clone(), error: format!("{e:#}") });
                    continue;
                }
            },
            None => None,
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let reference = reference_scene(&ready.item);
        let facts = SceneFacts { scene: &reference, known_labels: known };
        let grounding = facts.grounding(&caption, &Task::Caption);
        let named: Vec<String> =
            grounding.named.iter().filter(|l| ready.item.objects.contains_key(*l)).cloned().collect();
        let missed = ready.item.objects.keys().filter(|l| !named.contains(l)).cloned().collect();
        let answer_right = answer.as_ref().map(|a| contains_any(a, &ready.item.expect));
        let caption_invented = invented(&ready.item, &facts, &caption, &Task::Caption);
        let answer_invented = match (&ready.question, &answer) {
            (Some(question), Some(answer)) => invented(&ready.item, &facts, answer, &Task::Answer(question.clone())),
            _ => Vec::new(),
        };
        scored.push(Scored {
            id: ready.item.id.clone(),
            split: ready.item.split.clone(),
            source: ready.item.source.clone(),
            caption,
            named,
            missed,
            not_in_photo: grounding.invented,
            question: ready.question.clone(),
            answer,
            answer_right,
            image: ready.item.image.display().to_string(),
            caption_invented,
            answer_invented,
            ms,
            first_token_ms,
            tokens_per_s,
        });
    }
    eprintln!();
    let splits = SPLITS.iter().filter_map(|&split| split_score(split, &scored)).collect();
    VariantResult::new(variant.to_string(), splits, scored, failed, |s| s.ms)
}

/// The image as annotated: its reference objects (counted, or present when the count is 0), with the labels it may
/// also show, and its text; what captions and answers are checked against instead of the detector's scene.
fn reference_scene(item: &E2eItem) -> Scene {
    Scene {
        counts: item
            .objects
            .iter()
            .map(|(l, n)| (l.clone(), *n))
            .chain(item.also.iter().map(|l| (l.clone(), 0)))
            .collect(),
        text: item
            .text
            .iter()
            .flat_map(|t| t.lines())
            .map(|line| lookout_models::vision::scene::TextLine { text: line.to_string(), score: 1.0, bbox: [0.0; 4] })
            .collect(),
        ..Scene::default()
    }
}

/// What `sentence` claims that the annotated image does not support: labels it lacks, counts that differ from a
/// counted label's, and unsupported words (a number is not judged when the image holds an uncounted label).
fn invented(item: &E2eItem, facts: &SceneFacts, sentence: &str, task: &Task) -> Vec<String> {
    let g = facts.grounding(sentence, task);
    let uncounted = item.objects.values().any(|n| *n == 0) || !item.also.is_empty();
    let counted = |label: &String| item.objects.get(label).is_some_and(|n| *n > 0);
    let is_number = |word: &String| number_value(word).is_some();
    g.invented
        .into_iter()
        .chain(g.miscounted.into_iter().filter(counted).map(|l| format!("count of {l}")))
        .chain(g.ungrounded.into_iter().filter(|w| !(uncounted && is_number(w))))
        .collect()
}

fn split_score(split: &str, scored: &[Scored]) -> Option<SplitScore> {
    let of_split: Vec<&Scored> = scored.iter().filter(|s| s.split == split).collect();
    if of_split.is_empty() {
        return None;
    }
    let named: usize = of_split.iter().map(|s| s.named.len()).sum();
    let wanted: usize = named + of_split.iter().map(|s| s.missed.len()).sum::<usize>();
    let invented: usize = of_split.iter().map(|s| s.not_in_photo.len()).sum();
    let answered: Vec<bool> = of_split.iter().filter_map(|s| s.answer_right).collect();
    // A caption shared by the items of one image counts once.
    let caption_facts: BTreeMap<&str, usize> =
        of_split.iter().map(|s| (s.image.as_str(), s.caption_invented.len())).collect();
    let answer_facts: usize = of_split.iter().map(|s| s.answer_invented.len()).sum();
    Some(SplitScore {
        split: split.to_string(),
        items: of_split.len(),
        caption_recall: named as f64 / wanted.max(1) as f64,
        not_in_photo_rate: invented as f64 / (named + invented).max(1) as f64,
        answers: answered.len(),
        answer_accuracy: (!answered.is_empty())
            .then(|| answered.iter().filter(|&&r| r).count() as f64 / answered.len() as f64),
        invented_facts: caption_facts.values().sum::<usize>() + answer_facts,
    })
}

/// Whether `text` contains one of `phrases` as whole words, ignoring case and punctuation.
fn contains_any(text: &str, phrases: &[String]) -> bool {
    let words = |s: &str| {
        s.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let said = words(text);
    phrases.iter().any(|p| {
        let wanted = words(p);
        !wanted.is_empty() && said.windows(wanted.len()).any(|w| w == wanted.as_slice())
    })
}

fn report_markdown(suite: &str, description: &str, skipped: &[ItemError], results: &[VariantResult]) -> String {
    let mut md = suite_heading(
        suite,
        "one thread, greedy decoding, detector and OCR, Whisper for spoken questions",
        description,
    );
    md.push_str("| decoder | split | items | caption object recall | objects named not in photo | answers right | invented facts | ms per item p50 | p95 | first token ms | tokens/s | cold start ms | peak RSS MiB |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let decoded = |f: fn(&Scored) -> Option<f64>| {
            let values: Vec<f64> = r.items.iter().filter_map(f).collect();
            if values.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", median(values.into_iter()))
            }
        };
        let (first_token, tokens_per_s) = (decoded(|s| s.first_token_ms), decoded(|s| s.tokens_per_s));
        for s in &r.splits {
            let answers = s
                .answer_accuracy
                .map_or("-".to_string(), |a| format!("{} of {}", (a * s.answers as f64).round(), s.answers));
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {answers} | {} | {:.0} | {:.0} | {first_token} | {tokens_per_s} | {} |\n",
                r.variant,
                s.split,
                s.items,
                percent(s.caption_recall),
                percent(s.not_in_photo_rate),
                s.invented_facts,
                r.median_ms,
                r.p95_ms,
                process_cells(r.process)
            ));
        }
    }
    md.push_str("\nRecall counts the photo's reference objects a caption names; a named COCO object that is neither in `objects` nor in `also` counts as not in the photo. An answer is right when it contains one of the item's expected words. Invented facts, over every caption (once per image) and answer: COCO labels the image lacks, counts unlike a counted label's, and words that no annotated object or its everyday names, no position or function word, no word of the question and no word of the image's text supports; each is listed below.\n");
    md.push_str(PROCESS_NOTE);
    if let Some(peer) = results.iter().find(|r| r.variant.starts_with(LLAMA_CPP)) {
        md.push_str(&format!("`{}` is Lookout's pipeline with llama.cpp decoding the bundle's GGUF from the same prompt ids (greedy, one thread); its peak RSS adds the llama.cpp process's to Lookout's.", peer.variant));
        for r in results.iter().filter(|r| r.variant != peer.variant && r.variant != SCENE_ONLY) {
            md.push_str(&format!(
                " Per item, {} takes {:.2}x llama.cpp's time (median).",
                r.variant,
                r.median_ms / peer.median_ms.max(1e-9)
            ));
        }
        md.push('\n');
    }
    md.push_str("\n## Captions and answers\n\n| item | decoder | caption | question | answer | right | invented |\n|---|---|---|---|---|---|---|\n");
    for r in results {
        for s in &r.items {
            let right = s.answer_right.map_or("", |r| if r { "yes" } else { "no" });
            let invented: Vec<&str> = s.caption_invented.iter().chain(&s.answer_invented).map(String::as_str).collect();
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {right} | {} |\n",
                s.id,
                r.variant,
                s.caption,
                s.question.as_deref().unwrap_or(""),
                s.answer.as_deref().unwrap_or(""),
                invented.join(", ").replace('|', "\\|")
            ));
        }
    }
    let failed: Vec<(&str, &ItemError)> =
        results.iter().flat_map(|r| r.failed.iter().map(move |f| (r.variant.as_str(), f))).collect();
    md.push_str(&not_scored_markdown(skipped, &failed));
    md
}

#[cfg(test)]
mod tests {
    use super::contains_any;

    #[test]
    fn answers_are_matched_on_whole_words() {
        let expect = ["two".to_string(), "2".to_string()];
        assert!(contains_any("I see two people.", &expect));
        assert!(contains_any("There are 2 kites", &expect));
        assert!(!contains_any("I see twenty people", &expect));
        assert!(contains_any("Yes, a dog is there", &["a dog".to_string()]));
        assert!(!contains_any("anything", &[String::new()]));
    }
}

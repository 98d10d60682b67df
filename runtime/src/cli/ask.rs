//! `lookout caption IMAGE` and `lookout ask --image IMAGE (--audio WAV | --text Q)`: the scene from the vision
//! path, the question from text or speech, one checked sentence from the language decoder.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use lookout_models::audio;
use lookout_models::llm::{GenerateOptions, Sampling};
use lookout_models::speech::Transcriber;
use lookout_models::vision::image::load_image;
use lookout_models::vision::Scene;
use lookout_models::whisper::{DecodeOptions, Window};
use lookout_models::ModelError;
use serde::Serialize;

use super::{print_json, Context};
use crate::exit::BadInput;
use crate::fusion::{MAX_QUESTION_AUDIO, MAX_QUESTION_BYTES};
use crate::memory;
use crate::started::ms_since;
use crate::turn::{self, Decoder, Reply, VisionChoice};

/// Options shared by `caption` and `ask`.
#[derive(Debug, Args)]
pub struct LanguageArgs {
    /// Print a JSON object with the scene, the fused prompt, the answer, token counts and timings.
    #[arg(long)]
    json: bool,
    /// Decoder variant from the bundle (q4, f32); default: the bundle's first.
    #[arg(long)]
    variant: Option<String>,
    /// Object detector variant from the bundle (nanodet, centernet); default: the bundle's first.
    #[arg(long)]
    detector: Option<String>,
    /// Answer from the scene alone, without the language decoder.
    #[arg(long)]
    no_decoder: bool,
    /// Most tokens the decoder may write.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=512))]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler (with --temperature above 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the decoder's words to stderr as they are generated.
    #[arg(long)]
    stream: bool,
    /// Skip reading text in the image.
    #[arg(long)]
    no_ocr: bool,
    /// Seconds reading the image's text may take before the remaining lines are left unread (default 4).
    #[arg(long, value_name = "SECONDS", value_parser = super::parse_text_budget)]
    text_budget: Option<std::time::Duration>,
    /// Look at a large image whole only, not in tiles too: faster, but far people and vehicles are missed (tiles
    /// cost one more detector run each: 8 for 1920x1080, 6 for 1280x720, none for an image under 960 pixels long
    /// with CenterNet, 780 with NanoDet).
    #[arg(long)]
    no_tiles: bool,
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// JPEG or PNG file.
    image: PathBuf,
    #[command(flatten)]
    language: LanguageArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("question").required(true).args(["audio", "text"])))]
pub struct AskArgs {
    /// JPEG or PNG file.
    #[arg(long)]
    image: PathBuf,
    /// The question as speech (WAV or FLAC).
    #[arg(long)]
    audio: Option<PathBuf>,
    /// The question as text.
    #[arg(long)]
    text: Option<String>,
    /// Speech recognizer variant (int8, f32).
    #[arg(long)]
    asr_variant: Option<String>,
    #[command(flatten)]
    language: LanguageArgs,
}

#[derive(Serialize)]
struct Output<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transcript: Option<&'a str>,
    answer: &'a str,
    scene: &'a Scene,
    reply: &'a Reply,
    timings_ms: &'a BTreeMap<String, f64>,
    memory: Option<Memory>,
}

#[derive(Serialize)]
struct Memory {
    peak_mib: f64,
}

pub fn caption(ctx: &Context, args: CaptionArgs) -> anyhow::Result<()> {
    run(ctx, &args.image, None, None, &args.language)
}

pub fn ask(ctx: &Context, args: AskArgs) -> anyhow::Result<()> {
    if let Some(text) = &args.text {
        if text.trim().is_empty() {
            return Err(BadInput("--text is empty".into()).into());
        }
        if text.len() > MAX_QUESTION_BYTES {
            return Err(BadInput(format!(
                "--text has {} bytes; questions are limited to {MAX_QUESTION_BYTES}",
                text.len()
            ))
            .into());
        }
    }
    let question = args.audio.as_ref().map(|audio| (audio, args.asr_variant.as_deref()));
    run(ctx, &args.image, args.text.as_deref(), question, &args.language)
}

/// Available memory above which `ask` sees the photo and loads the decoder beside the speech models instead of after
/// them.
const OVERLAP_MIN_AVAILABLE_MIB: f64 = 1024.0;

fn run(
    ctx: &Context,
    image_path: &Path,
    text: Option<&str>,
    speech: Option<(&PathBuf, Option<&str>)>,
    args: &LanguageArgs,
) -> anyhow::Result<()> {
    let sampling = Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed };
    sampling.validate().map_err(BadInput)?;
    let mut timings = BTreeMap::new();
    // Inputs are read before any model is loaded, so bad input fails fast.
    let started = Instant::now();
    let image = load_image(image_path).with_context(|| image_path.display().to_string())?;
    timings.insert("image".to_string(), ms_since(started));
    let samples = match speech {
        Some((path, _)) => {
            let started = Instant::now();
            let samples = audio::load_mono_16k(path, MAX_QUESTION_AUDIO).with_context(|| path.display().to_string())?;
            timings.insert("audio".to_string(), ms_since(started));
            Some(samples)
        }
        None => None,
    };

    let bundle = ctx.open_bundle()?;
    // When each model finished loading: the last of them, counted from the process's start, is the cold start.
    let loaded_at = std::sync::Mutex::new(Vec::new());
    let note_loaded = || loaded_at.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
    let load_decoder = || {
        let started = Instant::now();
        let lm = turn::load_decoder(&bundle, args.variant.as_deref(), None)?;
        note_loaded();
        Ok::<_, ModelError>((lm, ms_since(started)))
    };
    let see = || -> anyhow::Result<_> {
        let started = Instant::now();
        let vision = turn::load_vision(
            &bundle,
            &VisionChoice::new(args.detector.as_deref(), !args.no_ocr)
                .with_text_budget(args.text_budget)
                .with_tiles(!args.no_tiles),
        )?;
        let mut session = vision.session()?;
        note_loaded();
        let load_ms = ms_since(started);
        let started = Instant::now();
        let scene = session.describe(&image)?;
        drop(session);
        Ok((vision, scene, load_ms, ms_since(started)))
    };
    // With memory to spare, the photo is seen and the decoder loads on threads of their own while the question is
    // heard; that holds them beside the speech models (about 410 MiB at the peak instead of 275).
    let overlap = memory::available_mib().is_some_and(|mib| mib >= OVERLAP_MIN_AVAILABLE_MIB);
    let (transcript, scene, vision, decoder) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let decoder_load = (overlap && !args.no_decoder).then(|| scope.spawn(load_decoder));
        let seeing = overlap.then(|| scope.spawn(see));
        let transcript = match (&samples, speech) {
            (Some(samples), Some((_, variant))) => {
                let started = Instant::now();
                let whisper = turn::load_speech(&bundle, variant)?;
                let vad = turn::load_vad(&bundle)?;
                let mut transcriber = Transcriber::new(&whisper, Some(&vad))?;
                note_loaded();
                timings.insert("load_speech".to_string(), ms_since(started));
                let started = Instant::now();
                let options = DecodeOptions { window: Window::FIT, ..DecodeOptions::default() };
                let (_, question) = turn::hear(&mut transcriber, samples, &options, &|| false)?;
                timings.insert("transcribe".to_string(), ms_since(started));
                Some(question.ok_or_else(|| BadInput("no speech found in the audio question".into()))?)
            }
            _ => None,
        };

        let (vision, scene, load_ms, seeing_ms) = match seeing {
            Some(seeing) => seeing.join().map_err(|_| anyhow::anyhow!("the vision thread failed"))??,
            None => see()?,
        };
        timings.insert("load_vision".to_string(), load_ms);
        timings.insert("vision".to_string(), seeing_ms);

        let decoder = match decoder_load {
            Some(loading) => {
                let started = Instant::now();
                let (lm, load_ms) =
                    loading.join().map_err(|_| anyhow::anyhow!("the decoder's loading thread failed"))??;
                timings.insert("load_decoder".to_string(), load_ms);
                timings.insert("wait_decoder".to_string(), ms_since(started));
                Some(lm)
            }
            None if args.no_decoder => None,
            None => {
                let (lm, load_ms) = load_decoder()?;
                timings.insert("load_decoder".to_string(), load_ms);
                Some(lm)
            }
        };
        Ok((transcript, scene, vision, decoder))
    })?;
    if let Some(last) = loaded_at.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().max() {
        timings.insert("cold_start".to_string(), crate::started::ms_from_process_start(last));
    }

    let task = turn::task_for(text.or(transcript.as_deref()));
    let options = GenerateOptions { max_tokens: args.max_tokens as usize, sampling };
    let started = Instant::now();
    let mut stderr = std::io::stderr();
    let mut on_text = |piece: &str| {
        if args.stream {
            let _ = write!(stderr, "{piece}");
            let _ = stderr.flush();
        }
    };
    let result = turn::answer(
        &scene,
        vision.detector.labels(),
        &task,
        &[],
        decoder.as_ref().map(|d| d as &dyn Decoder),
        &options,
        &mut on_text,
        &|| false,
    )?;
    if args.stream && result.decoder_text.is_some() {
        eprintln!();
    }
    timings.insert("answer".to_string(), ms_since(started));

    if args.json {
        return print_json(&Output {
            question: text,
            transcript: transcript.as_deref(),
            answer: &result.text,
            scene: &scene,
            reply: &result,
            timings_ms: &timings,
            memory: memory::rss().map(|m| Memory { peak_mib: m.peak_mib }),
        });
    }
    if let Some(t) = &transcript {
        println!("Q: {t}");
    }
    println!("{}", result.text);
    Ok(())
}

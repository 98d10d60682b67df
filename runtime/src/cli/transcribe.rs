//! `lookout transcribe FILE`: speech to text from a WAV or FLAC file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use lookout_models::audio;
use lookout_models::speech::Transcriber;
use lookout_models::whisper::{DecodeOptions, Task, Window};
use serde::Serialize;

use super::{print_json, Context};
use crate::memory;
use crate::started::ms_since;
use crate::turn;

#[derive(Debug, Args)]
pub struct TranscribeArgs {
    /// WAV or FLAC file, any rate and channel count.
    file: PathBuf,
    /// Print a JSON object with segments, tokens and timings.
    #[arg(long)]
    json: bool,
    /// Model variant from the bundle manifest (e.g. int8, f32); default: the bundle's first.
    #[arg(long)]
    variant: Option<String>,
    /// Spoken language (ISO code).
    #[arg(long, default_value = "en")]
    language: String,
    /// Translate to English instead of transcribing.
    #[arg(long)]
    translate: bool,
    /// Encoder window: `full` (always 30 s) or `fit` (only the frames the audio needs).
    #[arg(long, value_enum, default_value_t = WindowArg::Full)]
    window: WindowArg,
    /// Transcribe everything instead of only the speech the VAD finds.
    #[arg(long)]
    no_vad: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WindowArg {
    Full,
    Fit,
}

impl WindowArg {
    /// The window named `full` or `fit`, as the benchmarks spell it in their variant names.
    #[cfg(feature = "bench")]
    pub fn named(name: &str) -> anyhow::Result<Window> {
        Ok(WindowArg::from_str(name, false)
            .map_err(|_| anyhow::anyhow!("unknown window `{name}` (fit or full)"))?
            .window())
    }

    pub fn window(self) -> Window {
        match self {
            WindowArg::Full => Window::Full,
            WindowArg::Fit => Window::FIT,
        }
    }
}

#[derive(Serialize)]
struct Timings {
    load: f64,
    audio: f64,
    vad: f64,
    mel: f64,
    encode: f64,
    decode: f64,
}

#[derive(Serialize)]
struct Output<'t> {
    text: &'t str,
    segments: &'t [lookout_models::speech::Segment],
    tokens: usize,
    variant: &'t str,
    duration_s: f64,
    frames: &'t [usize],
    timings_ms: Timings,
    /// Resident memory after loading the models, and at its peak while transcribing.
    memory: Option<Memory>,
}

#[derive(Serialize)]
struct Memory {
    loaded_mib: f64,
    peak_mib: f64,
}

pub fn run(ctx: &Context, args: TranscribeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let samples = audio::load_mono_16k(&args.file, audio::AudioLimit::RECORDING)
        .with_context(|| args.file.display().to_string())?;
    let audio_ms = ms_since(started);

    let started = Instant::now();
    let bundle = ctx.open_bundle()?;
    let whisper = turn::load_speech(&bundle, args.variant.as_deref())?;
    let vad = if args.no_vad { None } else { Some(turn::load_vad(&bundle)?) };
    let mut transcriber = Transcriber::new(&whisper, vad.as_ref())?;
    let load_ms = ms_since(started);
    let loaded = memory::rss();

    let options = DecodeOptions {
        language: args.language,
        task: if args.translate { Task::Translate } else { Task::Transcribe },
        window: args.window.window(),
        ..DecodeOptions::default()
    };
    let transcript = transcriber.transcribe(&samples, &options)?;
    let memory = loaded.zip(memory::rss()).map(|(l, end)| Memory { loaded_mib: l.rss_mib, peak_mib: end.peak_mib });
    if args.json {
        let t = &transcript.timings_ms;
        print_json(&Output {
            text: &transcript.text,
            segments: &transcript.segments,
            tokens: transcript.tokens,
            variant: &transcript.variant,
            duration_s: samples.len() as f64 / 16_000.0,
            frames: &transcript.frames,
            timings_ms: Timings {
                load: load_ms,
                audio: audio_ms,
                vad: t.vad,
                mel: t.mel,
                encode: t.encode,
                decode: t.decode,
            },
            memory,
        })
    } else {
        println!("{}", transcript.text);
        Ok(())
    }
}

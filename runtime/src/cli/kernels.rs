//! `lookout models kernels`: which kernels each stage's graphs run on this CPU (tract's matrix-product kernel per
//! product, the operators, and the routines picked for activations, reductions and convolutions), and, with
//! `--runs`, a stage run a given number of times on fixed inputs so that an instruction counter (cross/cost.sh,
//! under qemu-user) can tell the cost of one run from the cost of loading.

use std::time::Instant;

use anyhow::anyhow;
use lookout_models::bundle::Bundle;
use lookout_models::engine::{self, KernelReport};
use lookout_models::llm::GenerateOptions;
use lookout_models::vision::image::load_image;
use lookout_models::whisper::{DecodeOptions, Window};
use serde::Serialize;

use super::measure::{filler_prompt, test_audio, test_image};
use super::Context;
use crate::turn::{self, VisionChoice};

/// The stages, in pipeline order, with the bundle role whose variants they come in and what one run of each is.
const STAGES: [(&str, &str, &str); 5] = [
    ("vad", "vad", "10 s of audio"),
    ("speech", "asr-encoder", "one 10 s window (fitted): log-mel and encoder, no tokens"),
    ("vision", "object-detector", "one frame through the detector"),
    ("vision-ocr", "object-detector", "one frame through the detector and the OCR models"),
    ("decoder", "llm-decoder", "one generated token after a 32-token prompt"),
];
const AUDIO_S: u32 = 10;
const PROMPT_TOKENS: usize = 32;

#[derive(Debug, clap::Args)]
pub struct KernelsArgs {
    /// Only this stage: vad, speech, vision, vision-ocr or decoder (default: every stage).
    #[arg(long)]
    stage: Option<String>,
    /// The stage's variant (default: the bundle's first).
    #[arg(long, requires = "stage")]
    variant: Option<String>,
    /// Run the stage this many times after loading it (for the decoder: generate this many tokens), on one
    /// thread, and report the time.
    #[arg(long, default_value_t = 0, requires = "stage")]
    runs: usize,
    /// The photo the vision stages run on (default: a synthetic 640x480 frame).
    #[arg(long, value_name = "FILE")]
    image: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct StageKernels {
    stage: &'static str,
    variant: String,
    graphs: Vec<KernelReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runs: Option<Runs>,
}

#[derive(Serialize)]
struct Runs {
    /// What one run is.
    unit: &'static str,
    /// Runs made (for the decoder: tokens generated, which stops early at the end of an answer).
    count: usize,
    ms: f64,
}

#[derive(Serialize)]
struct Report {
    arch: &'static str,
    /// The single-winner routines tract uses for f32 on this CPU, by function (`null`: generic code).
    routines: Vec<(&'static str, Option<&'static str>)>,
    stages: Vec<StageKernels>,
}

pub fn run(ctx: &Context, args: KernelsArgs) -> anyhow::Result<()> {
    let bundle = ctx.open_bundle()?;
    let stages: Vec<_> = match &args.stage {
        Some(name) => vec![*STAGES.iter().find(|(stage, ..)| stage == name).ok_or_else(|| {
            let names: Vec<&str> = STAGES.iter().map(|(stage, ..)| *stage).collect();
            crate::exit::BadInput(format!("unknown stage `{name}`: one of {}", names.join(", ")))
        })?],
        None => STAGES.to_vec(),
    };
    engine::set_threads(1);
    let mut report = Report { arch: std::env::consts::ARCH, routines: engine::routines(), stages: Vec::new() };
    for (stage, role, unit) in stages {
        let variant = match &args.variant {
            Some(v) => v.clone(),
            None => bundle.variants(role).first().map(|v| v.to_string()).unwrap_or_default(),
        };
        let (graphs, runs) = load_and_run(&bundle, stage, &variant, args.runs, args.image.as_deref())?;
        let runs = (args.runs > 0).then_some(Runs { unit, count: runs.0, ms: runs.1 });
        report.stages.push(StageKernels { stage, variant, graphs, runs });
    }
    if args.json {
        return super::print_json(&report);
    }
    print_report(&report);
    Ok(())
}

/// Loads the stage, runs it `runs` times, and returns its graphs' kernels with the runs made and their time.
fn load_and_run(
    bundle: &Bundle,
    stage: &str,
    variant: &str,
    runs: usize,
    image: Option<&std::path::Path>,
) -> anyhow::Result<(Vec<KernelReport>, (usize, f64))> {
    match stage {
        "vad" => {
            let vad = turn::load_vad(bundle)?;
            let audio = test_audio(AUDIO_S);
            let started = Instant::now();
            for _ in 0..runs {
                vad.session()?.speech_regions(&audio)?;
            }
            Ok((vad.kernels(), (runs, ms_since(started))))
        }
        "speech" => {
            let whisper = turn::load_speech(bundle, Some(variant))?;
            // The fitted window adds 1 s to the audio.
            let audio = test_audio(AUDIO_S - 1);
            let options = DecodeOptions { window: Window::FIT, max_tokens: 0, ..DecodeOptions::default() };
            let mut session = whisper.session()?;
            let started = Instant::now();
            for _ in 0..runs {
                session.transcribe_window(&audio, &options)?;
            }
            Ok((whisper.kernels(), (runs, ms_since(started))))
        }
        "vision" | "vision-ocr" => {
            let vision = turn::load_vision(bundle, &VisionChoice::new(Some(variant), stage == "vision-ocr"))?;
            let frame = match image {
                Some(path) => {
                    load_image(path).map_err(|e| crate::exit::BadInput(format!("{}: {e}", path.display())))?
                }
                None => test_image(640, 480),
            };
            let mut session = vision.session()?;
            let started = Instant::now();
            for _ in 0..runs {
                session.describe(&frame)?;
            }
            Ok((vision.kernels(), (runs, ms_since(started))))
        }
        "decoder" => {
            let lm = turn::load_decoder(bundle, Some(variant), None)?;
            let prompt = filler_prompt(&lm, PROMPT_TOKENS);
            let options = GenerateOptions { max_tokens: runs, sampling: Default::default() };
            let started = Instant::now();
            let tokens = match runs {
                0 => 0,
                _ => lm.session(None)?.generate(&prompt, &options, &mut |_| {})?.tokens.len(),
            };
            Ok((lm.kernels(), (tokens, ms_since(started))))
        }
        other => Err(anyhow!("unknown stage `{other}`")),
    }
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

fn print_report(report: &Report) {
    println!("tract routines for f32 on this {} CPU:", report.arch);
    for (func, routine) in &report.routines {
        println!("  {func:<22} {}", routine.unwrap_or("(generic code)"));
    }
    for stage in &report.stages {
        println!("{} ({}):", stage.stage, stage.variant);
        for graph in &stage.graphs {
            let mut ops: Vec<_> = graph.ops.iter().filter(|(op, _)| op.as_str() != "Const").collect();
            ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let ops: Vec<String> = ops.iter().take(8).map(|(op, n)| format!("{op} {n}")).collect();
            println!("  {} ({} nodes): {}", graph.component, graph.nodes, ops.join(", "));
            let share = graph.tract_product_share.map_or("sized when the graph runs".to_string(), |share| {
                format!("{:.1}% of multiply-adds", share * 100.0)
            });
            let threads = if graph.tract_threads { "on the thread pool" } else { "on the calling thread" };
            println!("    tract's own products: {share}, {threads}");
            for (kernel, n) in &graph.product_kernels {
                println!("    {n:>4} x {kernel}");
            }
        }
        if let Some(runs) = &stage.runs {
            println!("  {} run(s) of {}: {:.0} ms", runs.count, runs.unit, runs.ms);
        }
    }
}

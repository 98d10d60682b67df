//! `lookout models measure`: the resident and working memory of each pipeline stage, measured in a fresh child
//! process per stage on a worst-case input and written into the bundle's manifest for the memory plan.

use std::process::Command;

use anyhow::{anyhow, Context as _};
use lookout_models::bundle::{Bundle, Footprint};
use lookout_models::llm::{GenerateOptions, LanguageModel};
use lookout_models::vision::image::RgbImage;
use lookout_models::whisper::{DecodeOptions, Window};

use super::Context;
use crate::memory;
use crate::turn::{self, VisionChoice};

/// Every stage the plan can ask for, with the role whose variants it comes in.
const STAGES: [(&str, &str); 5] = [
    ("vad", "vad"),
    ("speech", "asr-encoder"),
    ("vision", "object-detector"),
    ("vision-ocr", "object-detector"),
    ("decoder", "llm-decoder"),
];
/// Tokens the decoder's measurement leaves free at the end of its context for generation.
const DECODER_GENERATED: usize = 32;
/// Audio the VAD measurement hears: one full Whisper window.
const MEASURE_AUDIO_S: u32 = 30;
/// Encoder windows speech is measured at: a short query's fitted window, and the full one.
const SPEECH_WINDOWS_S: [u32; 2] = [12, 30];
/// Child processes each speech and vision job is measured in; the plan takes the worst. Their runs' working memory
/// moves from one process to the next (Whisper int8 on a 30 s window: 64 to 97 MiB) with where glibc's adaptive
/// mmap threshold leaves large freed buffers, so one draw may promise more room than a run has.
const DRAWS_OF_VARYING_STAGES: usize = 3;
/// Contexts the decoder is measured at, besides the bundle's own: the short one a small board configures (its KV
/// cache and attention grow with the tokens held).
const DECODER_SHORT_CONTEXTS: [usize; 1] = [256];

#[derive(Debug, clap::Args)]
pub struct MeasureArgs {
    /// Measure only when the manifest has no footprints yet (for model preparation reruns).
    #[arg(long)]
    if_missing: bool,
    /// Print the footprints as JSON.
    #[arg(long)]
    json: bool,
    /// Measure one stage in this process and print its footprint as JSON (used by the parent).
    #[arg(long, hide = true, requires = "variant")]
    stage: Option<String>,
    #[arg(long, hide = true)]
    variant: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    window_s: u32,
    /// The decoder's context for this measurement (0: the bundle's).
    #[arg(long, hide = true, default_value_t = 0)]
    tokens: usize,
}

pub fn run(ctx: &Context, args: MeasureArgs) -> anyhow::Result<()> {
    let mut bundle = ctx.open_bundle()?;
    if let (Some(stage), Some(variant)) = (&args.stage, &args.variant) {
        let job = Job { stage, variant, window_s: args.window_s, tokens: args.tokens };
        let footprint = measure_here(&bundle, job)?;
        println!("{}", serde_json::to_string(&footprint)?);
        return Ok(());
    }
    if args.if_missing && !bundle.manifest.footprints.is_empty() {
        println!("{}: footprints already measured", bundle.dir.display());
        return Ok(());
    }
    let mut jobs = vec![("runtime", "any".to_string(), 0, 0)];
    for (stage, role) in STAGES {
        for variant in bundle.variants(role) {
            let windows: &[u32] = if stage == "speech" { &SPEECH_WINDOWS_S } else { &[0] };
            jobs.extend(windows.iter().map(|w| (stage, variant.to_string(), *w, 0)));
            if stage == "decoder" {
                jobs.extend(DECODER_SHORT_CONTEXTS.iter().map(|t| (stage, variant.to_string(), 0, *t)));
            }
        }
    }
    let mut footprints = Vec::new();
    for (stage, variant, window_s, tokens) in jobs {
        let job = Job { stage, variant: &variant, window_s, tokens };
        let draws = if matches!(stage, "speech" | "vision" | "vision-ocr") { DRAWS_OF_VARYING_STAGES } else { 1 };
        let mut footprint = measure_in_child(ctx, &bundle, job)?;
        for _ in 1..draws {
            footprint = worst_of(footprint, measure_in_child(ctx, &bundle, job)?);
        }
        if !args.json {
            print_footprint(&footprint);
        }
        footprints.push(footprint);
    }
    bundle.write_footprints(footprints.clone())?;
    if args.json {
        super::print_json(&footprints)?;
    }
    Ok(())
}

fn print_footprint(footprint: &Footprint) {
    println!(
        "{:<11} {:<9} resident {:>6.1} MiB  loading peak {:>6.1} MiB  working {:>6.1} MiB  ({})",
        footprint.stage,
        footprint.variant,
        footprint.resident_mib,
        footprint.load_peak_mib,
        footprint.working_mib,
        footprint.input
    );
}

/// One measurement: a stage in a variant, at a Whisper window (speech) or a context (the decoder; 0: the bundle's).
#[derive(Debug, Clone, Copy)]
struct Job<'a> {
    stage: &'a str,
    variant: &'a str,
    window_s: u32,
    tokens: usize,
}

fn measure_in_child(ctx: &Context, bundle: &Bundle, job: Job) -> anyhow::Result<Footprint> {
    let Job { stage, variant, window_s, tokens } = job;
    let exe = std::env::current_exe().context("cannot find the lookout executable")?;
    let output = Command::new(exe)
        .arg("--models")
        .arg(&bundle.dir)
        .arg("--bundle")
        .arg(&ctx.bundle)
        .args(["models", "measure", "--stage", stage, "--variant", variant, "--window-s", &window_s.to_string()])
        .args(["--tokens", &tokens.to_string()])
        .output()
        .context("cannot start the measuring process")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(anyhow!("measuring {stage} {variant} failed: {}", stderr.trim()));
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("measuring {stage} {variant}: unreadable result"))
}

/// The larger of each figure of two measurements of one job.
fn worst_of(a: Footprint, b: Footprint) -> Footprint {
    Footprint {
        resident_mib: a.resident_mib.max(b.resident_mib),
        load_peak_mib: a.load_peak_mib.max(b.load_peak_mib),
        working_mib: a.working_mib.max(b.working_mib),
        ..a
    }
}

/// Loads one stage, runs it once on its worst-case input and reports the growth of this process's resident set.
fn measure_here(bundle: &Bundle, job: Job) -> anyhow::Result<Footprint> {
    let Job { stage, variant, window_s, tokens } = job;
    let rss = || memory::rss().ok_or_else(|| anyhow!("resident memory is not readable here (/proc/self/status)"));
    let before = rss()?.rss_mib;
    let (loaded, load_peak, input, tokens) = match stage {
        // The process itself: binary, libraries and the allocator before any model is loaded.
        "runtime" => {
            let (loaded, load_peak) = settle_after_load()?;
            (loaded, load_peak, "nothing loaded".to_string(), 0)
        }
        "vad" => {
            let vad = turn::load_vad(bundle)?;
            let (loaded, load_peak) = settle_after_load()?;
            vad.session()?.speech_regions(&test_audio(MEASURE_AUDIO_S))?;
            (loaded, load_peak, format!("{MEASURE_AUDIO_S} s of audio"), 0)
        }
        "speech" => {
            let whisper = turn::load_speech(bundle, Some(variant))?;
            let (loaded, load_peak) = settle_after_load()?;
            if !(5..=30).contains(&window_s) {
                return Err(anyhow!("speech is measured at a window of 5 to 30 s, not {window_s}"));
            }
            // The fitted window adds 1 s to the audio, so this fills exactly `window_s` seconds.
            let options = DecodeOptions { window: Window::FIT, ..DecodeOptions::default() };
            whisper.session()?.transcribe_window(&test_audio(window_s - 1), &options)?;
            (loaded, load_peak, format!("one {window_s} s window"), 0)
        }
        "vision" | "vision-ocr" => {
            let vision = turn::load_vision(bundle, &VisionChoice::new(Some(variant), stage == "vision-ocr"))?;
            let (loaded, load_peak) = settle_after_load()?;
            vision.session()?.describe(&test_image(1280, 720))?;
            (loaded, load_peak, "a 1280x720 frame".to_string(), 0)
        }
        "decoder" => {
            let lm = turn::load_decoder(bundle, Some(variant), (tokens > 0).then_some(tokens))?;
            let (loaded, load_peak) = settle_after_load()?;
            let prompt = filler_prompt(&lm, lm.context - DECODER_GENERATED);
            let options = GenerateOptions { max_tokens: DECODER_GENERATED, sampling: Default::default() };
            lm.session(None)?.generate(&prompt, &options, &mut |_| {})?;
            (
                loaded,
                load_peak,
                format!("a {}-token prompt and {DECODER_GENERATED} generated", prompt.len()),
                lm.context,
            )
        }
        other => return Err(anyhow!("unknown stage `{other}`")),
    };
    let run_peak = rss()?.peak_mib;
    memory::release_free_memory();
    // What a run leaves behind (weights packed on first use, caches) stays resident; the rest of its peak is
    // the run's working memory.
    let held = rss()?.rss_mib.max(loaded);
    Ok(Footprint {
        stage: stage.to_string(),
        variant: variant.to_string(),
        resident_mib: round1(if stage == "runtime" { before } else { held - before }),
        load_peak_mib: round1(if stage == "runtime" { 0.0 } else { load_peak - before }),
        working_mib: round1((run_peak - held).max(0.0)),
        input,
        tokens,
        window_s,
        arch: std::env::consts::ARCH.to_string(),
    })
}

/// Frees what loading left behind, then returns the resident size and the peak reached while loading, and
/// restarts the peak so the run is measured on its own.
fn settle_after_load() -> anyhow::Result<(f64, f64)> {
    let load_peak = memory::rss().map_or(0.0, |r| r.peak_mib);
    memory::release_free_memory();
    memory::reset_peak().context("cannot reset the peak resident size (/proc/self/clear_refs)")?;
    let loaded = memory::rss().ok_or_else(|| anyhow!("resident memory is not readable"))?.rss_mib;
    Ok((loaded, load_peak))
}

fn round1(mib: f64) -> f64 {
    (mib * 10.0).round() / 10.0
}

/// Deterministic broadband audio (a chirp under noise) at 16 kHz: it keeps every stage busy the way speech does.
pub(super) fn test_audio(seconds: u32) -> Vec<f32> {
    let mut state = 0x2545_f491_u32;
    (0..seconds * 16_000)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let t = i as f32 / 16_000.0;
            let noise = (state as f32 / u32::MAX as f32 - 0.5) * 0.05;
            0.2 * (2.0 * std::f32::consts::PI * (200.0 + 100.0 * t) * t).sin() + noise
        })
        .collect()
}

/// A frame with edges and blocks everywhere, so detectors and text finders produce candidates.
pub(super) fn test_image(width: u32, height: u32) -> RgbImage {
    let data = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            let block = ((x / 24) + (y / 16)) % 2 == 0;
            let value = if block { 230 } else { (x * 7 + y * 3) as u8 };
            [value, value.wrapping_add(40), value.wrapping_mul(3)]
        })
        .collect();
    RgbImage::from_raw(width, height, data).expect("the buffer has width * height * 3 bytes")
}

/// A prompt of exactly `tokens` ids made of ordinary text.
pub(super) fn filler_prompt(lm: &LanguageModel, tokens: usize) -> Vec<u32> {
    let sentence =
        lm.text.tokenizer.encode("The camera watches the garden gate while the kettle boils in the kitchen. ");
    sentence.iter().copied().cycle().take(tokens).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footprint(resident_mib: f64, load_peak_mib: f64, working_mib: f64) -> Footprint {
        Footprint {
            stage: "speech".into(),
            variant: "int8".into(),
            resident_mib,
            load_peak_mib,
            working_mib,
            input: "one 30 s window".into(),
            tokens: 0,
            window_s: 30,
            arch: "x86_64".into(),
        }
    }

    #[test]
    fn the_worst_of_draws_takes_each_figure_at_its_largest() {
        let worst = worst_of(footprint(96.5, 104.4, 64.2), footprint(96.4, 104.1, 96.8));
        assert_eq!((worst.resident_mib, worst.load_peak_mib, worst.working_mib), (96.5, 104.4, 96.8));
        assert_eq!((worst.stage.as_str(), worst.window_s), ("speech", 30));
    }
}

//! `lookout soak --config FILE`: the daemon's pipeline, in this process, fed thousands of camera frames and
//! hundreds of questions (spoken and typed, one at a time); prints resident memory after warm-up, half way and at
//! the end, and the measured peak beside the plan. Fails when memory grows after warm-up or the plan misses the
//! peak by more than the allowed share.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lookout_models::audio;
use serde::Serialize;

use super::{print_json, Context};
use crate::daemon::metrics::Metrics;
use crate::daemon::state::{Origin, Question, Shared};
use crate::daemon::{apply_compute, Checked, Pipeline, SourceOptions};
use crate::memory::{self, Rss};

/// Typed questions, asked in turn between the spoken ones.
const TEXT_QUESTIONS: [&str; 4] =
    ["What do you see?", "How many people are there?", "Is there a dog?", "Is there any text?"];

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// The daemon configuration to run (its camera must be a `dir:` source).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    #[arg(long, value_name = "NAME")]
    board: Option<String>,
    /// Camera frames to feed.
    #[arg(long, default_value_t = 10_000)]
    frames: u64,
    /// Questions to ask; every other one is spoken (--audio).
    #[arg(long, default_value_t = 200)]
    queries: u64,
    /// The spoken question (WAV or FLAC).
    #[arg(long)]
    audio: PathBuf,
    /// Frame rate of the camera during the soak.
    #[arg(long, default_value_t = 20)]
    fps: u32,
    /// Pause between an answer and the next question, in which the pipeline analyses frames and captions.
    #[arg(long, default_value_t = 2000)]
    gap_ms: u64,
    /// Most growth of resident memory allowed after warm-up, MiB.
    #[arg(long, default_value_t = 2.0)]
    max_growth_mib: f64,
    /// Most the plan may differ from the measured peak, as a share of the peak.
    #[arg(long, default_value_t = 0.15)]
    plan_tolerance: f64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Sample {
    at: &'static str,
    seconds: f64,
    frames_captured: u64,
    frames_processed: u64,
    answers: u64,
    rss_mib: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    board: String,
    samples: Vec<Sample>,
    growth_after_warm_up_mib: f64,
    peak_rss_mib: f64,
    plan_total_mib: f64,
    plan_error: f64,
    frames_dropped: u64,
    frame_deadline_misses: u64,
    captions: u64,
    captions_preempted: u64,
    pipeline_errors: u64,
    answer_ms_p50: f64,
    answer_ms_p95: f64,
    passed: bool,
}

pub fn run(ctx: &Context, args: SoakArgs) -> anyhow::Result<()> {
    let spoken = audio::load_mono_16k(&args.audio, audio::AudioLimit::RECORDING)
        .with_context(|| args.audio.display().to_string())?;
    let mut checked = Checked::load(ctx, &args.config, args.board.as_deref())?;
    // A soak loads the encoders with every frame: the photos it plays repeat, which the scene-change gate would skip.
    checked.config.scene_change.skip_unchanged = false;
    apply_compute(&checked.config);
    let shared = std::sync::Arc::new(Shared::new(
        crate::scheduler::buffers::FrameQueue::new(
            checked.config.camera.pool_frames as usize,
            checked.config.camera.width,
            checked.config.camera.height,
        ),
        &checked.config.board.name,
    ));
    shared.events.silence();
    let options = SourceOptions { pace_camera: true, camera_fps: Some(args.fps), microphone: false };
    let started = Instant::now();
    let pipeline = Pipeline::start(&checked, &shared, options)?;
    let m = &shared.metrics;
    let sample = |at: &'static str| {
        let rss = memory::rss().map_or(0.0, |r: Rss| r.rss_mib);
        let s = Sample {
            at,
            seconds: started.elapsed().as_secs_f64(),
            frames_captured: Metrics::get(&m.frames_captured),
            frames_processed: Metrics::get(&m.frames_processed),
            answers: Metrics::get(&m.answers),
            rss_mib: rss,
        };
        if !args.json {
            eprintln!(
                "{:>9}: {:7.1} s, {:6} frames fed, {:6} analysed, {:4} answers, RSS {:7.1} MiB",
                s.at, s.seconds, s.frames_captured, s.frames_processed, s.answers, s.rss_mib
            );
        }
        s
    };
    let mut samples = vec![sample("loaded")];
    let warm_up = (args.queries / 5).max(2);
    let mut answer_ms = Vec::new();
    let mut asked = 0u64;
    while asked < args.queries || Metrics::get(&m.frames_captured) < args.frames {
        if asked < args.queries {
            let question = match asked % 2 {
                0 => Question::Speech(spoken.clone()),
                _ => Question::Text(TEXT_QUESTIONS[(asked / 2) as usize % TEXT_QUESTIONS.len()].to_string()),
            };
            let begun = Instant::now();
            let reply = shared.ask(question, Origin::Http).map_err(anyhow::Error::from)?;
            // The pipeline always replies: with the answer, or an error once its answer deadline passed.
            match reply.blocking_recv() {
                Ok(Ok(_)) => answer_ms.push(begun.elapsed().as_secs_f64() * 1e3),
                // The first questions may come before the first frame is analysed.
                Ok(Err(crate::daemon::state::AskError::NoScene)) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Ok(Err(e)) => anyhow::bail!("question {asked}: {e}"),
                Err(_) => anyhow::bail!("question {asked}: the pipeline dropped the question"),
            }
            asked += 1;
            std::thread::sleep(Duration::from_millis(args.gap_ms));
            if asked == warm_up {
                samples.push(sample("warmed up"));
            }
            if asked == args.queries / 2 {
                samples.push(sample("half way"));
            }
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    samples.push(sample("end"));
    let peak = memory::rss().map_or(0.0, |r| r.peak_mib);
    pipeline.stop(&shared, Duration::from_secs(60));

    answer_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| answer_ms.get(((answer_ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    let warmed = samples.iter().find(|s| s.at == "warmed up").map_or(samples[0].rss_mib, |s| s.rss_mib);
    let growth = samples.last().map_or(0.0, |s| s.rss_mib) - warmed;
    let plan_error = (checked.plan.total_mib - peak) / peak.max(1.0);
    let report = Report {
        board: checked.config.board.name.clone(),
        growth_after_warm_up_mib: growth,
        peak_rss_mib: peak,
        plan_total_mib: checked.plan.total_mib,
        plan_error,
        frames_dropped: Metrics::get(&m.frames_dropped),
        frame_deadline_misses: Metrics::get(&m.frame_deadline_misses),
        captions: Metrics::get(&m.captions),
        captions_preempted: Metrics::get(&m.captions_preempted),
        pipeline_errors: m.pipeline_errors.load(Relaxed),
        answer_ms_p50: pct(0.5),
        answer_ms_p95: pct(0.95),
        passed: growth <= args.max_growth_mib && plan_error.abs() <= args.plan_tolerance,
        samples,
    };
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "RSS growth after warm-up: {:+.1} MiB (limit {:.1}); peak RSS {:.1} MiB, plan {:.1} MiB ({:+.1}% of the peak, limit ±{:.0}%)",
            report.growth_after_warm_up_mib,
            args.max_growth_mib,
            report.peak_rss_mib,
            report.plan_total_mib,
            report.plan_error * 100.0,
            args.plan_tolerance * 100.0
        );
        println!(
            "frames dropped {}, late {}; captions {} ({} preempted by questions); answers p50 {:.0} ms, p95 {:.0} ms; errors {}",
            report.frames_dropped,
            report.frame_deadline_misses,
            report.captions,
            report.captions_preempted,
            report.answer_ms_p50,
            report.answer_ms_p95,
            report.pipeline_errors
        );
    }
    anyhow::ensure!(report.passed, "the soak failed its memory limits");
    Ok(())
}

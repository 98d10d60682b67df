//! `lookout bench --suite speech`: latency, real-time factor and peak memory of each Whisper variant and encoder
//! window on a short query and a 30 s clip, beside faster-whisper on the same weights in the same run.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use lookout_models::audio;
use lookout_models::speech::Transcriber;
use lookout_models::whisper::DecodeOptions;
use serde::{Deserialize, Serialize};

use super::{file_name, heading, median, peer, peer_python, worker, write_report, BenchArgs};
use crate::cli::transcribe::WindowArg;
use crate::cli::{print_json, Context};
use crate::memory;
use crate::turn;

const DEFAULT_REPEATS: usize = 5;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Medians {
    mel: f64,
    encode: f64,
    decode: f64,
    pub total: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct InputResult {
    pub file: String,
    duration_s: f64,
    tokens: usize,
    pub text: String,
    pub median_ms: Medians,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EngineRun {
    engine: String,
    variant: String,
    window: String,
    pub load_ms: f64,
    /// From the process's start to the model loaded.
    pub cold_start_ms: f64,
    pub peak_rss_mib: f64,
    weight_mib: Option<f64>,
    pub results: Vec<InputResult>,
}

pub(super) fn run(ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    let repeats = args.repeats.unwrap_or(DEFAULT_REPEATS);
    let testdata = PathBuf::from(".cache/testdata/speech");
    let inputs = [
        args.query.clone().unwrap_or_else(|| testdata.join("kitchen_light_weather.wav")),
        args.clip.clone().unwrap_or_else(|| testdata.join("clip_30s.wav")),
    ];
    for input in &inputs {
        if !input.is_file() {
            bail!("bench input {} not found (run models/prepare/prepare.sh, or pass --query/--clip)", input.display());
        }
    }
    if let Some(spec) = &args.worker {
        let (variant, window) = spec.split_once(':').context("--worker takes VARIANT:WINDOW")?;
        return print_json(&measure(ctx, variant, window, &inputs, repeats)?);
    }

    let bundle = ctx.open_bundle()?;
    let variants = if args.variants.is_empty() {
        bundle.variants("asr-encoder").into_iter().map(str::to_string).collect()
    } else {
        args.variants.clone()
    };
    let mut runs: Vec<EngineRun> = Vec::new();
    for variant in &variants {
        for window in ["full", "fit"] {
            eprintln!("bench: lookout {variant} {window} window ...");
            let worker_args: Vec<OsString> = vec![
                "--query".into(),
                inputs[0].clone().into(),
                "--clip".into(),
                inputs[1].clone().into(),
                "--worker".into(),
                format!("{variant}:{window}").into(),
            ];
            runs.push(worker(ctx, "speech", repeats, &worker_args).with_context(|| format!("{variant}/{window}"))?);
        }
    }
    if args.no_peers {
        eprintln!("bench: peers skipped (--no-peers)");
    } else if let Some(python) = peer_python(&[".cache/venv-peers/bin/python"]) {
        for variant in &variants {
            let compute_type = if variant == "f32" { "float32" } else { variant.as_str() };
            eprintln!("bench: faster-whisper {compute_type} ...");
            match faster_whisper(&python, compute_type, &inputs, repeats) {
                Ok(run) => runs.push(run),
                Err(e) => eprintln!("bench: faster-whisper {compute_type} failed: {e:#}"),
            }
        }
    } else {
        eprintln!("bench: faster-whisper not installed (runtime/bench/setup-peers.sh); reporting lookout alone");
    }
    write_report(&args.out, &report_markdown(&runs, repeats), &runs)
}

/// The encoder's and decoder's file sizes for one Whisper variant.
pub(super) fn whisper_weight_bytes(bundle: &lookout_models::bundle::Bundle, variant: &str) -> u64 {
    ["asr-encoder", "asr-decoder"]
        .iter()
        .filter_map(|role| bundle.component(role, Some(variant)).ok())
        .map(|c| c.bytes)
        .sum()
}

/// One variant and window, measured in this process.
fn measure(
    ctx: &Context,
    variant: &str,
    window: &str,
    inputs: &[PathBuf],
    repeats: usize,
) -> anyhow::Result<EngineRun> {
    let window_kind = WindowArg::named(window)?;
    lookout_models::engine::set_threads(1);
    let bundle = ctx.open_bundle()?;
    let started = Instant::now();
    let whisper = turn::load_speech(&bundle, Some(variant))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let cold_start_ms = crate::started::ms_since_process_start();
    let weight_bytes = whisper_weight_bytes(&bundle, variant);
    let mut transcriber = Transcriber::new(&whisper, None)?;
    let options = DecodeOptions { window: window_kind, ..DecodeOptions::default() };
    let mut results = Vec::new();
    for input in inputs {
        let samples =
            audio::load_mono_16k(input, audio::AudioLimit::RECORDING).with_context(|| input.display().to_string())?;
        let mut runs: Vec<(f64, f64, f64, f64)> = Vec::new();
        let mut last = None;
        for _ in 0..repeats {
            let started = Instant::now();
            let t = transcriber.transcribe(&samples, &options)?;
            let total = started.elapsed().as_secs_f64() * 1e3;
            runs.push((t.timings_ms.mel, t.timings_ms.encode, t.timings_ms.decode, total));
            last = Some(t);
        }
        let t = last.context("no repeats")?;
        results.push(InputResult {
            file: input.display().to_string(),
            duration_s: samples.len() as f64 / 16_000.0,
            tokens: t.tokens,
            text: t.text,
            median_ms: Medians {
                mel: median(runs.iter().map(|r| r.0)),
                encode: median(runs.iter().map(|r| r.1)),
                decode: median(runs.iter().map(|r| r.2)),
                total: median(runs.iter().map(|r| r.3)),
            },
        });
    }
    Ok(EngineRun {
        engine: "lookout".into(),
        variant: variant.into(),
        window: window.into(),
        load_ms,
        cold_start_ms,
        peak_rss_mib: memory::rss().map_or(0.0, |r| r.peak_mib),
        weight_mib: Some(weight_bytes as f64 / (1024.0 * 1024.0)),
        results,
    })
}

pub(super) fn faster_whisper(
    python: &std::path::Path,
    compute_type: &str,
    inputs: &[PathBuf],
    repeats: usize,
) -> anyhow::Result<EngineRun> {
    let mut peer_args: Vec<OsString> =
        ["--compute-type", compute_type, "--threads", "1", "--repeats", &repeats.to_string()]
            .into_iter()
            .chain(["--sources", ".cache/sources", "--work", ".cache/peers"])
            .map(OsString::from)
            .collect();
    peer_args.extend(inputs.iter().map(|p| p.clone().into_os_string()));
    let v = peer(python, "runtime/bench/faster_whisper_peer.py", &peer_args)?;
    Ok(EngineRun {
        engine: "faster-whisper".into(),
        variant: compute_type.into(),
        window: "full".into(),
        load_ms: v["load_ms"].as_f64().unwrap_or(0.0),
        cold_start_ms: v["cold_start_ms"].as_f64().unwrap_or(0.0),
        peak_rss_mib: v["peak_rss_mib"].as_f64().unwrap_or(0.0),
        weight_mib: None,
        results: serde_json::from_value(v["results"].clone())?,
    })
}

fn report_markdown(runs: &[EngineRun], repeats: usize) -> String {
    let mut md = heading("speech", repeats, "1 thread, greedy, no VAD");
    md.push_str("| engine | variant | window | input | audio s | mel ms | encode ms | ms/token | total ms | RTF | vs faster-whisper | peak RSS MiB | RSS / weights | text |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for run in runs {
        for (i, r) in run.results.iter().enumerate() {
            let m = &r.median_ms;
            let peer_total = runs
                .iter()
                .find(|p| p.engine == "faster-whisper" && same_precision(&p.variant, &run.variant))
                .and_then(|p| p.results.get(i))
                .map(|p| p.median_ms.total);
            let ratio = match (run.engine.as_str(), peer_total) {
                ("lookout", Some(p)) if p > 0.0 => format!("{:.2}×", m.total / p),
                _ => "—".into(),
            };
            let rss_ratio = run.weight_mib.map_or("—".into(), |w| format!("{:.2}", run.peak_rss_mib / w));
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {:.3} | {} | {:.0} | {} | {} |\n",
                run.engine,
                run.variant,
                run.window,
                file_name(&r.file),
                r.duration_s,
                m.mel,
                m.encode,
                m.decode / (r.tokens as f64 + 1.0),
                m.total,
                m.total / 1e3 / r.duration_s.max(1e-9),
                ratio,
                run.peak_rss_mib,
                rss_ratio,
                r.text.chars().take(48).collect::<String>(),
            ));
        }
    }
    md.push_str("\n`vs faster-whisper`: lookout's total time ÷ faster-whisper's on the same input and precision (below 1 is faster). ms/token: decode time ÷ (tokens + 1).\n");
    md
}

fn same_precision(peer: &str, ours: &str) -> bool {
    peer == ours || (peer == "float32" && ours == "f32")
}

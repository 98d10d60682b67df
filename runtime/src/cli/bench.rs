//! `lookout bench --suite speech`: latency, real-time factor and peak memory of each Whisper variant and encoder
//! window on a short query and a 30 s clip, beside faster-whisper on the same weights in the same run.
//!
//! Each variant runs in a child process of its own so that its peak RSS is its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Args;
use lookout_models::audio;
use lookout_models::speech::Transcriber;
use lookout_models::whisper::{DecodeOptions, Whisper, Window};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{print_json, Context};
use crate::memory;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Suite to run (`speech`).
    #[arg(long, default_value = "speech")]
    suite: String,
    /// Variants to compare (default: every variant in the bundle).
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Timed runs per input; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// A short voice query (default: the prepared test data's 3.8 s query).
    #[arg(long)]
    query: Option<PathBuf>,
    /// A 30 s clip (default: the prepared test data's 30 s clip).
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Where report.json and report.md go.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Skip the peers even when they are installed (runtime/bench/setup-peers.sh installs them).
    #[arg(long)]
    no_peers: bool,
    /// Runs one variant and window in this process and prints its measurements as JSON.
    #[arg(long, hide = true, value_name = "VARIANT:WINDOW")]
    worker: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Medians {
    mel: f64,
    encode: f64,
    decode: f64,
    total: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct InputResult {
    file: String,
    duration_s: f64,
    tokens: usize,
    text: String,
    median_ms: Medians,
}

#[derive(Debug, Serialize, Deserialize)]
struct EngineRun {
    engine: String,
    variant: String,
    window: String,
    load_ms: f64,
    peak_rss_mib: f64,
    weight_mib: Option<f64>,
    results: Vec<InputResult>,
}

pub fn run(ctx: &Context, args: BenchArgs) -> anyhow::Result<()> {
    if args.suite != "speech" {
        bail!("unknown suite `{}` (available: speech)", args.suite);
    }
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
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
        return print_json(&measure(ctx, variant, window, &inputs, args.repeats)?);
    }

    let bundle = ctx.open_bundle()?;
    let variants = if args.variants.is_empty() {
        bundle.variants("asr-encoder").into_iter().map(str::to_string).collect()
    } else {
        args.variants.clone()
    };
    let mut runs = Vec::new();
    for variant in &variants {
        for window in ["full", "fit"] {
            eprintln!("bench: lookout {variant} {window} window ...");
            runs.push(child(ctx, variant, window, &inputs, args.repeats)?);
        }
    }
    let peer_python = peer_python();
    if args.no_peers {
        eprintln!("bench: peers skipped (--no-peers)");
    } else if let Some(python) = &peer_python {
        for variant in &variants {
            let compute_type = if variant == "f32" { "float32" } else { variant.as_str() };
            eprintln!("bench: faster-whisper {compute_type} ...");
            match peer(python, compute_type, &inputs, args.repeats) {
                Ok(run) => runs.push(run),
                Err(e) => eprintln!("bench: faster-whisper {compute_type} failed: {e:#}"),
            }
        }
    } else {
        eprintln!("bench: faster-whisper not installed (runtime/bench/setup-peers.sh); reporting lookout alone");
    }

    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    let report = report_markdown(&runs, args.repeats);
    print!("{report}");
    std::fs::write(args.out.join("report.md"), &report)?;
    std::fs::write(args.out.join("report.json"), serde_json::to_string_pretty(&runs)?)?;
    eprintln!("bench: wrote {}/report.md and report.json", args.out.display());
    Ok(())
}

/// One variant and window, measured in this process.
fn measure(ctx: &Context, variant: &str, window: &str, inputs: &[PathBuf], repeats: usize) -> anyhow::Result<EngineRun> {
    let window_kind = match window {
        "full" => Window::Full,
        "fit" => Window::FIT,
        other => bail!("unknown window `{other}`"),
    };
    let bundle = ctx.open_bundle()?;
    let started = Instant::now();
    let whisper = Whisper::load(&bundle, Some(variant))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let weight_bytes: u64 = ["asr-encoder", "asr-decoder"]
        .iter()
        .filter_map(|role| bundle.component(role, Some(variant)).ok())
        .map(|c| c.bytes)
        .sum();
    let mut transcriber = Transcriber::new(&whisper, None)?;
    let options = DecodeOptions { window: window_kind, ..DecodeOptions::default() };
    let mut results = Vec::new();
    for input in inputs {
        let samples = audio::load_mono_16k(input).with_context(|| input.display().to_string())?;
        let mut runs: Vec<(f64, f64, f64, f64)> = Vec::new();
        let mut last = None;
        for _ in 0..repeats {
            let started = Instant::now();
            let t = transcriber.transcribe(&samples, &options)?;
            let total = started.elapsed().as_secs_f64() * 1e3;
            runs.push((t.timings_ms.mel, t.timings_ms.encode, t.timings_ms.decode, total));
            last = Some(t);
        }
        let t = last.expect("at least one repeat");
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
        peak_rss_mib: memory::rss().map_or(0.0, |r| r.peak_mib),
        weight_mib: Some(weight_bytes as f64 / (1024.0 * 1024.0)),
        results,
    })
}

fn child(ctx: &Context, variant: &str, window: &str, inputs: &[PathBuf], repeats: usize) -> anyhow::Result<EngineRun> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--models")
        .arg(ctx.models_dir())
        .args(["--bundle", &ctx.bundle, "bench", "--repeats", &repeats.to_string()])
        .arg("--query")
        .arg(&inputs[0])
        .arg("--clip")
        .arg(&inputs[1])
        .args(["--worker", &format!("{variant}:{window}")])
        .output()?;
    if !out.status.success() {
        bail!("{variant}/{window}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The Python that has the peers installed: `$LOOKOUT_PEER_PYTHON`, else `.cache/venv-peers`.
fn peer_python() -> Option<PathBuf> {
    std::env::var_os("LOOKOUT_PEER_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(".cache/venv-peers/bin/python")))
        .filter(|p| p.exists())
}

fn peer(python: &Path, compute_type: &str, inputs: &[PathBuf], repeats: usize) -> anyhow::Result<EngineRun> {
    let out = Command::new(python)
        .arg("runtime/bench/faster_whisper_peer.py")
        .args(["--compute-type", compute_type, "--threads", "1", "--repeats", &repeats.to_string()])
        .args(["--sources", ".cache/sources", "--work", ".cache/peers"])
        .args(inputs)
        .output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(EngineRun {
        engine: "faster-whisper".into(),
        variant: compute_type.into(),
        window: "full".into(),
        load_ms: v["load_ms"].as_f64().unwrap_or(0.0),
        peak_rss_mib: v["peak_rss_mib"].as_f64().unwrap_or(0.0),
        weight_mib: None,
        results: serde_json::from_value(v["results"].clone())?,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn report_markdown(runs: &[EngineRun], repeats: usize) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# lookout bench --suite speech\n\n{} ({} cores), medians of {repeats} runs, 1 thread, greedy, no VAD\n\n",
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
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
            let name = Path::new(&r.file).file_name().map_or(r.file.clone(), |n| n.to_string_lossy().into_owned());
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {:.3} | {} | {:.0} | {} | {} |\n",
                run.engine,
                run.variant,
                run.window,
                name,
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

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

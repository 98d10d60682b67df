//! `lookout bench --suite llm`: prefill and decode rates, time to first token and peak memory of each decoder
//! variant at each thread count, beside llama.cpp on the same GGUF, prompt ids and thread count in the same run.

use std::ffi::OsString;
use std::time::Instant;

use anyhow::{bail, Context as _};
use lookout_models::llm::chat::{ChatText, Message};
use lookout_models::llm::{GenerateOptions, Sampling};
use serde::{Deserialize, Serialize};

use super::{heading, median, peer, peer_python, worker, write_report, BenchArgs};
use crate::cli::{print_json, Context};
use crate::memory;
use crate::turn;

const DEFAULT_REPEATS: usize = 5;
const MAX_TOKENS: usize = 64;
/// A question a small model answers at length, so that decoding runs its full token budget.
const QUESTION: &str = "The photo shows 8 people and 6 kites on a beach. Write a short story about this photo.";

#[derive(Debug, Serialize, Deserialize)]
struct EngineRun {
    engine: String,
    variant: String,
    threads: usize,
    load_ms: f64,
    prompt_tokens: usize,
    tokens: Vec<u32>,
    prefill_ms: f64,
    decode_ms: f64,
    first_token_ms: f64,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    peak_rss_mib: f64,
    weight_mib: Option<f64>,
}

pub(super) fn run(ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    let repeats = args.repeats.unwrap_or(DEFAULT_REPEATS);
    if let Some(spec) = &args.worker {
        let (variant, threads) = spec.split_once(':').context("--worker takes VARIANT:THREADS")?;
        return print_json(&measure(ctx, variant, threads.parse().context("thread count")?, repeats)?);
    }
    let bundle = ctx.open_bundle()?;
    let variants = if args.variants.is_empty() {
        bundle.variants("llm-decoder").into_iter().map(str::to_string).collect()
    } else {
        args.variants.clone()
    };
    let mut runs: Vec<EngineRun> = Vec::new();
    for threads in &args.threads {
        for variant in &variants {
            eprintln!("bench: lookout {variant}, {threads} thread(s) ...");
            let spec: Vec<OsString> = vec!["--worker".into(), format!("{variant}:{threads}").into()];
            runs.push(worker(ctx, "llm", repeats, &spec).with_context(|| format!("{variant}/{threads}"))?);
        }
    }
    let python = peer_python(&[".cache/venv-peers/bin/python"]);
    match (&python, args.no_peers) {
        (_, true) => eprintln!("bench: peers skipped (--no-peers)"),
        (None, _) => {
            eprintln!("bench: llama.cpp not installed (runtime/bench/setup-peers.sh); reporting lookout alone")
        }
        (Some(python), false) => {
            let gguf = bundle.checked_path(bundle.component("llm-gguf", None)?)?;
            let prompt = runs.first().map(|r| r.prompt_tokens).unwrap_or(0);
            let ids = prompt_ids(ctx)?;
            anyhow::ensure!(ids.len() == prompt, "prompt changed between runs");
            for threads in &args.threads {
                eprintln!("bench: llama.cpp, {threads} thread(s) ...");
                let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                let peer_args: Vec<OsString> = [
                    "--gguf".into(),
                    gguf.clone().into_os_string(),
                    "--prompt-ids".into(),
                    list.into(),
                    "--max-tokens".into(),
                    MAX_TOKENS.to_string().into(),
                    "--threads".into(),
                    threads.to_string().into(),
                    "--repeats".into(),
                    repeats.to_string().into(),
                ]
                .into();
                match peer(python, "runtime/bench/llama_cpp_peer.py", &peer_args) {
                    Ok(v) => {
                        let mut run: EngineRun = serde_json::from_value(serde_json::json!({
                            "variant": "Q4_1 GGUF", "threads": threads, "weight_mib": null, "engine": v["engine"],
                            "load_ms": v["load_ms"], "prompt_tokens": v["prompt_tokens"], "tokens": v["tokens"],
                            "prefill_ms": v["prefill_ms"], "decode_ms": v["decode_ms"], "first_token_ms": v["first_token_ms"],
                            "prefill_tokens_per_s": v["prefill_tokens_per_s"], "decode_tokens_per_s": v["decode_tokens_per_s"],
                            "peak_rss_mib": v["peak_rss_mib"],
                        }))?;
                        run.weight_mib = Some(gguf.metadata()?.len() as f64 / (1024.0 * 1024.0));
                        runs.push(run);
                    }
                    Err(e) => eprintln!("bench: llama.cpp failed: {e:#}"),
                }
            }
        }
    }
    write_report(&args.out, &report_markdown(&runs, repeats), &runs)
}

/// The benchmark prompt, chat-formatted and tokenized by the bundle's tokenizer.
fn prompt_ids(ctx: &Context) -> anyhow::Result<Vec<u32>> {
    let bundle = ctx.open_bundle()?;
    let gguf = bundle.checked_path(bundle.component("llm-gguf", None)?)?;
    let text = ChatText::from_gguf(&lookout_models::llm::gguf::Gguf::open(&gguf)?)?;
    Ok(text.prompt_ids(&[Message::new("user", QUESTION)])?)
}

/// One variant at one thread count, measured in this process.
fn measure(ctx: &Context, variant: &str, threads: usize, repeats: usize) -> anyhow::Result<EngineRun> {
    let threads = lookout_models::engine::set_threads(threads);
    let bundle = ctx.open_bundle()?;
    let started = Instant::now();
    let lm = turn::load_decoder(&bundle, Some(variant), None)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    // The file the decoder loads: its compiled form when the bundle has one.
    let component = bundle.component("llm-decoder", Some(variant))?;
    let weight_bytes = component.compiled.as_ref().map_or(component.bytes, |compiled| compiled.bytes);
    let prompt = lm.text.prompt_ids(&[Message::new("user", QUESTION)])?;
    let options = GenerateOptions { max_tokens: MAX_TOKENS, sampling: Sampling::default() };
    let mut session = lm.session(None)?;
    let mut runs = Vec::new();
    for _ in 0..repeats {
        runs.push(session.generate(&prompt, &options, &mut |_| {})?);
    }
    let last = runs.last().context("no repeats")?;
    if last.tokens.len() < 8 {
        bail!("the benchmark prompt produced only {} tokens", last.tokens.len());
    }
    Ok(EngineRun {
        engine: "lookout".into(),
        variant: variant.into(),
        threads,
        load_ms,
        prompt_tokens: prompt.len(),
        tokens: last.tokens.clone(),
        prefill_ms: median(runs.iter().map(|g| g.prefill_ms)),
        decode_ms: median(runs.iter().map(|g| g.decode_ms)),
        first_token_ms: median(runs.iter().map(|g| g.first_token_ms)),
        prefill_tokens_per_s: median(runs.iter().map(|g| g.prefill_tokens_per_s)),
        decode_tokens_per_s: median(runs.iter().map(|g| g.decode_tokens_per_s)),
        peak_rss_mib: memory::rss().map_or(0.0, |r| r.peak_mib),
        weight_mib: Some(weight_bytes as f64 / (1024.0 * 1024.0)),
    })
}

fn report_markdown(runs: &[EngineRun], repeats: usize) -> String {
    let prompt = runs.first().map_or(0, |r| r.prompt_tokens);
    let mut md = heading("llm", repeats, &format!("greedy, {prompt}-token chat prompt, up to {MAX_TOKENS} new tokens"));
    md.push_str("| engine | variant | threads | load ms | prefill tok/s | decode tok/s | first token ms | peak RSS MiB | weights MiB | decode vs llama.cpp | prefill vs llama.cpp | same tokens as llama.cpp |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for run in runs {
        let peer = runs.iter().find(|p| p.engine == "llama.cpp" && p.threads == run.threads);
        let (decode_ratio, prefill_ratio, same) = match (run.engine.as_str(), peer) {
            ("lookout", Some(p)) => (
                format!("{:.2}×", run.decode_tokens_per_s / p.decode_tokens_per_s.max(1e-9)),
                format!("{:.2}×", run.prefill_tokens_per_s / p.prefill_tokens_per_s.max(1e-9)),
                agreement(&run.tokens, &p.tokens),
            ),
            _ => ("—".into(), "—".into(), "—".into()),
        };
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            run.engine,
            run.variant,
            run.threads,
            run.load_ms,
            run.prefill_tokens_per_s,
            run.decode_tokens_per_s,
            run.first_token_ms,
            run.peak_rss_mib,
            run.weight_mib.map_or("—".into(), |w| format!("{w:.0}")),
            decode_ratio,
            prefill_ratio,
            same,
        ));
    }
    md.push_str("\nRatios are lookout's rate ÷ llama.cpp's at the same thread count (above 1 is faster). Both engines get the same prompt ids and decode greedily.\n");
    md
}

/// "all 64", or where the greedy tokens first differ.
fn agreement(ours: &[u32], theirs: &[u32]) -> String {
    match ours.iter().zip(theirs).position(|(a, b)| a != b) {
        None if ours.len() == theirs.len() => format!("all {}", ours.len()),
        None => format!("first {}", ours.len().min(theirs.len())),
        Some(i) => format!("first {i}"),
    }
}

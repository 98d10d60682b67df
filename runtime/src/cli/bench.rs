//! `lookout bench`: timing and peak memory of the speech, vision and language paths, each beside a peer engine on
//! the same model files in the same run, and the cost of camera frame conversion beside OpenCV, as a markdown table on stdout and report.md/report.json in `--out`.
//!
//! Each configuration runs in a child process of its own so that its peak RSS is its own; this module holds
//! what the suites share (arguments, child processes, peers, medians, the report files).

mod e2e_suite;
mod frames;
mod gate;
mod http;
mod llama_cpp;
mod llm;
mod load;
mod npy;
mod sequence_counts;
mod speech;
mod speech_suite;
mod suite;
mod vision;
mod vision_suite;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::Context;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Suite to run: `speech`, `vision`, `llm` or `frames` (timing beside peers), `gate` (the scene-change gate on
    /// built and real camera sequences), `http` (the daemon's HTTP server under load), or an evaluation suite file:
    /// a path, or the name of one in runtime/bench/suites (`speech.toml`, `vision.toml`, `e2e.toml`,
    /// `questions.toml`, or the name without `.toml`).
    #[arg(long, default_value = "speech")]
    suite: String,
    /// Speech and llm: variants to compare (default: every variant in the bundle); speech suite files take
    /// VARIANT:WINDOW, such as `int8:fit,f32:full` (default: every variant with both windows).
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Timed runs per input; medians are reported (default: 5 for speech, 10 for vision, 50 for frames).
    #[arg(long)]
    repeats: Option<usize>,
    /// Speech: a short voice query (default: the prepared test data's 3.8 s query).
    #[arg(long)]
    query: Option<PathBuf>,
    /// Speech: a 30 s clip (default: the prepared test data's 30 s clip).
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Vision: JPEG or PNG files (default: two prepared photos and a rendered sign); frames: the photo the frames
    /// are made from (default: kite.jpg).
    #[arg(long, value_delimiter = ',')]
    images: Vec<PathBuf>,
    /// Vision, vision and e2e suite files: the bundle's object detector variant (nanodet, centernet; default: the
    /// bundle's first).
    #[arg(long)]
    detector: Option<String>,
    /// Vision and e2e suite files: seconds reading an image's text may take before the remaining lines are left
    /// unread (default 4; longer on a slow board or under an emulator).
    #[arg(long, value_name = "SECONDS", value_parser = super::parse_text_budget)]
    text_budget: Option<std::time::Duration>,
    /// Vision and e2e suite files: look at large images whole only, not in tiles too.
    #[arg(long)]
    no_tiles: bool,
    /// Vision and llm: thread counts to run, each in its own process.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    threads: Vec<usize>,
    /// Where report.json and report.md go (vision also writes its input tensors under tensors/).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Skip the peers even when they are installed (runtime/bench/setup-peers.sh installs them).
    #[arg(long)]
    no_peers: bool,
    /// Runs one configuration in this process and prints its measurements as JSON.
    #[arg(long, hide = true, value_name = "SPEC")]
    worker: Option<String>,
    /// Http and load: concurrent clients (http: 32 per endpoint; load: 64 in all).
    #[arg(long)]
    clients: Option<usize>,
    /// Http and load: seconds of load (http: 30 per endpoint; load: 120).
    #[arg(long)]
    seconds: Option<u64>,
    /// Http: another `lookout` binary whose server is measured the same way (an earlier build, say).
    #[arg(long)]
    peer_binary: Option<PathBuf>,
    /// Vision worker: write the preprocessed input tensors here as .npy.
    #[arg(long, hide = true)]
    tensors: Option<PathBuf>,
}

pub fn run(ctx: &Context, args: BenchArgs) -> anyhow::Result<()> {
    if args.repeats == Some(0) {
        bail!("--repeats must be at least 1");
    }
    match args.suite.as_str() {
        "speech" => speech::run(ctx, &args),
        "vision" => vision::run(ctx, &args),
        "llm" => llm::run(ctx, &args),
        "frames" => frames::run(ctx, &args),
        "gate" => gate::run(ctx, &args),
        "http" => http::run(ctx, &args),
        "load" => load::run(ctx, &args),
        other => match suite_file(other) {
            Some(file) => run_suite_file(ctx, &args, &file),
            None => bail!("unknown suite `{other}` (available: speech, vision, llm, frames, gate, http, load, or a suite file: e2e, speech.toml, vision.toml, e2e.toml or a path)"),
        },
    }
}

/// Runs a suite file (`kind` speech, vision or e2e) for every requested variant.
fn run_suite_file(ctx: &Context, args: &BenchArgs, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("suite {}", path.display()))?;
    let suite: suite::SuiteFile = toml::from_str(&text).with_context(|| format!("suite {}", path.display()))?;
    if !suite.sequences.is_empty() && suite.kind != "vision" {
        bail!("suite {}: only vision suites take `[[sequence]]` entries", path.display());
    }
    match suite.kind.as_str() {
        "speech" => speech_suite::run(ctx, args, path, &suite),
        "vision" => vision_suite::run(ctx, args, path, &suite),
        "e2e" => e2e_suite::run(ctx, args, path, &suite.description, &suite.items),
        other => bail!("suite {}: kind `{other}` is not supported (speech, vision or e2e)", path.display()),
    }
}

/// Where the evaluation suites shipped with Lookout are, relative to the repository.
const SUITES_DIR: &str = "runtime/bench/suites";

/// The evaluation suite file a `--suite` other than a timing suite names: a path to a .toml file, else a file of
/// that name (`.toml` added to a bare name) in `SUITES_DIR`.
fn suite_file(suite: &str) -> Option<PathBuf> {
    let path = Path::new(suite);
    if suite.ends_with(".toml") && (path.exists() || path.components().count() > 1) {
        return Some(path.to_path_buf());
    }
    let name = if suite.ends_with(".toml") { suite.to_string() } else { format!("{suite}.toml") };
    let shipped = Path::new(SUITES_DIR).join(name);
    (suite.ends_with(".toml") || shipped.is_file()).then_some(shipped)
}

/// Runs `lookout bench --suite SUITE --repeats N ARGS...` against the same bundle and parses the JSON it prints.
fn worker<T: DeserializeOwned>(ctx: &Context, suite: &str, repeats: usize, args: &[OsString]) -> anyhow::Result<T> {
    let out = bench_command(ctx, suite)?.args(["--repeats", &repeats.to_string()]).args(args).output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("worker output")
}

/// The JPEG and PNG files of a folder of camera frames, in file-name order.
fn frame_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "png"))
        .collect();
    files.sort();
    Ok(files)
}

/// The variant to ask the bundle for a vision role: the chosen detector's for the detector, the first for the rest.
fn variant_of<'a>(role: &str, detector: Option<&'a str>) -> Option<&'a str> {
    detector.filter(|_| role == "object-detector")
}

/// `lookout bench --suite SUITE` on this process's models and bundle, to run in a child process.
fn bench_command(ctx: &Context, suite: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--models").arg(ctx.models_dir()).args(["--bundle", &ctx.bundle, "bench", "--suite", suite]);
    Ok(command)
}

/// The Python that has the peers installed: `$LOOKOUT_PEER_PYTHON`, else the first of `candidates` that exists.
fn peer_python(candidates: &[&str]) -> Option<PathBuf> {
    match std::env::var_os("LOOKOUT_PEER_PYTHON") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.exists()),
        None => candidates.iter().map(PathBuf::from).find(|p| p.exists()),
    }
}

/// Where peer scripts import the reference pipelines from (`import vision`): the model preparation's modules.
const PEER_IMPORTS: &str = "models/prepare";

/// Runs a peer script under `python`, with the preparation's modules importable, and parses the one JSON object it
/// prints.
fn peer(python: &Path, script: &str, args: &[OsString]) -> anyhow::Result<Value> {
    let mut imports = OsString::from(PEER_IMPORTS);
    if let Some(more) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        imports.push(":");
        imports.push(more);
    }
    let out = Command::new(python).arg(script).args(args).env("PYTHONPATH", imports).output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("peer output")
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

/// The value below which `q` (0 to 1) of the values lie, nearest rank; 0 for none.
fn percentile(values: impl Iterator<Item = f64>, q: f64) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n => v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

/// The report's title and machine line.
fn heading(suite: &str, repeats: usize, conditions: &str) -> String {
    format!(
        "# lookout bench --suite {suite}\n\n{} ({} cores), medians of {repeats} runs, {conditions}\n\n",
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// Prints the markdown report and writes it with the JSON into `out`.
fn write_report(out: &Path, markdown: &str, json: &impl Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    print!("{markdown}");
    std::fs::write(out.join("report.md"), markdown)?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(json)?)?;
    eprintln!("bench: wrote {}/report.md and report.json", out.display());
    Ok(())
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().map_or(path.to_string(), |n| n.to_string_lossy().into_owned())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_files_are_paths_or_shipped_names() {
        assert_eq!(suite_file("my/suite.toml"), Some(PathBuf::from("my/suite.toml")));
        assert_eq!(suite_file("mine.toml"), Some(Path::new(SUITES_DIR).join("mine.toml")));
        assert_eq!(suite_file("no-such-suite"), None);
    }
}

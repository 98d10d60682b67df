//! `lookout bench --suite vision`: per-stage latency and peak memory of the vision path (decode, letterbox,
//! detector, OCR detection, OCR recognition) at each thread count, beside onnxruntime running the same ONNX files
//! on the very input tensors Lookout built, which the Lookout worker writes as .npy files.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use lookout_models::engine;
use lookout_models::vision::image::load_image;
use lookout_models::vision::StageTimings;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{file_name, heading, median, npy, peer, peer_python, variant_of, worker, write_report, BenchArgs};
use crate::cli::{print_json, Context};
use crate::memory;
use crate::turn::{self, VisionChoice};

const DEFAULT_REPEATS: usize = 10;
const ROLES: [&str; 3] = ["object-detector", "ocr-detector", "ocr-recognizer"];
const PEER_SCRIPT: &str = "runtime/bench/onnxruntime_vision_peer.py";

/// Stage names, in the order `stages` returns them.
const STAGES: [&str; 11] = [
    "decode",
    "detect_preprocess",
    "detect_run",
    "detect_post",
    "ocr_det_preprocess",
    "ocr_det_run",
    "ocr_det_post",
    "ocr_det",
    "ocr_rec",
    "ocr_rec_run_per_run",
    "total",
];

fn stages(decode: f64, t: &StageTimings, total: f64) -> [f64; 11] {
    let per_run = if t.ocr_rec_runs > 0 { t.ocr_rec_run / t.ocr_rec_runs as f64 } else { 0.0 };
    [
        decode,
        t.detect_preprocess,
        t.detect_run,
        t.detect_post,
        t.ocr_det_preprocess,
        t.ocr_det_run,
        t.ocr_det_post,
        t.ocr_det_preprocess + t.ocr_det_run + t.ocr_det_post,
        t.ocr_rec,
        per_run,
        total,
    ]
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Object {
    label: String,
    score: f32,
    bbox: [f32; 4],
}

#[derive(Debug, Serialize, Deserialize)]
struct ImageResult {
    file: String,
    width: u32,
    height: u32,
    median_ms: BTreeMap<String, f64>,
    ocr_lines: usize,
    /// Recognizer runs (a line wider than its input takes several).
    ocr_runs: usize,
    objects: Vec<Object>,
    text: Vec<String>,
    /// Input tensors written for the peer: role → .npy path.
    tensors: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LookoutRun {
    threads: usize,
    load_ms: f64,
    peak_rss_mib: f64,
    weight_mib: f64,
    images: Vec<ImageResult>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PeerTiming {
    role: String,
    file: String,
    median_ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PeerRun {
    engine: String,
    threads: usize,
    load_ms: f64,
    peak_rss_mib: f64,
    results: Vec<PeerTiming>,
}

#[derive(Debug, Serialize)]
struct Report<'r> {
    repeats: usize,
    lookout: &'r [LookoutRun],
    peers: &'r [PeerRun],
    thread_check: &'r [String],
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

fn med(m: &BTreeMap<String, f64>, stage: &str) -> f64 {
    m.get(stage).copied().unwrap_or(0.0)
}

pub(super) fn run(ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    let repeats = args.repeats.unwrap_or(DEFAULT_REPEATS);
    let images = if args.images.is_empty() {
        let testdata = PathBuf::from(".cache/testdata/vision");
        vec![testdata.join("photos/dog.jpg"), testdata.join("photos/kite.jpg"), testdata.join("text/sign.png")]
    } else {
        args.images.clone()
    };
    for image in &images {
        if !image.is_file() {
            bail!("bench input {} not found (run models/prepare/prepare.sh, or pass --images)", image.display());
        }
    }
    if let Some(spec) = &args.worker {
        let threads: usize = spec.parse().context("--worker takes a thread count")?;
        return print_json(&measure(
            ctx,
            threads,
            &images,
            repeats,
            args.detector.as_deref(),
            args.tensors.as_deref(),
        )?);
    }
    if args.threads.is_empty() || args.threads.contains(&0) {
        bail!("--threads takes thread counts of at least 1");
    }

    let tensor_dir = args.out.join("tensors");
    std::fs::create_dir_all(&tensor_dir).with_context(|| tensor_dir.display().to_string())?;
    let mut runs: Vec<LookoutRun> = Vec::new();
    for (i, &threads) in args.threads.iter().enumerate() {
        eprintln!("bench: lookout vision, {threads} thread(s) ...");
        let mut worker_args: Vec<OsString> =
            vec!["--images".into(), join_paths(&images), "--worker".into(), threads.to_string().into()];
        if let Some(detector) = &args.detector {
            worker_args.extend(["--detector".into(), detector.into()]);
        }
        if i == 0 {
            worker_args.extend(["--tensors".into(), tensor_dir.clone().into_os_string()]);
        }
        runs.push(worker(ctx, "vision", repeats, &worker_args).with_context(|| format!("{threads} thread(s)"))?);
    }
    let thread_check = compare_threads(&runs);

    let mut peers = Vec::new();
    if args.no_peers {
        eprintln!("bench: peers skipped (--no-peers)");
    } else if let Some(python) = peer_python(&[".cache/venv-peers/bin/python", ".cache/venv/bin/python"]) {
        let bundle = ctx.open_bundle()?;
        let mut peer_args: Vec<OsString> = vec!["--repeats".into(), repeats.to_string().into()];
        for role in ROLES {
            let path = bundle.checked_path(bundle.component(role, variant_of(role, args.detector.as_deref()))?)?;
            peer_args.extend(["--model".into(), format!("{role}={}", path.display()).into()]);
        }
        for (role, path) in runs.first().into_iter().flat_map(|r| &r.images).flat_map(|i| &i.tensors) {
            peer_args.push(format!("{role}={path}").into());
        }
        for &threads in &args.threads {
            eprintln!("bench: onnxruntime, {threads} thread(s) ...");
            let mut a = peer_args.clone();
            a.extend(["--threads".into(), threads.to_string().into()]);
            match peer(&python, PEER_SCRIPT, &a).and_then(|v: Value| Ok(serde_json::from_value::<PeerRun>(v)?)) {
                Ok(run) => peers.push(run),
                Err(e) => eprintln!("bench: onnxruntime {threads} thread(s) failed: {e:#}"),
            }
        }
    } else {
        eprintln!("bench: no Python with onnxruntime (runtime/bench/setup-peers.sh); reporting lookout alone");
    }

    let markdown = report_markdown(&runs, &peers, &thread_check, repeats);
    write_report(&args.out, &markdown, &Report { repeats, lookout: &runs, peers: &peers, thread_check: &thread_check })
}

fn join_paths(paths: &[PathBuf]) -> OsString {
    let mut joined = OsString::new();
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            joined.push(",");
        }
        joined.push(p);
    }
    joined
}

/// All images at one thread count, measured in this process after one untimed run each.
fn measure(
    ctx: &Context,
    threads: usize,
    images: &[PathBuf],
    repeats: usize,
    detector: Option<&str>,
    tensors: Option<&Path>,
) -> anyhow::Result<LookoutRun> {
    let threads = engine::set_threads(threads);
    let bundle = ctx.open_bundle()?;
    let started = Instant::now();
    let models = turn::load_vision(&bundle, &VisionChoice::new(detector, true))?;
    let mut session = models.session()?;
    let load_ms = ms(started);
    let weight_bytes: u64 =
        ROLES.iter().filter_map(|role| bundle.component(role, variant_of(role, detector)).ok()).map(|c| c.bytes).sum();
    let mut results = Vec::new();
    for path in images {
        let mut runs = Vec::with_capacity(repeats);
        let mut scene = None;
        for i in 0..=repeats {
            let started = Instant::now();
            let image = load_image(path).with_context(|| path.display().to_string())?;
            let decode = ms(started);
            let s = session.describe(&image)?;
            let total = ms(started);
            if i > 0 {
                runs.push(stages(decode, session.timings(), total));
            }
            scene = Some(s);
        }
        let scene = scene.context("no runs")?;
        let stem = Path::new(path).file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
        let mut written = BTreeMap::new();
        if let Some(dir) = tensors {
            for input in session.last_inputs() {
                let file = dir.join(format!("{stem}.{}.npy", input.role));
                npy::write_f32(&file, &input.shape, input.data).with_context(|| file.display().to_string())?;
                written.insert(input.role.to_string(), file.display().to_string());
            }
        }
        results.push(ImageResult {
            file: path.display().to_string(),
            width: scene.width,
            height: scene.height,
            median_ms: STAGES
                .iter()
                .enumerate()
                .map(|(i, s)| (s.to_string(), median(runs.iter().map(|r| r[i]))))
                .collect(),
            ocr_lines: session.timings().ocr_rec_lines,
            ocr_runs: session.timings().ocr_rec_runs,
            objects: scene
                .objects
                .iter()
                .map(|d| Object { label: d.label.clone(), score: d.score, bbox: d.bbox })
                .collect(),
            text: scene.text.iter().map(|t| t.text.clone()).collect(),
            tensors: written,
        });
    }
    Ok(LookoutRun {
        threads,
        load_ms,
        peak_rss_mib: memory::rss().map_or(0.0, |r| r.peak_mib),
        weight_mib: weight_bytes as f64 / (1024.0 * 1024.0),
        images: results,
    })
}

/// Whether every thread count found the same objects and text as the first, and how far scores and boxes moved.
fn compare_threads(runs: &[LookoutRun]) -> Vec<String> {
    let Some((base, rest)) = runs.split_first() else { return Vec::new() };
    let mut lines = Vec::new();
    for run in rest {
        let (mut score_diff, mut box_diff, mut same) = (0f32, 0f32, true);
        for (a, b) in base.images.iter().zip(&run.images) {
            same &= a.text == b.text && a.objects.len() == b.objects.len();
            for (x, y) in a.objects.iter().zip(&b.objects) {
                same &= x.label == y.label;
                score_diff = score_diff.max((x.score - y.score).abs());
                box_diff = x.bbox.iter().zip(&y.bbox).fold(box_diff, |m, (p, q)| m.max((p - q).abs()));
            }
        }
        let verdict = match (same, score_diff == 0.0 && box_diff == 0.0) {
            (true, true) => "identical objects, scores, boxes and text".to_string(),
            (true, false) => {
                format!("same objects and text; scores differ by at most {score_diff:.2e}, boxes by {box_diff:.2e} px")
            }
            (false, _) => "DIFFERENT objects or text".to_string(),
        };
        lines.push(format!("{} vs {} threads: {verdict}", base.threads, run.threads));
    }
    lines
}

fn report_markdown(runs: &[LookoutRun], peers: &[PeerRun], thread_check: &[String], repeats: usize) -> String {
    let mut md = heading("vision", repeats, "after one warm-up run per image; times in ms");
    md.push_str("## Lookout stages\n\n");
    md.push_str("| threads | image | px | decode | letterbox | detector | det post | OCR det (letterbox + run + DB) | OCR rec lines (runs) | OCR rec | rec run | total | peak RSS MiB | objects | text |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for run in runs {
        for r in &run.images {
            let m = &r.median_ms;
            let mut labels: BTreeMap<&str, usize> = BTreeMap::new();
            for o in &r.objects {
                *labels.entry(o.label.as_str()).or_default() += 1;
            }
            let objects: Vec<String> =
                labels.iter().map(|(l, n)| if *n > 1 { format!("{n} {l}") } else { l.to_string() }).collect();
            md.push_str(&format!(
                "| {} | {} | {}×{} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} ({:.1} + {:.0} + {:.1}) | {} ({}) | {:.0} | {:.1} | {:.0} | {:.0} | {} | {} |\n",
                run.threads,
                file_name(&r.file),
                r.width,
                r.height,
                med(m, "decode"),
                med(m, "detect_preprocess"),
                med(m, "detect_run"),
                med(m, "detect_post"),
                med(m, "ocr_det"),
                med(m, "ocr_det_preprocess"),
                med(m, "ocr_det_run"),
                med(m, "ocr_det_post"),
                r.ocr_lines,
                r.ocr_runs,
                med(m, "ocr_rec"),
                med(m, "ocr_rec_run_per_run"),
                med(m, "total"),
                run.peak_rss_mib,
                objects.join(", "),
                r.text.join(" / ").chars().take(40).collect::<String>(),
            ));
        }
    }
    if let Some(run) = runs.first() {
        md.push_str(&format!("\nModel load {:.0} ms; weights {:.1} MiB.\n", run.load_ms, run.weight_mib));
    }
    for line in thread_check {
        md.push_str(&format!("Threads: {line}.\n"));
    }
    if peers.is_empty() {
        return md;
    }

    md.push_str("\n## Model runs: lookout ÷ onnxruntime on the same ONNX files and input tensors\n\n");
    let threads: Vec<usize> = runs.iter().map(|r| r.threads).collect();
    md.push_str("| model | input |");
    for t in &threads {
        md.push_str(&format!(" lookout {t}t | onnxruntime {t}t | ratio {t}t |"));
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|---|---|".repeat(threads.len()));
    md.push('\n');
    let stage_of = |role: &str| match role {
        "object-detector" => "detect_run",
        "ocr-detector" => "ocr_det_run",
        _ => "ocr_rec_run_per_run",
    };
    for role in ROLES {
        for image in runs.first().map_or(&[][..], |r| &r.images[..]) {
            let Some(tensor) = image.tensors.get(role) else { continue };
            md.push_str(&format!("| {role} | {} |", file_name(&image.file)));
            for run in runs {
                let ours = run.images.iter().find(|i| i.file == image.file).map(|i| med(&i.median_ms, stage_of(role)));
                let theirs = peers
                    .iter()
                    .find(|p| p.threads == run.threads)
                    .and_then(|p| p.results.iter().find(|r| r.role == role && &r.file == tensor))
                    .map(|r| r.median_ms);
                let cell = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.1}"));
                let ratio = match (ours, theirs) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                    _ => "—".into(),
                };
                md.push_str(&format!(" {} | {} | {ratio} |", cell(ours), cell(theirs)));
            }
            md.push('\n');
        }
    }
    md.push_str("\n| engine | threads | load ms | peak RSS MiB |\n|---|---|---|---|\n");
    for run in runs {
        md.push_str(&format!(
            "| lookout, whole path | {} | {:.0} | {:.0} |\n",
            run.threads, run.load_ms, run.peak_rss_mib
        ));
    }
    for p in peers {
        md.push_str(&format!(
            "| {}, models alone | {} | {:.0} | {:.0} |\n",
            p.engine, p.threads, p.load_ms, p.peak_rss_mib
        ));
    }
    md.push_str("\nratio: lookout's graph run ÷ onnxruntime's on the identical tensor (below 1 is faster); the recognizer row is one run of the recognizer, on one line or one window of a line wider than its input (lookout: its run time summed over runs ÷ runs; onnxruntime: the last of them). onnxruntime runs with its default graph optimizations, `intra_op_num_threads` = the thread count, sequential execution.\n");
    md
}

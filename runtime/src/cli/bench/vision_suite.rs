//! Vision suite files (`kind = "vision"`): photos with the objects in them (label and, where it is clear, how
//! many) and rendered text with its reference, scored per detector score threshold: label precision and recall,
//! the rate of reported labels that are not in the photo, count accuracy, per-label precision and recall of the
//! counted objects (and of the vehicles, whatever their labels), false objects per image, and OCR character error
//! rate. Sequences (folders of consecutive frames of one camera) are scored for how often their counts change, with
//! the daemon's tracker and without, and against a count annotated in every frame where they have one.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use lookout_models::bundle::Bundle;
use lookout_models::vision::detections::VEHICLE_LABELS;
use lookout_models::vision::image::{load_image, RgbImage};
use lookout_models::vision::VisionModels;
use serde::{Deserialize, Serialize};

use super::sequence_counts::{self, Annotated, CountAgreement};
use super::suite::{
    check_split, edit_distance, not_scored_markdown, percent, prepare_items, process_cells, split_chart, suite_heading,
    ItemError, ProcessFigures, ScoredVariant, SuiteFile, SuiteReport, SPLITS,
};
use super::{frame_files, peer, peer_python, variant_of, write_report, BenchArgs};
use crate::cli::Context;
use crate::started::ms_since_process_start;
use crate::tracker::{Tracker, TrackerSettings};
use crate::turn::{self, VisionChoice};

const PEER_SCRIPT: &str = "runtime/bench/onnxruntime_vision_suite_peer.py";

/// The pooled count of an item's `vehicles`, among the counted labels.
const VEHICLE_COUNT: &str = "vehicle";

/// Score thresholds compared, beside the bundle's own, when `--variants` names none.
const OTHER_THRESHOLDS: [f32; 3] = [0.25, 0.4, 0.55];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisionItem {
    id: String,
    split: String,
    source: String,
    /// Relative to the suite file.
    image: PathBuf,
    /// COCO label → how many are in the photo: `N`, or `"LO-HI"` where some are about half in the frame or hidden
    /// (0: present, too many or too small to count).
    #[serde(default)]
    objects: BTreeMap<String, Annotated>,
    /// Labels that may be reported without being required (a pickup reported as a car, a table under a cup).
    #[serde(default)]
    also: Vec<String>,
    /// How many vehicles are in the photo, of whatever vehicle label the detector gives each (a van is a car to one
    /// detector and a truck to another): scored as one pooled count, `vehicle`.
    #[serde(default)]
    vehicles: Option<usize>,
    /// The text in the image, one line per line.
    #[serde(default)]
    text: Option<String>,
}

struct Ready {
    item: VisionItem,
    path: PathBuf,
    image: RgbImage,
}

#[derive(Debug, Serialize)]
struct Scored {
    id: String,
    split: String,
    source: String,
    found: BTreeMap<String, usize>,
    missed: Vec<String>,
    not_in_photo: Vec<String>,
    /// Objects reported of labels that are neither in the photo nor allowed.
    false_objects: usize,
    counts_right: usize,
    counts_checked: usize,
    text: Option<String>,
    char_errors: usize,
    chars: usize,
    ms: f64,
}

#[derive(Debug, Serialize)]
struct SplitScore {
    split: String,
    items: usize,
    precision: f64,
    recall: f64,
    /// Reported labels not in the photo, over all reported labels.
    not_in_photo_rate: f64,
    count_accuracy: Option<f64>,
    /// Per counted label, objects pooled over the split's images: found ones matched by the reference's count over
    /// all found (precision) and over all in the reference (recall).
    counted: BTreeMap<String, CountScore>,
    /// Objects of labels not in the image, per image with objects annotated.
    false_objects_per_image: f64,
    ocr_cer: Option<f64>,
}

#[derive(Debug, Serialize)]
struct CountScore {
    precision: f64,
    recall: f64,
}

/// A sequence's counts frame by frame, raw and through the tracker.
#[derive(Debug, Serialize)]
struct SequenceScore {
    id: String,
    source: String,
    frames: usize,
    fps: f64,
    /// Per label: changes of its count per minute of footage, raw and tracked.
    flaps_per_minute: BTreeMap<String, (f64, f64)>,
    /// Per label: the median count, raw and tracked.
    median_count: BTreeMap<String, (f64, f64)>,
    /// Tracked objects per frame of a label the detector's clutter is mistaken for (CLUTTER_LABELS), raw and tracked.
    clutter_per_frame: (f64, f64),
    /// Per label annotated in every frame: its counts against the annotation, in each part of the sequence, once
    /// the tracker is warm (the daemon reports the frames before as not yet known).
    annotated: BTreeMap<String, Vec<AnnotatedPart>>,
}

/// One label's counts against its annotation over one part of a sequence (in-domain, held-out, or all of it).
#[derive(Debug, Serialize)]
struct AnnotatedPart {
    part: &'static str,
    frames: usize,
    /// The fewest count changes a minute the annotation itself needs: people really coming and going.
    least_changes_per_minute: f64,
    raw: CountAgreement,
    tracked: CountAgreement,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SequenceEntry {
    id: String,
    source: String,
    /// A folder of JPEG or PNG frames, taken in file-name order; relative to the suite file.
    frames: PathBuf,
    /// Analysed frames a second.
    fps: f64,
    /// Per label, its count in every frame, annotated by looking: whitespace-separated `N` or `LO-HI`, in frame order.
    #[serde(default)]
    counts: BTreeMap<String, String>,
    /// Index of the first held-out frame: the annotated frames before it are in-domain.
    #[serde(default)]
    held_out_from: Option<usize>,
}

type VariantResult = ScoredVariant<SplitScore, Scored>;

pub(super) fn run(ctx: &Context, args: &BenchArgs, path: &Path, suite: &SuiteFile) -> anyhow::Result<()> {
    let (description, items) = (suite.description.as_str(), suite.items.as_slice());
    lookout_models::engine::set_threads(1);
    let bundle = ctx.open_bundle()?;
    let mut models = turn::load_vision(
        &bundle,
        &VisionChoice::new(args.detector.as_deref(), true)
            .with_text_budget(args.text_budget)
            .with_tiles(!args.no_tiles),
    )?;
    let cold_start_ms = ms_since_process_start();
    let bundle_threshold = models.detector.filter.score_threshold;
    let thresholds: Vec<f32> = if args.variants.is_empty() {
        let mut all = OTHER_THRESHOLDS.to_vec();
        all.push(bundle_threshold);
        all.sort_by(f32::total_cmp);
        all.dedup();
        all
    } else {
        args.variants
            .iter()
            .map(|v| match v.parse::<f32>() {
                Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
                _ => bail!("vision suites take score thresholds between 0 and 1 as variants, got `{v}`"),
            })
            .collect::<anyhow::Result<_>>()?
    };
    let labels: BTreeSet<String> = models.detector.labels().iter().cloned().collect();
    let base = path.parent().unwrap_or(Path::new("."));
    let (ready, skipped) = prepare_items(path, items, |value| prepare_item(value, base, &labels))?;
    // Checked before anything runs, so that a malformed sequence fails at once.
    let sequences = suite
        .sequences
        .iter()
        .map(|value| prepare_sequence(value, base, &labels))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut results = Vec::new();
    for threshold in thresholds {
        models.set_score_threshold(threshold);
        let mut result = evaluate(&models, threshold, &ready)?;
        result.process = Some(ProcessFigures::now(cold_start_ms));
        results.push(result);
    }
    if args.no_peers {
        eprintln!("bench: peers skipped (--no-peers)");
    } else if let Some(python) = peer_python(&[".cache/venv-peers/bin/python", ".cache/venv/bin/python"]) {
        eprintln!("bench: onnxruntime at threshold {bundle_threshold} on {} images ...", ready.len());
        match onnxruntime_peer(&bundle, args.detector.as_deref(), &python, bundle_threshold, &ready) {
            Ok(run) => results.push(run),
            Err(e) => eprintln!("bench: the onnxruntime peer failed: {e:#}"),
        }
    } else {
        eprintln!("bench: onnxruntime not installed (runtime/bench/setup-peers.sh); scoring lookout alone");
    }
    models.set_score_threshold(bundle_threshold);
    let sequences =
        sequences.into_iter().map(|sequence| score_sequence(&models, sequence)).collect::<anyhow::Result<Vec<_>>>()?;
    let suite = path.display().to_string();
    let mut markdown = report_markdown(&suite, description, &skipped, &results, !args.no_tiles);
    markdown.push_str(&sequences_markdown(&sequences, bundle_threshold));
    write_report(
        &args.out,
        &markdown,
        &VisionReport {
            report: SuiteReport {
                suite: suite.clone(),
                kind: "vision",
                description,
                skipped: &skipped,
                variants: &results,
            },
            sequences: &sequences,
            tiles: !args.no_tiles,
        },
    )?;
    for (file, title, metric) in [
        ("recall.svg", "Label recall per threshold", (|s: &SplitScore| s.recall) as fn(&SplitScore) -> f64),
        ("not-in-photo.svg", "Reported labels not in the photo", |s: &SplitScore| s.not_in_photo_rate),
    ] {
        let bars: Vec<_> = results
            .iter()
            .map(|r| {
                let of = |name: &str| r.splits.iter().find(|s| s.split == name).map(metric);
                (r.variant.clone(), of("in-domain"), of("held-out"))
            })
            .collect();
        let svg = args.out.join(file);
        std::fs::write(&svg, split_chart(title, &bars)).with_context(|| svg.display().to_string())?;
    }
    eprintln!("bench: wrote recall.svg and not-in-photo.svg in {}", args.out.display());
    Ok(())
}

/// Objects per label in one frame.
type Counts = BTreeMap<String, usize>;

/// The suite report, with the sequences' scores beside the variants'.
#[derive(Serialize)]
struct VisionReport<'a> {
    #[serde(flatten)]
    report: SuiteReport<'a, VariantResult>,
    sequences: &'a [SequenceScore],
    /// Whether Lookout's detector also looked at large images' tiles (unless `--no-tiles`; the onnxruntime peer
    /// never does).
    tiles: bool,
}

/// Runs a sequence's frames through the detector at the bundle's threshold, counting each label's objects per
/// frame as detected and as the daemon's tracker (default settings) reports them, and scores the labels annotated
/// in every frame against their annotation.
fn score_sequence(models: &VisionModels, sequence: Sequence) -> anyhow::Result<SequenceScore> {
    let Sequence { entry, files, truth } = sequence;
    let detector = &models.detector;
    let mut session = models.session()?;
    // As in the daemon, the tracker also gets the detections its labels admit only as moving candidates.
    session.set_moving_candidates(true);
    let mut tracker = Tracker::new(TrackerSettings::default(), detector.filter.max_detections);
    let labels = detector.labels();
    let filters = detector.label_filters().to_vec();
    let (mut raw, mut tracked): (Vec<Counts>, Vec<Counts>) = (vec![], vec![]);
    let mut first_warm = files.len();
    for (i, file) in files.iter().enumerate() {
        eprint!("\rbench: sequence {} {}/{}", entry.id, i + 1, files.len());
        let image = load_image(file).with_context(|| file.display().to_string())?;
        let mut detections = session.detect(&image)?;
        let reported = tracker.update(&detections, (image.width, image.height), &filters);
        // Counted as a single image is: without the moving candidates.
        detections.retain(|d| filters.get(d.label_id).is_some_and(|f| d.score >= f.min_score));
        raw.push(lookout_models::vision::detections::count_by_label(&detections));
        tracked.push(lookout_models::vision::detections::count_by_label(&reported));
        if tracker.is_warm() {
            first_warm = first_warm.min(i);
        }
    }
    eprintln!();
    let minutes = files.len() as f64 / entry.fps / 60.0;
    let mut seen: BTreeSet<&String> = raw.iter().chain(&tracked).flat_map(|c| c.keys()).collect();
    seen.retain(|l| labels.contains(l));
    let count = |frames: &[Counts], label: &str| -> Vec<usize> {
        frames.iter().map(|c| c.get(label).copied().unwrap_or(0)).collect()
    };
    let flaps = |counts: &[usize]| counts.windows(2).filter(|w| w[0] != w[1]).count() as f64 / minutes;
    let median = |counts: &[usize]| {
        let mut sorted = counts.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2] as f64
    };
    let clutter = |frames: &[Counts]| {
        let total: usize = frames
            .iter()
            .flat_map(|c| c.iter())
            .filter(|(l, _)| lookout_models::vision::detections::CLUTTER_LABELS.contains(&l.as_str()))
            .map(|(_, n)| n)
            .sum();
        total as f64 / frames.len() as f64
    };
    Ok(SequenceScore {
        id: entry.id,
        source: entry.source,
        frames: files.len(),
        fps: entry.fps,
        flaps_per_minute: seen
            .iter()
            .map(|l| ((*l).clone(), (flaps(&count(&raw, l)), flaps(&count(&tracked, l)))))
            .collect(),
        median_count: seen
            .iter()
            .map(|l| ((*l).clone(), (median(&count(&raw, l)), median(&count(&tracked, l)))))
            .collect(),
        clutter_per_frame: (clutter(&raw), clutter(&tracked)),
        annotated: truth
            .iter()
            .map(|(label, truth)| {
                let parts = sequence_parts(first_warm, entry.held_out_from, files.len())
                    .into_iter()
                    .map(|(part, frames)| AnnotatedPart {
                        part,
                        frames: frames.len(),
                        least_changes_per_minute: sequence_counts::least_changes_per_minute(
                            &truth[frames.clone()],
                            entry.fps,
                        ),
                        raw: sequence_counts::agreement(
                            &count(&raw, label)[frames.clone()],
                            &truth[frames.clone()],
                            entry.fps,
                        ),
                        tracked: sequence_counts::agreement(
                            &count(&tracked, label)[frames.clone()],
                            &truth[frames],
                            entry.fps,
                        ),
                    })
                    .collect();
                (label.clone(), parts)
            })
            .collect(),
    })
}

/// A sequence entry with its frames found and its annotated counts read.
struct Sequence {
    entry: SequenceEntry,
    files: Vec<PathBuf>,
    truth: BTreeMap<String, Vec<Annotated>>,
}

fn prepare_sequence(value: &toml::Value, base: &Path, labels: &BTreeSet<String>) -> anyhow::Result<Sequence> {
    let entry: SequenceEntry = value.clone().try_into().context("malformed sequence")?;
    let dir = base.join(&entry.frames);
    let files = frame_files(&dir).with_context(|| format!("sequence {}", entry.id))?;
    if files.len() < 2 || entry.fps.is_nan() || entry.fps <= 0.0 {
        bail!("sequence {}: needs at least two frames in {} and a positive fps", entry.id, dir.display());
    }
    let truth = entry
        .counts
        .iter()
        .map(|(label, text)| {
            if !labels.contains(label) {
                bail!("`{label}` is not one of the detector's labels");
            }
            Ok((label.clone(), sequence_counts::parse_counts(text, files.len())?))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()
        .with_context(|| format!("sequence {}: counts", entry.id))?;
    if entry.held_out_from.is_some_and(|from| from == 0 || from >= files.len()) {
        bail!("sequence {}: held_out_from must name a frame after the first of its {}", entry.id, files.len());
    }
    Ok(Sequence { entry, files, truth })
}

/// The parts of a sequence its annotated counts are scored on: from the first frame the tracker is warm, split at
/// the first held-out frame where there is one.
fn sequence_parts(
    first_warm: usize,
    held_out_from: Option<usize>,
    frames: usize,
) -> Vec<(&'static str, std::ops::Range<usize>)> {
    match held_out_from {
        Some(from) if from > first_warm => vec![("in-domain", first_warm..from), ("held-out", from..frames)],
        Some(from) => vec![("held-out", first_warm.max(from)..frames)],
        None => vec![("all", first_warm..frames)],
    }
}

fn sequences_markdown(sequences: &[SequenceScore], threshold: f32) -> String {
    if sequences.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n## Sequences\n\nEvery frame through the detector at the bundle's threshold ({threshold}), counted as detected and as the daemon's tracker reports it (default `[objects]` settings: seen in 3 of 5 frames, median score at the label's threshold, or for people moved a quarter of their height).\n\n| sequence | frames | fps | label | median count raw / tracked | count changes per minute raw / tracked |\n|---|---:|---:|---|---:|---:|\n"
    );
    for s in sequences {
        for (label, (raw, tracked)) in &s.flaps_per_minute {
            let (median_raw, median_tracked) = s.median_count[label];
            md.push_str(&format!(
                "| {} | {} | {} | {label} | {median_raw} / {median_tracked} | {raw:.1} / {tracked:.1} |\n",
                s.id, s.frames, s.fps
            ));
        }
        md.push_str(&format!(
            "| {} | | | small clutter-prone labels per frame | {:.2} / {:.2} | |\n",
            s.id, s.clutter_per_frame.0, s.clutter_per_frame.1
        ));
    }
    if sequences.iter().any(|s| !s.annotated.is_empty()) {
        md.push_str(
            "\nAgainst the counts annotated in every frame, from the first frame the tracker is warm (wrong-way: a change that took the count away from the annotation, as people lost or clutter found do, and people entering or leaving do not):\n\n| sequence | label | part | frames | annotated changes per minute (fewest) | count changes per minute raw / tracked | wrong-way changes per minute raw / tracked | exact count raw / tracked | mean count error raw / tracked |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in sequences {
            for (label, parts) in &s.annotated {
                for p in parts {
                    md.push_str(&format!(
                        "| {} | {label} | {} | {} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0}% / {:.0}% | {:.2} / {:.2} |\n",
                        s.id,
                        p.part,
                        p.frames,
                        p.least_changes_per_minute,
                        p.raw.changes_per_minute,
                        p.tracked.changes_per_minute,
                        p.raw.wrong_way_changes_per_minute,
                        p.tracked.wrong_way_changes_per_minute,
                        100.0 * p.raw.exact,
                        100.0 * p.tracked.exact,
                        p.raw.mean_abs_error,
                        p.tracked.mean_abs_error
                    ));
                }
            }
        }
    }
    md
}

fn prepare_item(value: &toml::Value, base: &Path, labels: &BTreeSet<String>) -> anyhow::Result<Ready> {
    let item: VisionItem = value.clone().try_into().context("malformed entry")?;
    check_split(&item.split)?;
    if let Some(unknown) = item.objects.keys().chain(&item.also).find(|l| !labels.contains(*l)) {
        bail!("`{unknown}` is not one of the detector's labels");
    }
    if item.objects.is_empty() && item.text.is_none() {
        bail!("give `objects`, `text` or both");
    }
    if item.vehicles.is_some() && item.objects.is_empty() {
        bail!("`vehicles` counts among the `objects`: give those too");
    }
    if let Some((label, _)) = item.objects.iter().find(|(_, n)| n.lo == 0 && n.hi > 0) {
        bail!("the range of `{label}` starts at 0 (0 alone says it is present, not counted)");
    }
    let file = base.join(&item.image);
    let image = load_image(&file).with_context(|| file.display().to_string())?;
    Ok(Ready { item, path: file, image })
}

/// What a pipeline found in one image: objects per label, the text lines it read, and how long it took.
struct Seen {
    counts: BTreeMap<String, usize>,
    text: Vec<String>,
    ms: f64,
}

fn evaluate(models: &VisionModels, threshold: f32, items: &[Ready]) -> anyhow::Result<VariantResult> {
    let variant = threshold.to_string();
    let mut session = models.session()?;
    let (mut scored, mut failed) = (Vec::new(), Vec::new());
    for (i, Ready { item, image, .. }) in items.iter().enumerate() {
        eprint!("\rbench: {variant} {}/{} {:<30}", i + 1, items.len(), item.id);
        let started = Instant::now();
        match session.describe(image) {
            Ok(scene) => {
                let seen = Seen {
                    text: scene.text.iter().map(|l| l.text.clone()).collect(),
                    counts: scene.counts,
                    ms: started.elapsed().as_secs_f64() * 1e3,
                };
                scored.push(score(item, seen));
            }
            Err(e) => failed.push(ItemError { item: item.id.clone(), error: format!("{e:#}") }),
        }
    }
    eprintln!();
    Ok(variant_result(variant, items, scored, failed))
}

fn variant_result(variant: String, items: &[Ready], scored: Vec<Scored>, failed: Vec<ItemError>) -> VariantResult {
    let splits = SPLITS.iter().filter_map(|&split| split_score(split, items, &scored)).collect();
    VariantResult::new(variant, splits, scored, failed, |s| s.ms)
}

/// One image's findings against its reference objects and text.
fn score(item: &VisionItem, seen: Seen) -> Scored {
    let (mut missed, mut not_in_photo) = (Vec::new(), Vec::new());
    let (mut counts_right, mut counts_checked) = (0, 0);
    if !item.objects.is_empty() {
        for (label, count) in &item.objects {
            match seen.counts.get(label) {
                None => missed.push(label.clone()),
                Some(&n) if count.hi > 0 => counts_right += usize::from(count.contains(n)),
                Some(_) => {}
            }
            counts_checked += usize::from(count.hi > 0);
        }
        not_in_photo =
            seen.counts.keys().filter(|l| !item.objects.contains_key(*l) && !item.also.contains(l)).cloned().collect();
    }
    let false_objects = not_in_photo.iter().map(|l| seen.counts.get(l).copied().unwrap_or(0)).sum();
    let (char_errors, chars) = match &item.text {
        Some(reference) => {
            let reference: Vec<char> = single_spaced(reference).chars().collect();
            let heard: Vec<char> = single_spaced(&seen.text.join(" ")).chars().collect();
            (edit_distance(&reference, &heard), reference.len())
        }
        None => (0, 0),
    };
    Scored {
        id: item.id.clone(),
        split: item.split.clone(),
        source: item.source.clone(),
        found: if item.objects.is_empty() { BTreeMap::new() } else { seen.counts },
        missed,
        not_in_photo,
        false_objects,
        counts_right,
        counts_checked,
        text: item.text.as_ref().map(|_| seen.text.join("\n")),
        char_errors,
        chars,
        ms: seen.ms,
    }
}

/// What the onnxruntime peer script prints.
#[derive(Deserialize)]
struct PeerRun {
    engine: String,
    cold_start_ms: f64,
    peak_rss_mib: f64,
    results: Vec<PeerImage>,
}

#[derive(Deserialize)]
struct PeerImage {
    counts: BTreeMap<String, usize>,
    text: Vec<String>,
    ms: f64,
}

/// onnxruntime on the bundle's own vision ONNX files, through the reference pipeline the bundle's tests check
/// against, at `threshold`; scored as Lookout's variants are.
fn onnxruntime_peer(
    bundle: &Bundle,
    detector: Option<&str>,
    python: &Path,
    threshold: f32,
    items: &[Ready],
) -> anyhow::Result<VariantResult> {
    let mut args: Vec<OsString> = Vec::new();
    for (flag, role) in [
        ("--detector", "object-detector"),
        ("--labels", "object-labels"),
        ("--ocr-det", "ocr-detector"),
        ("--ocr-rec", "ocr-recognizer"),
        ("--dictionary", "ocr-dictionary"),
    ] {
        args.push(flag.into());
        args.push(bundle.checked_path(bundle.component(role, variant_of(role, detector))?)?.into());
    }
    let detector = bundle.component("object-detector", detector)?;
    args.extend(["--detector-variant".into(), detector.variant.clone().into()]);
    args.extend(["--score-threshold".into(), threshold.to_string().into()]);
    args.extend(items.iter().map(|r| r.path.clone().into_os_string()));
    let run: PeerRun = serde_json::from_value(peer(python, PEER_SCRIPT, &args)?).context("onnxruntime peer output")?;
    if run.results.len() != items.len() {
        bail!("the onnxruntime peer returned {} results for {} images", run.results.len(), items.len());
    }
    let scored = items
        .iter()
        .zip(run.results)
        .map(|(r, p)| score(&r.item, Seen { counts: p.counts, text: p.text, ms: p.ms }))
        .collect();
    let engine = run.engine.split(' ').next().unwrap_or("onnxruntime");
    let mut result = variant_result(format!("{engine} {threshold}"), items, scored, Vec::new());
    result.process = Some(ProcessFigures { cold_start_ms: run.cold_start_ms, peak_rss_mib: run.peak_rss_mib });
    Ok(result)
}

/// Pooled over one split's items: true positives are required labels found; labels found that are neither
/// required nor allowed count against precision.
fn split_score(split: &str, items: &[Ready], scored: &[Scored]) -> Option<SplitScore> {
    let of_split: Vec<&Scored> = scored.iter().filter(|s| s.split == split).collect();
    if of_split.is_empty() {
        return None;
    }
    let required = |s: &Scored| items.iter().find(|r| r.item.id == s.id).map_or(0, |r| r.item.objects.len());
    let with_objects: Vec<&&Scored> = of_split.iter().filter(|s| required(s) > 0).collect();
    let true_positives: usize = with_objects.iter().map(|s| required(s) - s.missed.len()).sum();
    let reported: usize = with_objects.iter().map(|s| s.found.len()).sum();
    let wrong: usize = with_objects.iter().map(|s| s.not_in_photo.len()).sum();
    let wanted: usize = with_objects.iter().map(|s| required(s)).sum();
    let checked: usize = of_split.iter().map(|s| s.counts_checked).sum();
    let chars: usize = of_split.iter().map(|s| s.chars).sum();
    // Per counted label: (found and in the reference, found, in the reference).
    let mut pooled: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for s in &with_objects {
        let Some(ready) = items.iter().find(|r| r.item.id == s.id) else { continue };
        let labelled = ready
            .item
            .objects
            .iter()
            .filter(|(_, n)| n.hi > 0)
            .map(|(label, &truth)| (label.clone(), s.found.get(label).copied().unwrap_or(0), truth));
        let vehicles = ready.item.vehicles.map(|truth| {
            let found = VEHICLE_LABELS.iter().map(|l| s.found.get(*l).copied().unwrap_or(0)).sum();
            (VEHICLE_COUNT.to_string(), found, Annotated { lo: truth, hi: truth })
        });
        for (label, found, truth) in labelled.chain(vehicles) {
            let truth = truth.nearest(found);
            let entry = pooled.entry(label).or_default();
            *entry = (entry.0 + found.min(truth), entry.1 + found, entry.2 + truth);
        }
    }
    let counted = pooled
        .into_iter()
        .map(|(label, (matched, found, truth))| {
            let score = CountScore {
                precision: matched as f64 / found.max(1) as f64,
                recall: matched as f64 / truth.max(1) as f64,
            };
            (label, score)
        })
        .collect();
    Some(SplitScore {
        split: split.to_string(),
        items: of_split.len(),
        precision: true_positives as f64 / (true_positives + wrong).max(1) as f64,
        recall: true_positives as f64 / wanted.max(1) as f64,
        not_in_photo_rate: wrong as f64 / reported.max(1) as f64,
        count_accuracy: (checked > 0)
            .then(|| of_split.iter().map(|s| s.counts_right).sum::<usize>() as f64 / checked as f64),
        counted,
        false_objects_per_image: with_objects.iter().map(|s| s.false_objects).sum::<usize>() as f64
            / with_objects.len().max(1) as f64,
        ocr_cer: (chars > 0).then(|| of_split.iter().map(|s| s.char_errors).sum::<usize>() as f64 / chars as f64),
    })
}

fn single_spaced(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The onnxruntime row's conditions and its time beside Lookout's at the same threshold.
fn peer_markdown(results: &[VariantResult]) -> String {
    let Some((peer, threshold)) = results.iter().find_map(|r| r.variant.strip_prefix("onnxruntime ").map(|t| (r, t)))
    else {
        return String::new();
    };
    let mut md = format!("\n`{}` is onnxruntime on the same ONNX files through the reference pipeline the bundle is tested against (models/prepare/vision.py), in a process of its own; its text reader does not split words at blank columns, so its OCR CER counts missing word spaces.", peer.variant);
    if let Some(ours) = results.iter().find(|r| r.variant == threshold) {
        md.push_str(&format!(
            " Per image at threshold {threshold}: Lookout {:.0} ms, onnxruntime {:.0} ms (median), {:.2}x.",
            ours.median_ms,
            peer.median_ms,
            ours.median_ms / peer.median_ms.max(1e-9)
        ));
    }
    md.push('\n');
    md
}

fn report_markdown(
    suite: &str,
    description: &str,
    skipped: &[ItemError],
    results: &[VariantResult],
    tiles: bool,
) -> String {
    let conditions = match tiles {
        true => {
            "one thread, detector and OCR; Lookout's detector also on large images' tiles, onnxruntime's on whole images"
        }
        false => "one thread, detector and OCR",
    };
    let mut md = suite_heading(suite, conditions, description);
    md.push_str("| threshold | split | items | label precision | label recall | labels not in photo | count accuracy | counted objects: precision / recall | false objects per image | OCR CER | ms p50 | ms p95 | cold start ms | peak RSS MiB |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
    let optional = |v: Option<f64>| v.map_or("-".to_string(), percent);
    for r in results {
        for s in &r.splits {
            let counted: Vec<String> = s
                .counted
                .iter()
                .map(|(l, c)| format!("{l} {} / {}", percent(c.precision), percent(c.recall)))
                .collect();
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.0} | {:.0} | {} |\n",
                r.variant,
                s.split,
                s.items,
                percent(s.precision),
                percent(s.recall),
                percent(s.not_in_photo_rate),
                optional(s.count_accuracy),
                if counted.is_empty() { "-".to_string() } else { counted.join(", ") },
                s.false_objects_per_image,
                optional(s.ocr_cer),
                r.median_ms,
                r.p95_ms,
                process_cells(r.process)
            ));
        }
    }
    md.push_str("\nPrecision, recall and count accuracy are pooled over each split's photos; OCR CER over its rendered text (whitespace collapsed, case kept). Lookout's thresholds run one after the other in one process, so they share its cold start and peak RSS.\n");
    md.push_str(&peer_markdown(results));
    md.push_str("\n## Photos and text with errors\n\n| item | threshold | missed | not in photo | counts found | text read |\n|---|---|---|---|---|---|\n");
    for r in results {
        for s in r.items.iter().filter(|s| {
            !s.missed.is_empty() || !s.not_in_photo.is_empty() || s.counts_right < s.counts_checked || s.char_errors > 0
        }) {
            let found: Vec<String> = s.found.iter().map(|(l, n)| format!("{l} {n}")).collect();
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                s.id,
                r.variant,
                s.missed.join(", "),
                s.not_in_photo.join(", "),
                found.join(", "),
                s.text.as_deref().unwrap_or("").replace('\n', " / ")
            ));
        }
    }
    let failed: Vec<(&str, &ItemError)> =
        results.iter().flat_map(|r| r.failed.iter().map(move |f| (r.variant.as_str(), f))).collect();
    md.push_str(&not_scored_markdown(skipped, &failed));
    md
}

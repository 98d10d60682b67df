//! What every evaluation suite file (`lookout bench --suite FILE.toml`) shares: inputs with their references and
//! where they came from, each in an in-domain or a held-out split, scored for every requested model variant, each
//! variant in a process of its own. An item whose file is missing or whose entry is malformed is reported on its own
//! and the run goes on. The suites themselves: speech in `speech_suite.rs`, vision in `vision_suite.rs`, end to end
//! in `e2e_suite.rs`.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{bench_command, median, percentile, BenchArgs};
use crate::cli::Context;
use crate::memory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuiteFile {
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "item")]
    pub items: Vec<toml::Value>,
    /// Vision suites: folders of consecutive frames from one camera, scored for how steady their counts are.
    #[serde(default, rename = "sequence")]
    pub sequences: Vec<toml::Value>,
}

pub(super) const MIB: f64 = 1024.0 * 1024.0;
pub(super) const SPLITS: [&str; 2] = ["in-domain", "held-out"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ItemError {
    pub item: String,
    pub error: String,
}

/// What a variant's own process measured: from its start to its models loaded, and its peak resident size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct ProcessFigures {
    pub cold_start_ms: f64,
    pub peak_rss_mib: f64,
}

impl ProcessFigures {
    /// The peak so far, with the cold start measured when the models were loaded.
    pub fn now(cold_start_ms: f64) -> Self {
        ProcessFigures { cold_start_ms, peak_rss_mib: memory::rss().map_or(0.0, |r| r.peak_mib) }
    }
}

/// One vision or end-to-end variant's scores: per split, per item, and the items it could not run.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ScoredVariant<S, I> {
    pub variant: String,
    pub median_ms: f64,
    pub p95_ms: f64,
    /// Set where the variant ran in a process of its own.
    pub process: Option<ProcessFigures>,
    pub splits: Vec<S>,
    pub items: Vec<I>,
    pub failed: Vec<ItemError>,
}

impl<S, I> ScoredVariant<S, I> {
    /// `items` with the median and 95th percentile of their times.
    pub fn new(variant: String, splits: Vec<S>, items: Vec<I>, failed: Vec<ItemError>, ms: impl Fn(&I) -> f64) -> Self {
        let (median_ms, p95_ms) = (median(items.iter().map(&ms)), percentile(items.iter().map(&ms), 0.95));
        ScoredVariant { variant, median_ms, p95_ms, process: None, splits, items, failed }
    }
}

/// What a variant's process (`--worker suite`) prints for the run that started it.
#[derive(Serialize, Deserialize)]
pub(super) struct WorkerOutput<V> {
    pub skipped: Vec<ItemError>,
    pub result: V,
}

/// Runs each variant in a `lookout bench --worker suite` process of its own, one after the other, so that its
/// cold start and peak RSS are its own; their progress goes to this process's stderr.
pub(super) fn in_own_processes<V: DeserializeOwned>(
    ctx: &Context,
    args: &BenchArgs,
    path: &Path,
    variants: &[String],
) -> anyhow::Result<Vec<WorkerOutput<V>>> {
    let suite = path.to_str().with_context(|| format!("suite path {} is not UTF-8", path.display()))?;
    variants
        .iter()
        .map(|variant| {
            let mut command = bench_command(ctx, suite)?;
            if let Some(detector) = &args.detector {
                command.args(["--detector", detector]);
            }
            if let Some(budget) = args.text_budget {
                command.arg("--text-budget").arg(budget.as_secs_f32().to_string());
            }
            if args.no_tiles {
                command.arg("--no-tiles");
            }
            let out = command
                .args(["--variants", variant, "--worker", "suite", "--no-peers", "--out"])
                .arg(&args.out)
                .stderr(Stdio::inherit())
                .output()?;
            if !out.status.success() {
                bail!("variant {variant}: its process failed ({})", out.status);
            }
            serde_json::from_slice(&out.stdout).with_context(|| format!("variant {variant}: its process's output"))
        })
        .collect()
}

/// The one variant a `--worker suite` process runs.
pub(super) fn worker_variant(args: &BenchArgs) -> anyhow::Result<&str> {
    match args.variants.as_slice() {
        [variant] => Ok(variant),
        _ => bail!("a suite worker runs exactly one variant"),
    }
}

/// Prints a worker's result for the process that started it.
pub(super) fn print_worker_output<V: Serialize>(skipped: Vec<ItemError>, result: V) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&WorkerOutput { skipped, result })?);
    Ok(())
}

/// report.json of a suite run, whatever its kind.
#[derive(Serialize)]
pub(super) struct SuiteReport<'a, V: Serialize> {
    pub suite: String,
    pub kind: &'a str,
    pub description: &'a str,
    pub skipped: &'a [ItemError],
    pub variants: &'a [V],
}

/// Checks every entry with `prepare`; the ones it refuses are returned with the reason, named by their `id`.
pub(super) fn prepare_items<T>(
    path: &Path,
    items: &[toml::Value],
    mut prepare: impl FnMut(&toml::Value) -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<T>, Vec<ItemError>)> {
    let (mut ready, mut skipped) = (Vec::new(), Vec::new());
    for (i, value) in items.iter().enumerate() {
        let name =
            value.get("id").and_then(toml::Value::as_str).map_or_else(|| format!("item {}", i + 1), str::to_string);
        match prepare(value) {
            Ok(item) => ready.push(item),
            Err(e) => {
                eprintln!("bench: {name}: {e:#}");
                skipped.push(ItemError { item: name, error: format!("{e:#}") });
            }
        }
    }
    if ready.is_empty() {
        bail!("suite {}: none of its {} items can be run", path.display(), items.len());
    }
    Ok((ready, skipped))
}

/// Checks an item's `split`.
pub(super) fn check_split(split: &str) -> anyhow::Result<()> {
    if !SPLITS.contains(&split) {
        bail!("split `{split}` is neither `in-domain` nor `held-out`");
    }
    Ok(())
}

/// Levenshtein distance: substitutions, insertions and deletions turning `reference` into `hypothesis`.
pub(super) fn edit_distance<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut current = vec![0; hypothesis.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        current[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            current[j + 1] = (previous[j] + usize::from(r != h)).min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[hypothesis.len()]
}

pub(super) fn percent(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// How the report's cold start and peak RSS were measured.
pub(super) const PROCESS_NOTE: &str = "Each variant runs in a process of its own. Cold start: from the process's start to its models loaded (Lookout from `main`, a Python peer from its script's first line, imports included); peak RSS: the process's high-water mark after every item.\n";

/// The report's cold start and peak RSS cells: `cold start ms | peak RSS MiB`.
pub(super) fn process_cells(process: Option<ProcessFigures>) -> String {
    process.map_or("- | -".into(), |p| format!("{:.0} | {:.0}", p.cold_start_ms, p.peak_rss_mib))
}

/// The report's list of items refused before the run and items that failed with one variant.
pub(super) fn not_scored_markdown(skipped: &[ItemError], failed: &[(&str, &ItemError)]) -> String {
    if skipped.is_empty() && failed.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n## Items not scored\n\n");
    for s in skipped {
        md.push_str(&format!("- {}: {}\n", s.item, s.error));
    }
    for (variant, f) in failed {
        md.push_str(&format!("- {} with {variant}: {}\n", f.item, f.error));
    }
    md
}

/// The report's title and machine line.
pub(super) fn suite_heading(suite: &str, conditions: &str, description: &str) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "# lookout bench --suite {suite}\n\n{} ({cores} cores), {conditions}\n\n{description}\n\n",
        super::cpu_name()
    )
}

/// A grouped bar chart of one metric per variant, in-domain beside held-out; `bars` holds (variant, in-domain,
/// held-out) fractions.
pub(super) fn split_chart(title: &str, bars: &[(String, Option<f64>, Option<f64>)]) -> String {
    let (bar, gap, left, top, height) = (28.0, 24.0, 60.0, 30.0, 200.0);
    let max = bars.iter().flat_map(|b| [b.1, b.2]).flatten().fold(0.05_f64, f64::max);
    let width = left + bars.len() as f64 * (2.0 * bar + gap) + 20.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">{title} (blue: in-domain, orange: held-out)</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{:.0}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"4\" y=\"{}\">{}</text>\n<text x=\"4\" y=\"{}\">0%</text>\n",
        top + height + 50.0,
        top + height,
        width - 10.0,
        top + height,
        top + 10.0,
        percent(max),
        top + height
    );
    for (i, (variant, in_domain, held_out)) in bars.iter().enumerate() {
        let x0 = left + gap / 2.0 + i as f64 * (2.0 * bar + gap);
        for (j, (split, value, colour)) in
            [("in-domain", in_domain, "#4477aa"), ("held-out", held_out, "#ee7733")].into_iter().enumerate()
        {
            let Some(value) = *value else { continue };
            let h = height * value / max;
            let x = x0 + j as f64 * bar;
            svg.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{variant} {split}: {}</title></rect>\n",
                top + height - h,
                bar - 2.0,
                percent(value)
            ));
            svg.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text>\n",
                top + height - h - 3.0,
                percent(value)
            ));
        }
        svg.push_str(&format!("<text x=\"{x0:.1}\" y=\"{:.1}\">{variant}</text>\n", top + height + 16.0));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_count_substitutions_insertions_and_deletions() {
        let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(edit_distance(&words("is the door open"), &words("is the door open")), 0);
        assert_eq!(edit_distance(&words("is the door open"), &words("is a door open")), 1);
        assert_eq!(edit_distance(&words("is the door open"), &words("is the door wide open")), 1);
        assert_eq!(edit_distance(&words("is the door open"), &words("door open")), 2);
        assert_eq!(edit_distance::<char>(&[], &['a', 'b']), 2);
    }
}

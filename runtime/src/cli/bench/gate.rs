//! `lookout bench --suite gate`: how many camera frames the scene-change gate sends to the encoders on sequences
//! built from a real camera frame (a still scene with sensor noise, light rising slowly, a person entering) and on
//! the real clip, how late an entering person is analysed, and the CPU a still scene saves per hour at each board
//! profile's frame rate.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lookout_models::vision::image::{load_image, RgbImage};
use serde::Serialize;

use super::{frame_files, median, write_report, BenchArgs};
use crate::board;
use crate::cli::Context;
use crate::scene_change::{with_noise, ChangeGate, GateSettings, Verdict};
use crate::turn::{self, VisionChoice};

/// The still camera: the first frame of the camera suite's clip (a fixed camera over a road crossing).
const BACKGROUND: &str = ".cache/testdata/camera/vtest/f0000.jpg";
/// A later frame of the same camera with a person walking where the first frame's road is empty...
const ENTERING_FRAME: &str = ".cache/testdata/camera/vtest/f0400.jpg";
/// ...in this box (x1, y1, x2, y2), pasted into the still scene as the person who enters.
const ENTERING_BOX: [usize; 4] = [684, 296, 746, 415];
const CLIP_DIR: &str = ".cache/testdata/camera/vtest";
/// Frames of each built sequence, and the frame at which the person enters.
const FRAMES: usize = 300;
const ENTERS_AT: usize = 150;
/// Analysed frames a second the built sequences are timed at (the camera suite's clip is analysed at 2).
const FPS: f64 = 2.0;
/// Sensor noise added to every channel of every built frame, up to this many levels either way.
const NOISE: i32 = 6;

/// Makes frame `i` of a built sequence.
type FrameMaker<'a> = Box<dyn Fn(usize) -> RgbImage + 'a>;

#[derive(Debug, Serialize)]
struct SequenceResult {
    name: &'static str,
    frames: usize,
    analysed: usize,
    analysed_fraction: f64,
    /// For the sequence where a person enters: frames between the entry and its first analysis.
    entry_delay_frames: Option<usize>,
    /// People the detector counts on the first analysed frame after the entry, and on the one before.
    people_before_and_after: Option<(usize, usize)>,
}

#[derive(Debug, Serialize)]
struct BoardSaving {
    board: String,
    fps: u32,
    /// Detector runs a still scene needs per hour without the gate and with it.
    runs_per_hour: (f64, f64),
    /// Detector CPU seconds per hour saved on a still scene, at this machine's detector time.
    cpu_s_saved_per_hour: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    settings: String,
    gate_ms_p50: f64,
    detector_ms_p50: f64,
    sequences: Vec<SequenceResult>,
    boards: Vec<BoardSaving>,
}

/// `base` with `source`'s pixels in `area` (both frames of the same size).
fn pasted(base: &RgbImage, source: &RgbImage, area: [usize; 4]) -> RgbImage {
    let mut out = base.clone();
    let row_bytes = base.width as usize * 3;
    for y in area[1]..area[3] {
        let span = y * row_bytes + area[0] * 3..y * row_bytes + area[2] * 3;
        out.data[span.clone()].copy_from_slice(&source.data[span]);
    }
    out
}

fn load(path: &Path) -> anyhow::Result<RgbImage> {
    load_image(path).with_context(|| format!("{} (run models/prepare/prepare.sh)", path.display()))
}

pub(super) fn run(ctx: &Context, args: &BenchArgs) -> anyhow::Result<()> {
    let background = load(Path::new(BACKGROUND))?;
    let entering = load(Path::new(ENTERING_FRAME))?;
    anyhow::ensure!(
        (background.width, background.height) == (entering.width, entering.height),
        "{BACKGROUND} and {ENTERING_FRAME} differ in size"
    );
    let bundle = ctx.open_bundle()?;
    let models = turn::load_vision(&bundle, &VisionChoice::new(args.detector.as_deref(), false))?;
    let mut session = models.session()?;
    let settings = GateSettings::default();
    let mut gate_ms = Vec::new();
    let mut detector_ms = Vec::new();
    let mut people = |image: &RgbImage, detector_ms: &mut Vec<f64>| -> anyhow::Result<usize> {
        let started = Instant::now();
        let found = session.detect(image)?;
        detector_ms.push(started.elapsed().as_secs_f64() * 1e3);
        Ok(found.iter().filter(|d| d.label == "person").count())
    };

    let person = pasted(&background, &entering, ENTERING_BOX);
    let built: [(&'static str, FrameMaker); 3] = [
        ("still scene, sensor noise ±6", Box::new(|i| with_noise(&background, NOISE, 0, i as u64))),
        (
            "light rising 30 levels over 150 s, noise ±6",
            Box::new(|i| with_noise(&background, NOISE, (i / 10) as i32, i as u64)),
        ),
        (
            "a person enters at frame 150 and stays, noise ±6",
            Box::new(|i| with_noise(if i < ENTERS_AT { &background } else { &person }, NOISE, 0, i as u64)),
        ),
    ];
    let mut sequences = Vec::new();
    for (name, frame) in &built {
        let mut gate = ChangeGate::new(settings);
        let mut analysed = Vec::new();
        for i in 0..FRAMES {
            let image = frame(i);
            let started = Instant::now();
            let verdict = gate.judge(&image, Duration::from_secs_f64(i as f64 / FPS));
            gate_ms.push(started.elapsed().as_secs_f64() * 1e3);
            if verdict == Verdict::Analyse {
                analysed.push(i);
            }
        }
        let enters = name.starts_with("a person enters");
        let (entry_delay_frames, people_before_and_after) = match analysed.iter().find(|&&i| i >= ENTERS_AT) {
            Some(&first) if enters => {
                let before = analysed.iter().rev().find(|&&i| i < ENTERS_AT).copied().unwrap_or(0);
                let counts = (people(&frame(before), &mut detector_ms)?, people(&frame(first), &mut detector_ms)?);
                (Some(first - ENTERS_AT), Some(counts))
            }
            _ => (None, None),
        };
        sequences.push(SequenceResult {
            name,
            frames: FRAMES,
            analysed: analysed.len(),
            analysed_fraction: analysed.len() as f64 / FRAMES as f64,
            entry_delay_frames,
            people_before_and_after,
        });
    }

    let clip = frame_files(Path::new(CLIP_DIR)).context("the camera clip (run models/prepare/prepare.sh)")?;
    let mut gate = ChangeGate::new(settings);
    let mut analysed = 0;
    for (i, path) in clip.iter().enumerate() {
        let image = load(path)?;
        if gate.judge(&image, Duration::from_secs_f64(i as f64 / FPS)) == Verdict::Analyse {
            analysed += 1;
            people(&image, &mut detector_ms)?;
        }
    }
    sequences.push(SequenceResult {
        name: "the real clip (people walking all the time), 2 frames a second",
        frames: clip.len(),
        analysed,
        analysed_fraction: analysed as f64 / clip.len().max(1) as f64,
        entry_delay_frames: None,
        people_before_and_after: None,
    });

    let (gate_ms_p50, detector_ms_p50) = (median(gate_ms.into_iter()), median(detector_ms.into_iter()));
    // A still scene is analysed at the gate's maximum interval whatever the frame rate: the still sequence's
    // analyses a second of footage, at most every frame.
    let still_per_hour = sequences[0].analysed as f64 / (FRAMES as f64 / FPS) * 3600.0;
    let boards = board::BUILT_IN
        .iter()
        .filter_map(|(name, text)| {
            let fps = text.parse::<toml::Table>().ok()?.get("camera")?.get("fps")?.as_integer()? as u32;
            let runs = f64::from(fps) * 3600.0;
            let gated = still_per_hour.min(runs);
            Some(BoardSaving {
                board: name.to_string(),
                fps,
                runs_per_hour: (runs, gated),
                cpu_s_saved_per_hour: ((runs - gated) * detector_ms_p50 - runs * gate_ms_p50) / 1e3,
            })
        })
        .collect();
    let report = Report { settings: format!("{settings:?}"), gate_ms_p50, detector_ms_p50, sequences, boards };
    write_report(&args.out, &markdown(&report), &report)
}

fn markdown(r: &Report) -> String {
    let mut md = format!(
        "# lookout bench --suite gate\n\nScene-change gate at its defaults ({}); frames built from {BACKGROUND} at \
         {FPS} frames a second. Gate {:.2} ms a frame (median), detector {:.0} ms a run (median, this machine).\n\n",
        r.settings, r.gate_ms_p50, r.detector_ms_p50
    );
    md.push_str("| sequence | frames | analysed | share analysed | entry analysed after | people before → after |\n|---|---:|---:|---:|---:|---|\n");
    for s in &r.sequences {
        let delay = s.entry_delay_frames.map_or("-".to_string(), |d| format!("{d} frames"));
        let people = s.people_before_and_after.map_or("-".to_string(), |(b, a)| format!("{b} → {a}"));
        md.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {delay} | {people} |\n",
            s.name,
            s.frames,
            s.analysed,
            s.analysed_fraction * 100.0
        ));
    }
    md.push_str("\nA still scene at each board profile's frame rate, for an hour:\n\n| board | fps | detector runs without / with the gate | detector CPU saved |\n|---|---:|---:|---:|\n");
    for b in &r.boards {
        md.push_str(&format!(
            "| {} | {} | {:.0} / {:.0} | {:.0} s |\n",
            b.board, b.fps, b.runs_per_hour.0, b.runs_per_hour.1, b.cpu_s_saved_per_hour
        ));
    }
    md.push_str("\nThe CPU saved is at this machine's detector time; a board's detector is several times slower, and saves as many times more.\n");
    md
}

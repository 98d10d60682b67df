//! `lookout describe IMAGE`: the objects, their counts, the text and the scene labels of a photo.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use lookout_models::vision::detections::{position, Detection};
use lookout_models::vision::image::load_image;
use lookout_models::vision::{Scene, SceneLabel};
use serde::Serialize;

use super::{print_json, Context};
use crate::turn::{self, VisionChoice};

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// JPEG or PNG file.
    image: PathBuf,
    /// Print a JSON object with objects, counts, text and timings.
    #[arg(long)]
    json: bool,
    /// Skip reading text (faster).
    #[arg(long)]
    no_ocr: bool,
    /// Seconds reading the image's text may take before the remaining lines are left unread (default 4).
    #[arg(long, value_name = "SECONDS", value_parser = super::parse_text_budget)]
    text_budget: Option<std::time::Duration>,
    /// Look at a large image whole only, not in tiles too: faster, but far people and vehicles are missed (tiles
    /// cost one more detector run each: 8 for 1920x1080, 6 for 1280x720, none for an image under 960 pixels long
    /// with CenterNet, 780 with NanoDet).
    #[arg(long)]
    no_tiles: bool,
    /// Skip the scene classifier (the ImageNet labels of the whole frame).
    #[arg(long)]
    no_scene: bool,
    /// Object detector variant from the bundle (nanodet, centernet); default: the bundle's first.
    #[arg(long)]
    detector: Option<String>,
    /// Minimum detection score (default: the bundle's).
    #[arg(long)]
    threshold: Option<f32>,
}

#[derive(Serialize)]
struct Output<'s> {
    objects: Vec<ObjectOut<'s>>,
    counts: &'s std::collections::BTreeMap<String, usize>,
    text: Vec<TextOut<'s>>,
    scene_labels: &'s [SceneLabel],
    width: u32,
    height: u32,
    timings_ms: std::collections::BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct ObjectOut<'s> {
    label: &'s str,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    position: String,
}

#[derive(Serialize)]
struct TextOut<'s> {
    text: &'s str,
    score: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

pub fn run(ctx: &Context, args: DescribeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let image = load_image(&args.image).with_context(|| args.image.display().to_string())?;
    let decode_ms = started.elapsed().as_secs_f64() * 1e3;

    let started = Instant::now();
    let bundle = ctx.open_bundle()?;
    let mut models = turn::load_vision(
        &bundle,
        &VisionChoice::new(args.detector.as_deref(), !args.no_ocr)
            .with_text_budget(args.text_budget)
            .with_tiles(!args.no_tiles),
    )?;
    if !args.no_scene {
        models = models.with_scene_classifier(&bundle)?;
    }
    if let Some(t) = args.threshold {
        anyhow::ensure!((0.0..=1.0).contains(&t), "--threshold must be between 0 and 1, got {t}");
        models.set_score_threshold(t);
    }
    let mut session = models.session()?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;

    let mut scene: Scene = session.describe(&image)?;
    scene.timings_ms.insert("decode".into(), decode_ms);
    scene.timings_ms.insert("load".into(), load_ms);
    let objects: Vec<ObjectOut> = scene
        .objects
        .iter()
        .map(|d| ObjectOut { label: &d.label, score: d.score, bbox: d.bbox, position: position_words(&scene, d) })
        .collect();
    let text: Vec<TextOut> =
        scene.text.iter().map(|t| TextOut { text: &t.text, score: t.score, bbox: t.bbox }).collect();
    if args.json {
        return print_json(&Output {
            objects,
            counts: &scene.counts,
            text,
            scene_labels: &scene.scene_labels,
            width: scene.width,
            height: scene.height,
            timings_ms: scene.timings_ms.clone(),
        });
    }
    for o in &objects {
        let [x1, y1, x2, y2] = o.bbox;
        println!("{} {:.2} [{x1:.0},{y1:.0},{x2:.0},{y2:.0}] {}", o.label, o.score, o.position);
    }
    for t in &text {
        let [x1, y1, x2, y2] = t.bbox;
        println!("text {:?} {:.2} [{x1:.0},{y1:.0},{x2:.0},{y2:.0}]", t.text, t.score);
    }
    for s in &scene.scene_labels {
        println!("scene {:?} {:.2}", s.label, s.score);
    }
    if objects.is_empty() && text.is_empty() && scene.scene_labels.is_empty() {
        println!("nothing detected");
    }
    Ok(())
}

/// "left", "center near", ... for one object.
fn position_words(scene: &Scene, object: &Detection) -> String {
    let place = position(object.bbox, scene.width, scene.height);
    match place.distance {
        Some(distance) => format!("{} {}", place.horizontal.as_str(), distance.as_str()),
        None => place.horizontal.as_str().to_string(),
    }
}

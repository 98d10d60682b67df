//! The vision encoders through tract: the COCO-80 object detector, PP-OCR text detection and recognition, and the
//! ImageNet scene classifier, run on an RGB image with preallocated input tensors, giving a `Scene`.

use std::time::{Duration, Instant};

use crate::bundle::{Bundle, Component};
use crate::engine::{self, DatumType, Dim, Graph, GraphSpec, GraphState};
use crate::error::{ModelError, Result};
use crate::vision::deskew::{level_crop, slant};
use crate::vision::detections::{box_area, filter_detections, Detection, DetectionFilter, LabelFilter, LabelGroup};
use crate::vision::image::RgbImage;
use crate::vision::letterbox::{grid_tiles, letterbox_into, text_line_into, Layout, Normalization, Padding, PixelRect};
use crate::vision::ocr_post::{
    ctc_greedy_decode_with_steps, insert_word_spaces, sort_reading_order, word_gaps, CtcDictionary, DbParams,
    DbPostprocessor, MapToSource, TextBox,
};
use crate::vision::scene::{Scene, SceneLabel, TextLine};

/// Where the time went, in milliseconds: `detect` fills the detector's stages, `read_text` the OCR stages, and
/// `describe` clears them all first, so after it a stage that did not run reads zero.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Letterboxing the image into the detector's input.
    pub detect_preprocess: f64,
    /// The detector graph.
    pub detect_run: f64,
    /// Thresholds, label lookup and NMS.
    pub detect_post: f64,
    /// Letterboxing the image into the text detector's input.
    pub ocr_det_preprocess: f64,
    /// The text detector graph.
    pub ocr_det_run: f64,
    /// DB post-processing into boxes, and reading order.
    pub ocr_det_post: f64,
    /// Every text line: crop and resize, recognizer graph, CTC decoding.
    pub ocr_rec: f64,
    /// The recognizer graph alone, summed over its runs.
    pub ocr_rec_run: f64,
    /// Text boxes handed to the recognizer.
    pub ocr_rec_lines: usize,
    /// Runs of the recognizer: one a line, and more for a line wider than its input, read in windows.
    pub ocr_rec_runs: usize,
    /// The scene classifier: letterboxing, graph and top classes.
    pub classify: f64,
}

/// One preprocessed model input as the engine last received it.
#[derive(Debug, Clone, Copy)]
pub struct InputTensor<'s> {
    /// The manifest role of the model it feeds.
    pub role: &'static str,
    pub shape: [usize; 4],
    pub data: &'s [f32],
}

fn ms_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// Text lines read with less confidence than this are dropped.
const MIN_TEXT_SCORE: f32 = 0.5;

fn read_text_file(bundle: &Bundle, component: &Component) -> Result<String> {
    let path = bundle.checked_path(component)?;
    std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path, source })
}

/// Normalization and layout declared by a component's manifest parameters.
fn input_format(c: &Component) -> Result<(Normalization, Layout)> {
    let scale = 1.0 / c.param_f64("pixel_scale")? as f32;
    let (mean, std) = match (c.params.contains_key("mean"), c.params.contains_key("std")) {
        (true, true) => (c.param_rgb("mean")?, c.param_rgb("std")?),
        _ => ([0.0; 3], [1.0; 3]),
    };
    let bgr = match c.param_str("channel_order")? {
        "rgb" => false,
        "bgr" => true,
        _ => return Err(ModelError::BadParam { component: c.name.clone(), param: "channel_order".into() }),
    };
    let layout = match c.param_str("layout")? {
        "nhwc" => Layout::Nhwc,
        "nchw" => Layout::Nchw,
        _ => return Err(ModelError::BadParam { component: c.name.clone(), param: "layout".into() }),
    };
    Ok((Normalization { scale, mean, std, bgr }, layout))
}

fn image_dims(layout: Layout, height: usize, width: usize) -> [Dim; 4] {
    match layout {
        Layout::Nhwc => [Dim::Fixed(1), Dim::Fixed(height), Dim::Fixed(width), Dim::Fixed(3)],
        Layout::Nchw => [Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(height), Dim::Fixed(width)],
    }
}

/// How an image graph is declared: one RGB image of the component's `input_size` square (or `height` × `width`) in
/// its layout.
pub fn image_graph_spec(c: &Component) -> Result<GraphSpec> {
    let (_, layout) = input_format(c)?;
    let (height, width) = match c.params.contains_key("input_size") {
        true => (c.param_usize("input_size")?, c.param_usize("input_size")?),
        false => (c.param_usize("height")?, c.param_usize("width")?),
    };
    Ok(GraphSpec::new(vec![(DatumType::F32, image_dims(layout, height, width).to_vec())]))
}

fn load_image_graph(bundle: &Bundle, c: &Component) -> Result<Graph> {
    engine::load_component(bundle, c, &image_graph_spec(c)?)
}

/// How long reading the text of one image may take by default: a page of it on a slow board is read in order until
/// then.
pub const TEXT_READ_BUDGET: Duration = Duration::from_secs(4);

/// Widest line read at its own aspect ratio, in columns at the recognizer's height (about 42 times the height);
/// a longer line is squeezed into it.
pub const MAX_LINE_WIDTH: usize = 2048;
/// Columns two neighbouring windows of a long line share; each keeps the half nearer its own centre.
const WINDOW_OVERLAP: usize = 64;

/// One recognizer window over a line: it starts at column `start`, and its steps for columns `keep_from..keep_to`
/// are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineWindow {
    pub start: usize,
    pub keep_from: usize,
    pub keep_to: usize,
}

/// The windows of `window` columns that cover a line of `width` columns, neighbours overlapping by `overlap` (a
/// multiple of 8, the recognizer's columns per step) and meeting in the middle of it; one window when it fits.
pub fn line_windows(width: usize, window: usize, overlap: usize) -> Vec<LineWindow> {
    if width <= window {
        return vec![LineWindow { start: 0, keep_from: 0, keep_to: window }];
    }
    let stride = window - overlap;
    let count = (width - overlap).div_ceil(stride);
    let starts: Vec<usize> = (0..count).map(|i| i * stride).collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| LineWindow {
            start,
            keep_from: if i == 0 { 0 } else { start + overlap / 2 },
            keep_to: if i + 1 == count { start + window } else { start + window - overlap / 2 },
        })
        .collect()
}

/// Copies the `window` columns from `start` of a line (row stride `stride`, zero beyond its end) into `out`.
fn copy_window(
    line: &[f32],
    stride: usize,
    start: usize,
    height: usize,
    window: usize,
    layout: Layout,
    out: &mut [f32],
) {
    let available = stride.saturating_sub(start).min(window);
    match layout {
        Layout::Nchw => {
            for (row, dst) in out.chunks_exact_mut(window).enumerate().take(3 * height) {
                let src = &line[row * stride + start..row * stride + start + available];
                dst[..available].copy_from_slice(src);
                dst[available..].fill(0.0);
            }
        }
        Layout::Nhwc => {
            for (y, dst) in out.chunks_exact_mut(3 * window).enumerate().take(height) {
                let src = &line[3 * (y * stride + start)..3 * (y * stride + start + available)];
                dst[..3 * available].copy_from_slice(src);
                dst[3 * available..].fill(0.0);
            }
        }
    }
}

fn shape_of(dims: &[Dim; 4]) -> [usize; 4] {
    dims.map(|d| match d {
        Dim::Fixed(n) => n,
        Dim::Symbol(_) | Dim::Expr(_) => 0,
    })
}

/// Lookout's default filter for `label`, with its group's `[min_score, threshold]` as the detector's manifest sets
/// them for its own scores, when it does.
fn label_filter(c: &Component, label: &str) -> Result<LabelFilter> {
    let default = LabelFilter::default_for(label);
    let key = LabelGroup::of(label).param();
    if !c.params.contains_key(key) {
        return Ok(default);
    }
    let bad = || ModelError::BadParam { component: c.name.clone(), param: format!("{key} ([min_score, threshold])") };
    let [min_score, threshold] = c.param_numbers::<2>(key).map_err(|_| bad())?;
    if ![min_score, threshold].iter().all(|v| (0.0..=1.0).contains(v)) {
        return Err(bad());
    }
    Ok(LabelFilter { min_score, threshold, moving_min_score: default.moving_min_score.min(min_score), ..default })
}

/// The COCO object detector: letterboxed RGB in, boxes with scores and classes out.
pub struct ObjectDetector {
    graph: Graph,
    size: usize,
    normalization: Normalization,
    layout: Layout,
    labels: Vec<String>,
    pub filter: DetectionFilter,
    /// Per label id: what a detection of that label needs beyond `filter`'s score threshold.
    label_filters: Vec<LabelFilter>,
    /// Per label id: whether tiles look for it (people and vehicles, `LabelGroup::is_tiled`).
    tiled_labels: Vec<bool>,
    /// Whether a large frame's tiles are looked at too (`grid_tiles`); off unless set.
    tiles: bool,
}

impl ObjectDetector {
    /// The components `load` reads for `variant`: the detector and its labels.
    pub fn components<'b>(bundle: &'b Bundle, variant: Option<&str>) -> Result<[&'b Component; 2]> {
        Ok([bundle.component("object-detector", variant)?, bundle.component("object-labels", None)?])
    }

    /// The bundle's detector of this variant (`nanodet`, `centernet`), or its first listed.
    pub fn load(bundle: &Bundle, variant: Option<&str>) -> Result<ObjectDetector> {
        let [c, labels_c] = Self::components(bundle, variant)?;
        let size = c.param_usize("input_size")?;
        let (normalization, layout) = input_format(c)?;
        let labels: Vec<String> = read_text_file(bundle, labels_c)?.lines().map(str::to_string).collect();
        let filter = DetectionFilter {
            score_threshold: c.param_f64("score_threshold")? as f32,
            iou_threshold: c.param_f64("iou_threshold")? as f32,
            class_agnostic: match c.params.get("nms").map(|v| v.as_str()) {
                None | Some(Some("class-agnostic")) => true,
                Some(Some("per-class")) => false,
                Some(_) => {
                    return Err(ModelError::BadParam {
                        component: c.name.clone(),
                        param: "nms (class-agnostic or per-class)".into(),
                    })
                }
            },
            max_detections: c.param_usize("max_detections")?,
        };
        let graph = load_image_graph(bundle, c)?;
        let label_filters = labels.iter().map(|l| label_filter(c, l)).collect::<Result<_>>()?;
        let tiled_labels = labels.iter().map(|l| LabelGroup::of(l).is_tiled()).collect();
        Ok(ObjectDetector {
            graph,
            size,
            normalization,
            layout,
            labels,
            filter,
            label_filters,
            tiled_labels,
            tiles: false,
        })
    }

    /// Every label the detector can report, by class id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// What a detection of each label needs, by class id.
    pub fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    /// Whether large frames are looked at in tiles too (`grid_tiles`): far people and vehicles are found more often,
    /// for one more run of the detector per tile (6 for a 1280x720 frame, 8 for 1920x1080).
    pub fn set_tiles(&mut self, tiles: bool) {
        self.tiles = tiles;
    }

    /// Replaces one label's filter; `None` when the detector has no such label.
    pub fn set_label_filter(&mut self, label: &str, filter: LabelFilter) -> Option<()> {
        let id = self.labels.iter().position(|l| l == label)?;
        self.label_filters[id] = filter;
        Some(())
    }
}

/// PP-OCR: a text-probability map over the letterboxed image, then each text box read by the recognizer.
pub struct TextReader {
    detector: Graph,
    recognizer: Graph,
    det_size: usize,
    det_format: (Normalization, Layout),
    rec_height: usize,
    rec_width: usize,
    rec_format: (Normalization, Layout),
    db: DbParams,
    dictionary: CtcDictionary,
    /// How long reading one image's text may take; at least one line is always read.
    budget: Duration,
}

impl TextReader {
    /// The components `load` reads: the text detector, the recognizer and its dictionary.
    pub fn components(bundle: &Bundle) -> Result<[&Component; 3]> {
        Ok([
            bundle.component("ocr-detector", None)?,
            bundle.component("ocr-recognizer", None)?,
            bundle.component("ocr-dictionary", None)?,
        ])
    }

    pub fn load(bundle: &Bundle) -> Result<TextReader> {
        let [det, rec, dict] = Self::components(bundle)?;
        let det_size = det.param_usize("input_size")?;
        let det_format = input_format(det)?;
        let (rec_height, rec_width) = (rec.param_usize("height")?, rec.param_usize("width")?);
        let rec_format = input_format(rec)?;
        let db = DbParams {
            threshold: det.param_f64("db_threshold")? as f32,
            box_threshold: det.param_f64("box_threshold")? as f32,
            unclip_ratio: det.param_f64("unclip_ratio")? as f32,
            ..DbParams::default()
        };
        let keys = read_text_file(bundle, dict)?;
        // The file lists every class in output order, the blank first under a placeholder name.
        let blank = dict.param_str("blank_token")?;
        let symbols = keys
            .strip_prefix(blank)
            .and_then(|rest| rest.strip_prefix('\n'))
            .ok_or_else(|| ModelError::BadParam { component: dict.name.clone(), param: "blank_token".into() })?;
        let dictionary = CtcDictionary::from_lines(symbols, false);
        let (detector, recognizer) = (load_image_graph(bundle, det)?, load_image_graph(bundle, rec)?);
        Ok(TextReader {
            detector,
            recognizer,
            det_size,
            det_format,
            rec_height,
            rec_width,
            rec_format,
            db,
            dictionary,
            budget: TEXT_READ_BUDGET,
        })
    }

    /// Sets how long reading one image's text may take (default [`TEXT_READ_BUDGET`]): longer for pages of text
    /// on a slow board, or under an emulator.
    pub fn set_budget(&mut self, budget: Duration) {
        self.budget = budget;
    }
}

/// The ImageNet scene classifier: the whole letterboxed frame in, class probabilities out.
pub struct SceneClassifier {
    graph: Graph,
    size: usize,
    normalization: Normalization,
    layout: Layout,
    pad_pixel: u8,
    labels: Vec<String>,
    top_k: usize,
    min_score: f32,
}

impl SceneClassifier {
    /// The bundle's classifier; `None` for a bundle without one (made before it was added).
    pub fn load(bundle: &Bundle) -> Result<Option<SceneClassifier>> {
        let Ok(c) = bundle.component("scene-classifier", None) else { return Ok(None) };
        let size = c.param_usize("input_size")?;
        let (normalization, layout) = input_format(c)?;
        let pad_pixel = u8::try_from(c.param_usize("pad_pixel")?)
            .map_err(|_| ModelError::BadParam { component: c.name.clone(), param: "pad_pixel".into() })?;
        let labels: Vec<String> =
            read_text_file(bundle, bundle.component("scene-labels", None)?)?.lines().map(str::to_string).collect();
        let (top_k, min_score) = (c.param_usize("top_k")?, c.param_f64("min_score")? as f32);
        let graph = load_image_graph(bundle, c)?;
        Ok(Some(SceneClassifier { graph, size, normalization, layout, pad_pixel, labels, top_k, min_score }))
    }
}

/// Every vision encoder the bundle offers, loaded once.
pub struct VisionModels {
    pub detector: ObjectDetector,
    pub reader: Option<TextReader>,
    pub classifier: Option<SceneClassifier>,
}

impl VisionModels {
    /// What the loaded graphs (detector, then the OCR models and the classifier when loaded) run on this CPU.
    pub fn kernels(&self) -> Vec<engine::KernelReport> {
        let mut reports = vec![self.detector.graph.kernels()];
        if let Some(reader) = &self.reader {
            reports.extend([reader.detector.kernels(), reader.recognizer.kernels()]);
        }
        reports.extend(self.classifier.iter().map(|c| c.graph.kernels()));
        reports
    }

    /// The components `load` reads: the detector's, and the OCR models' when `with_text`.
    pub fn components<'b>(bundle: &'b Bundle, detector: Option<&str>, with_text: bool) -> Result<Vec<&'b Component>> {
        let mut components = ObjectDetector::components(bundle, detector)?.to_vec();
        if with_text {
            components.extend(TextReader::components(bundle)?);
        }
        Ok(components)
    }

    /// Loads the detector of this variant (default: the bundle's first) and, when `with_text`, the OCR models.
    pub fn load(bundle: &Bundle, detector: Option<&str>, with_text: bool) -> Result<VisionModels> {
        let detector = ObjectDetector::load(bundle, detector)?;
        let reader = if with_text { Some(TextReader::load(bundle)?) } else { None };
        Ok(VisionModels { detector, reader, classifier: None })
    }

    /// Also loads the bundle's scene classifier, when it has one.
    pub fn with_scene_classifier(mut self, bundle: &Bundle) -> Result<VisionModels> {
        self.classifier = SceneClassifier::load(bundle)?;
        Ok(self)
    }

    pub fn set_score_threshold(&mut self, threshold: f32) {
        self.detector.filter.score_threshold = threshold;
    }

    /// Engine states and input tensors for one image stream, allocated once.
    pub fn session(&self) -> Result<VisionSession<'_>> {
        let d = &self.detector;
        let ocr = match &self.reader {
            Some(r) => Some(OcrSession {
                detector: r.detector.new_state()?,
                recognizer: r.recognizer.new_state()?,
                det_input: vec![0.0; 3 * r.det_size * r.det_size],
                rec_input: vec![0.0; 3 * r.rec_height * r.rec_width],
                line_input: vec![0.0; 3 * r.rec_height * MAX_LINE_WIDTH.max(r.rec_width)],
                line_probabilities: Vec::new(),
                level: RgbImage::new(1, 1),
                post: DbPostprocessor::new(r.db),
                boxes: Vec::new(),
                char_steps: Vec::new(),
                gaps: Vec::new(),
            }),
            None => None,
        };
        let classifier = match &self.classifier {
            Some(c) => Some((c.graph.new_state()?, vec![0.0; 3 * c.size * c.size])),
            None => None,
        };
        Ok(VisionSession {
            models: self,
            detector: d.graph.new_state()?,
            det_input: vec![0.0; 3 * d.size * d.size],
            detections: Vec::new(),
            ocr,
            classifier,
            timings: StageTimings::default(),
            text_budget: self.reader.as_ref().map_or(TEXT_READ_BUDGET, |r| r.budget),
            text_cut: false,
            moving_candidates: false,
        })
    }
}

struct OcrSession {
    detector: GraphState,
    recognizer: GraphState,
    det_input: Vec<f32>,
    rec_input: Vec<f32>,
    /// A line wider than the recognizer's input, at its own aspect ratio (row stride [`MAX_LINE_WIDTH`]).
    line_input: Vec<f32>,
    /// The recognizer's step probabilities of such a line, its windows' joined.
    line_probabilities: Vec<f32>,
    /// A slanted line's crop, sheared level.
    level: RgbImage,
    post: DbPostprocessor,
    boxes: Vec<TextBox>,
    char_steps: Vec<usize>,
    gaps: Vec<(usize, usize)>,
}

/// One image stream's engine states and buffers.
pub struct VisionSession<'m> {
    models: &'m VisionModels,
    detector: GraphState,
    det_input: Vec<f32>,
    detections: Vec<Detection>,
    ocr: Option<OcrSession>,
    /// The scene classifier's engine state and input tensor.
    classifier: Option<(GraphState, Vec<f32>)>,
    timings: StageTimings,
    /// How long reading the text of one image may take; lines past it are left unread.
    text_budget: Duration,
    /// Whether the last image's text was left partly unread for the budget.
    text_cut: bool,
    /// Whether detections that pass their label's filter only as moving candidates are returned too; off unless set.
    moving_candidates: bool,
}

/// Whether box `next`, which reading order puts right after the line, continues it: its vertical centre lies
/// within the line's height and it starts to the right.
fn same_line(line: [f32; 4], next: [f32; 4]) -> bool {
    let centre = (next[1] + next[3]) / 2.0;
    line[1] <= centre && centre <= line[3] && next[0] >= line[0]
}

/// Joins boxes of one line that overlap once unclipped: read apart, each would carry strokes of the other
/// ("Platform 19" read as "Platform" and "19" with the "m"'s last stroke as a "1").
fn merge_overlapping_words(boxes: &mut Vec<TextBox>) {
    let mut kept = 0;
    for i in 0..boxes.len() {
        let next = boxes[i];
        if kept > 0 && same_line(boxes[kept - 1].bbox, next.bbox) && next.bbox[0] < boxes[kept - 1].bbox[2] {
            let line = &mut boxes[kept - 1];
            line.bbox = union(line.bbox, next.bbox);
            line.score = line.score.min(next.score);
        } else {
            boxes[kept] = next;
            kept += 1;
        }
    }
    boxes.truncate(kept);
}

fn union(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]
}

/// Whether `bbox`, found in `tile`, reaches one of the tile's sides that lies inside the image (within 1% of the
/// tile's side): the object goes on beyond the tile.
fn cut_by_tile(bbox: [f32; 4], tile: PixelRect, image: &RgbImage) -> bool {
    let margin = tile.width.min(tile.height) as f32 * 0.01;
    let (right, bottom) = (tile.x + tile.width, tile.y + tile.height);
    (tile.x > 0 && bbox[0] <= tile.x as f32 + margin)
        || (tile.y > 0 && bbox[1] <= tile.y as f32 + margin)
        || (right < image.width && bbox[2] >= right as f32 - margin)
        || (bottom < image.height && bbox[3] >= bottom as f32 - margin)
}

fn resize_failed(component: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::run(component, format!("preprocessing: {e}"))
}

impl VisionSession<'_> {
    /// Stage timings of the latest runs.
    pub fn timings(&self) -> &StageTimings {
        &self.timings
    }

    /// The input tensors of the latest runs, as the engine received them: the detector's, the text detector's and
    /// the last text line's; a model that has not run yet is left out.
    pub fn last_inputs(&self) -> Vec<InputTensor<'_>> {
        let d = &self.models.detector;
        let mut inputs = Vec::new();
        if self.timings.detect_run > 0.0 {
            inputs.push(InputTensor {
                role: "object-detector",
                shape: shape_of(&image_dims(d.layout, d.size, d.size)),
                data: &self.det_input,
            });
        }
        if let (Some(ocr), Some(r)) = (self.ocr.as_ref(), self.models.reader.as_ref()) {
            if self.timings.ocr_det_run > 0.0 {
                let shape = shape_of(&image_dims(r.det_format.1, r.det_size, r.det_size));
                inputs.push(InputTensor { role: "ocr-detector", shape, data: &ocr.det_input });
            }
            if self.timings.ocr_rec_lines > 0 {
                let shape = shape_of(&image_dims(r.rec_format.1, r.rec_height, r.rec_width));
                inputs.push(InputTensor { role: "ocr-recognizer", shape, data: &ocr.rec_input });
            }
        }
        inputs
    }

    /// Objects (and text and scene labels, when those models are loaded) in one image.
    pub fn describe(&mut self, image: &RgbImage) -> Result<Scene> {
        self.timings = StageTimings::default();
        let started = Instant::now();
        let objects = self.detect(image)?;
        let detect_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let text = self.read_text(image)?;
        let ocr_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut scene = Scene::new(image.width, image.height, objects, text);
        scene.text_cut = self.text_cut;
        scene.scene_labels = self.classify(image)?;
        scene.timings_ms.insert("detect".into(), detect_ms);
        if self.ocr.is_some() {
            scene.timings_ms.insert("ocr".into(), ocr_ms);
        }
        if self.classifier.is_some() {
            scene.timings_ms.insert("classify".into(), self.timings.classify);
        }
        Ok(scene)
    }

    /// The scene classifier's top classes for the whole frame, most likely first (ties to the lower class), at or
    /// above its minimum score; empty when it is not loaded.
    pub fn classify(&mut self, image: &RgbImage) -> Result<Vec<SceneLabel>> {
        let (Some((state, input)), Some(c)) = (self.classifier.as_mut(), self.models.classifier.as_ref()) else {
            return Ok(Vec::new());
        };
        let name = c.graph.component();
        let started = Instant::now();
        letterbox_into(
            image,
            PixelRect::whole(image),
            c.size,
            Padding::Pixel(c.pad_pixel),
            &c.normalization,
            c.layout,
            input,
        )
        .map_err(|e| resize_failed(name, e))?;
        let outputs = state
            .run([engine::tensor(&shape_of(&image_dims(c.layout, c.size, c.size)), input)?].into_iter().collect())?;
        let probabilities =
            engine::f32_slice(name, outputs.first().ok_or_else(|| ModelError::run(name, "no output"))?)?;
        if probabilities.len() != c.labels.len() {
            return Err(ModelError::run(
                name,
                format!("{} probabilities for {} labels", probabilities.len(), c.labels.len()),
            ));
        }
        let mut labels: Vec<SceneLabel> = Vec::with_capacity(c.top_k);
        let mut taken: Vec<usize> = Vec::with_capacity(c.top_k);
        while taken.len() < c.top_k {
            let best =
                (0..probabilities.len()).filter(|i| !taken.contains(i)).fold(
                    None,
                    |best: Option<usize>, i| match best {
                        Some(b) if probabilities[b] >= probabilities[i] => Some(b),
                        _ => Some(i),
                    },
                );
            let Some(best) = best.filter(|&b| probabilities[b] >= c.min_score) else { break };
            taken.push(best);
            labels.push(SceneLabel { label: c.labels[best].clone(), score: probabilities[best] });
        }
        self.timings.classify = ms_since(started);
        Ok(labels)
    }

    /// Detections above the score threshold after per-class NMS, in source-image pixels. With tiles on
    /// ([`ObjectDetector::set_tiles`]) a large frame's tiles are looked at too, and the people and vehicles they
    /// find join the whole frame's detections before the suppression.
    pub fn detect(&mut self, image: &RgbImage) -> Result<Vec<Detection>> {
        let d = &self.models.detector;
        self.detections.clear();
        self.timings.detect_preprocess = 0.0;
        self.timings.detect_run = 0.0;
        let tiles = grid_tiles(image.width, image.height, d.size).filter(|_| d.tiles);
        for region in std::iter::once(PixelRect::whole(image)).chain(tiles) {
            self.detect_region(image, region)?;
        }
        let started = Instant::now();
        filter_detections(&mut self.detections, &self.models.detector.filter);
        self.timings.detect_post = ms_since(started);
        Ok(self.detections.clone())
    }

    /// Runs the detector on one region of the image (the whole of it, or a tile) and adds what passes the label
    /// filters to `self.detections`; from a tile, not what it cuts (the frame or the next tile sees that whole).
    fn detect_region(&mut self, image: &RgbImage, region: PixelRect) -> Result<()> {
        let d = &self.models.detector;
        let name = d.graph.component();
        let started = Instant::now();
        let (norm, layout) = (&d.normalization, d.layout);
        let letterbox = letterbox_into(image, region, d.size, Padding::Pixel(0), norm, layout, &mut self.det_input)
            .map_err(|e| resize_failed(name, e))?;
        let shape = shape_of(&image_dims(d.layout, d.size, d.size));
        let input = engine::tensor(&shape, &self.det_input)?;
        self.timings.detect_preprocess += ms_since(started);
        let started = Instant::now();
        let outputs = self.detector.run([input].into_iter().collect())?;
        self.timings.detect_run += ms_since(started);
        let rows = engine::f32_slice(name, outputs.first().ok_or_else(|| ModelError::run(name, "no output"))?)?;
        if rows.len() % 6 != 0 {
            return Err(ModelError::run(name, format!("output of {} values is not rows of 6", rows.len())));
        }
        let frame_area = (image.width as f32 * image.height as f32).max(1.0);
        let is_tile = region != PixelRect::whole(image);
        for row in rows.chunks_exact(6) {
            let (score, class) = (row[4], row[5]);
            // Written so that a NaN score or class is skipped too.
            let kept = score >= d.filter.score_threshold && class >= 0.0;
            if !kept {
                continue;
            }
            let Some(label) = d.labels.get(class as usize) else {
                return Err(ModelError::run(name, format!("class {class} outside the {} labels", d.labels.len())));
            };
            let bbox = letterbox.to_source([row[0], row[1], row[2], row[3]]);
            let (filter, area) = (&d.label_filters[class as usize], box_area(bbox) / frame_area);
            let admitted =
                if self.moving_candidates { filter.admits_moving(score, area) } else { filter.admits(score, area) };
            if !admitted || (is_tile && (!d.tiled_labels[class as usize] || cut_by_tile(bbox, region, image))) {
                continue;
            }
            self.detections.push(Detection {
                label_id: class as usize,
                label: label.clone(),
                score,
                bbox,
                track: None,
            });
        }
        Ok(())
    }

    /// Whether this session's detections also hold those that pass their label's filter only as moving candidates
    /// (`moving_min_score`), for a tracker that reports them once they have moved. A single image never wants them,
    /// so each session starts without them.
    pub fn set_moving_candidates(&mut self, on: bool) {
        self.moving_candidates = on;
    }

    /// Sets how long reading one image's text may take (at least one line is always read).
    pub fn set_text_budget(&mut self, budget: Duration) {
        self.text_budget = budget;
    }

    /// Whether the last [`VisionSession::read_text`] stopped before the last line for the text budget.
    pub fn text_was_cut(&self) -> bool {
        self.text_cut
    }

    /// Text lines in reading order, read until the text budget is spent; empty when the OCR models are not loaded.
    pub fn read_text(&mut self, image: &RgbImage) -> Result<Vec<TextLine>> {
        self.text_cut = false;
        let (Some(ocr), Some(r)) = (self.ocr.as_mut(), self.models.reader.as_ref()) else {
            return Ok(Vec::new());
        };
        let t = &mut self.timings;
        let det_name = r.detector.component();
        let (norm, layout) = &r.det_format;
        let started = Instant::now();
        let letterbox = letterbox_into(
            image,
            PixelRect::whole(image),
            r.det_size,
            Padding::Pixel(0),
            norm,
            *layout,
            &mut ocr.det_input,
        )
        .map_err(|e| resize_failed(det_name, e))?;
        let shape = shape_of(&image_dims(*layout, r.det_size, r.det_size));
        let input = engine::tensor(&shape, &ocr.det_input)?;
        t.ocr_det_preprocess = ms_since(started);
        let started = Instant::now();
        let outputs = ocr.detector.run([input].into_iter().collect())?;
        t.ocr_det_run = ms_since(started);
        let started = Instant::now();
        let probs =
            engine::f32_slice(det_name, outputs.first().ok_or_else(|| ModelError::run(det_name, "no output"))?)?;
        ocr.post
            .boxes(probs, r.det_size, r.det_size, &MapToSource::from_letterbox(&letterbox), &mut ocr.boxes)
            .map_err(|e| ModelError::run(det_name, e))?;
        sort_reading_order(&mut ocr.boxes, |b| b.bbox);
        merge_overlapping_words(&mut ocr.boxes);
        t.ocr_det_post = ms_since(started);

        let rec_name = r.recognizer.component();
        let (norm, layout) = &r.rec_format;
        let shape = shape_of(&image_dims(*layout, r.rec_height, r.rec_width));
        let mut lines: Vec<TextLine> = Vec::new();
        let rec_started = Instant::now();
        (t.ocr_rec_run, t.ocr_rec_lines, t.ocr_rec_runs) = (0.0, 0, 0);
        for (i, text_box) in ocr.boxes.iter().enumerate() {
            if i > 0 && rec_started.elapsed() > self.text_budget {
                self.text_cut = true;
                break;
            }
            let Some(region) = PixelRect::from_box(text_box.bbox, image) else { continue };
            // A slightly rotated line is read from a copy sheared level.
            let (source, region) = match slant(image, region) {
                Some(slope) => {
                    level_crop(image, region, slope, &mut ocr.level);
                    (&ocr.level, PixelRect::whole(&ocr.level))
                }
                _ => (image, region),
            };
            let native_width =
                (r.rec_height as f32 * region.width as f32 / region.height.max(1) as f32).ceil() as usize;
            // A line wider than the input is read in overlapping windows at its own aspect ratio, not squeezed.
            let long = native_width > r.rec_width;
            let (buffer, stride) =
                if long { (&mut ocr.line_input, MAX_LINE_WIDTH) } else { (&mut ocr.rec_input, r.rec_width) };
            let content_width = text_line_into(source, region, r.rec_height, stride, norm, *layout, buffer)
                .map_err(|e| resize_failed(rec_name, e))?;
            let started = Instant::now();
            let mut classes = 0;
            let mut step_width = 0.0;
            ocr.line_probabilities.clear();
            for window in line_windows(content_width, r.rec_width, WINDOW_OVERLAP) {
                if long {
                    copy_window(
                        &ocr.line_input,
                        stride,
                        window.start,
                        r.rec_height,
                        r.rec_width,
                        *layout,
                        &mut ocr.rec_input,
                    );
                }
                let outputs = ocr.recognizer.run([engine::tensor(&shape, &ocr.rec_input)?].into_iter().collect())?;
                t.ocr_rec_runs += 1;
                let value = outputs.first().ok_or_else(|| ModelError::run(rec_name, "no output"))?;
                let dims = value.shape();
                if dims.len() != 3 || dims[1] == 0 || r.rec_width % dims[1] != 0 {
                    return Err(ModelError::run(
                        rec_name,
                        format!("output shape {dims:?}, expected [1, steps, classes]"),
                    ));
                }
                let columns = r.rec_width / dims[1];
                (classes, step_width) = (dims[2], columns as f32);
                let probabilities = engine::f32_slice(rec_name, value)?;
                let keep =
                    (window.keep_from - window.start) / columns..(window.keep_to - window.start).div_ceil(columns);
                ocr.line_probabilities
                    .extend_from_slice(&probabilities[keep.start * classes..keep.end.min(dims[1]) * classes]);
            }
            t.ocr_rec_run += ms_since(started);
            t.ocr_rec_lines += 1;
            let mut text = String::new();
            let steps = ocr.line_probabilities.len() / classes.max(1);
            let score = ctc_greedy_decode_with_steps(
                &ocr.line_probabilities,
                steps,
                classes,
                &r.dictionary,
                &mut text,
                &mut ocr.char_steps,
            )
            .map_err(|e| ModelError::run(rec_name, e))?;
            // The recognizer seldom emits spaces between Latin words; the blank columns of the line show them.
            if *layout == Layout::Nchw {
                let squeeze =
                    (content_width as f32 / region.width as f32) / (r.rec_height as f32 / region.height as f32);
                let line = if long { &ocr.line_input } else { &ocr.rec_input };
                word_gaps(line, r.rec_height, stride, content_width, squeeze, &mut ocr.gaps);
                insert_word_spaces(&mut text, &ocr.char_steps, step_width, &ocr.gaps);
            }
            let text = text.trim();
            if text.is_empty() || score < MIN_TEXT_SCORE {
                continue;
            }
            match lines.last_mut() {
                Some(line) if same_line(line.bbox, text_box.bbox) => {
                    line.text.push(' ');
                    line.text.push_str(text);
                    line.score = line.score.min(score);
                    line.bbox = union(line.bbox, text_box.bbox);
                }
                _ => lines.push(TextLine { text: text.to_string(), score, bbox: text_box.bbox }),
            }
        }
        t.ocr_rec = ms_since(rec_started);
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector_with(params: &str) -> Component {
        let text = format!(
            "name = \"d\"\nrole = \"object-detector\"\nvariant = \"v\"\nfile = \"d.onnx\"\nsha256 = \"\"\nbytes = 0\n\
             [params]\n{params}"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn a_detector_recalibrates_a_label_group_and_a_bad_pair_is_refused() {
        let plain = detector_with("");
        assert_eq!(label_filter(&plain, "car").unwrap(), LabelFilter::default_for("car"));
        let tuned = detector_with("filter_vehicle = [0.1, 0.25]");
        let car = label_filter(&tuned, "car").unwrap();
        assert_eq!((car.min_score, car.threshold), (0.1, 0.25));
        assert_eq!(label_filter(&tuned, "truck").unwrap(), car, "the whole group");
        assert_eq!(label_filter(&tuned, "person").unwrap(), LabelFilter::default_for("person"));
        for bad in ["filter_vehicle = [0.1]", "filter_vehicle = [0.1, 2.0]", "filter_vehicle = \"low\""] {
            let refused = label_filter(&detector_with(bad), "car").unwrap_err().to_string();
            assert!(refused.contains("filter_vehicle"), "{bad}: {refused}");
        }
    }

    #[test]
    fn long_lines_are_covered_by_overlapping_windows_that_meet_midway() {
        assert_eq!(line_windows(300, 320, 64), [LineWindow { start: 0, keep_from: 0, keep_to: 320 }]);
        let windows = line_windows(1000, 320, 64);
        assert_eq!(windows.iter().map(|w| w.start).collect::<Vec<_>>(), [0, 256, 512, 768]);
        assert_eq!((windows[0].keep_from, windows[0].keep_to), (0, 288));
        assert_eq!((windows[1].keep_from, windows[1].keep_to), (288, 544));
        assert_eq!(windows[3].keep_to, 1088, "the last window runs to its end");
        for pair in windows.windows(2) {
            assert_eq!(pair[0].keep_to, pair[1].keep_from, "kept columns join without gap or overlap");
        }
        assert!(windows.iter().all(|w| w.keep_from % 8 == 0 && w.keep_to % 8 == 0));
    }

    #[test]
    fn a_window_is_copied_from_the_line_and_padded_past_its_end() {
        let (height, stride, window) = (2, 10, 4);
        let line: Vec<f32> = (0..3 * height * stride).map(|i| i as f32).collect();
        let mut out = vec![-1.0; 3 * height * window];
        copy_window(&line, stride, 8, height, window, Layout::Nchw, &mut out);
        assert_eq!(&out[..4], &[8.0, 9.0, 0.0, 0.0]);
        assert_eq!(&out[4..8], &[18.0, 19.0, 0.0, 0.0]);
        let mut out = vec![-1.0; 3 * height * window];
        copy_window(&line, stride, 8, height, window, Layout::Nhwc, &mut out);
        assert_eq!(&out[..12], &[24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }
}

//! The vision encoders through tract on real photos and rendered text: raw outputs against onnxruntime on the
//! same input tensors, the detections on darknet's photos, and OCR of text rendered in several fonts and sizes.

use std::path::{Path, PathBuf};

use lookout_models::bundle::{resolve_models_dir, Bundle, DEFAULT_BUNDLE};
use lookout_models::engine::{self, DatumType, Dim, GraphSpec};
use lookout_models::vision::detections::LabelFilter;
use lookout_models::vision::image::load_image;
use lookout_models::vision::{VisionModels, VisionSession};
use serde_json::Value;

fn testdata() -> PathBuf {
    let dir = std::env::var_os("LOOKOUT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/testdata"))
        .join("vision");
    assert!(
        dir.join("index.json").is_file(),
        "vision test data missing in {} (run models/prepare/prepare.sh)",
        dir.display()
    );
    dir
}

fn index() -> Value {
    serde_json::from_str(&std::fs::read_to_string(testdata().join("index.json")).unwrap()).unwrap()
}

fn bundle() -> Bundle {
    Bundle::locate(&resolve_models_dir(None), DEFAULT_BUNDLE).expect("default bundle (run models/prepare/prepare.sh)")
}

/// A little-endian f32 `.npy` file: its shape and values.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_text.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let values =
        bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (shape, values)
}

#[test]
fn raw_outputs_match_onnxruntime_on_the_same_tensors() {
    let dir = testdata();
    let bundle = bundle();
    let cases = index()["tensors"].as_array().unwrap().clone();
    assert!(cases.len() >= 3);
    for case in cases {
        let role = case["role"].as_str().unwrap();
        let component = bundle.component(role, case["variant"].as_str()).unwrap();
        let (shape, input) = read_npy(&dir.join(case["input"].as_str().unwrap()));
        let dims: Vec<Dim> = shape.iter().map(|d| Dim::Fixed(*d)).collect();
        // The graph the product runs: the compiled form, whose input shape must be the reference tensor's.
        let graph = engine::load_component(&bundle, component, &GraphSpec::new(vec![(DatumType::F32, dims)])).unwrap();
        let outputs =
            graph.new_state().unwrap().run([engine::tensor(&shape, &input).unwrap()].into_iter().collect()).unwrap();
        let (out_shape, expected) = read_npy(&dir.join(case["outputs"][0]["file"].as_str().unwrap()));
        let ours = engine::f32_slice(role, &outputs[0]).unwrap();
        assert_eq!(ours.len(), expected.len(), "{role} on {}: output size", case["source"]);
        let worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        // Detector rows mix input-space pixel coordinates with scores; the others are probabilities.
        let tolerance = if role == "object-detector" { 0.05 } else { 2e-3 };
        assert!(worst <= tolerance, "{role} on {}: tract and onnxruntime differ by {worst}", case["source"]);
        if role == "ocr-recognizer" {
            let classes = *out_shape.last().unwrap();
            let argmax = |v: &[f32]| {
                v.chunks_exact(classes)
                    .map(|s| s.iter().enumerate().fold(0, |b, (i, p)| if *p > s[b] { i } else { b }))
                    .collect::<Vec<_>>()
            };
            assert_eq!(argmax(ours), argmax(&expected), "{role} on {}: symbols differ", case["source"]);
        }
    }
}

fn labels_in(photo: &str) -> Vec<String> {
    let models = VisionModels::load(&bundle(), None, false).unwrap();
    let mut session = models.session().unwrap();
    let image = load_image(&testdata().join("photos").join(photo)).unwrap();
    session.detect(&image).unwrap().into_iter().map(|d| d.label).collect()
}

#[test]
fn dog_photo_has_a_dog_a_bicycle_and_a_vehicle() {
    let labels = labels_in("dog.jpg");
    assert!(labels.iter().any(|l| l == "dog"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "bicycle"), "{labels:?}");
    assert!(labels.iter().any(|l| l == "car" || l == "truck"), "{labels:?}");
}

#[test]
fn kite_photo_has_several_kites_and_several_people() {
    let labels = labels_in("kite.jpg");
    let count = |name: &str| labels.iter().filter(|l| *l == name).count();
    assert!(count("kite") >= 3, "{labels:?}");
    assert!(count("person") >= 3, "{labels:?}");
}

#[test]
fn detections_match_onnxruntime_pipeline() {
    let bundle = bundle();
    let variants = bundle.variants("object-detector");
    let references = index()["detections"].as_object().unwrap().clone();
    assert_eq!(references.len(), variants.len(), "a reference for every detector");
    for variant in variants {
        detections_match_onnxruntime(&bundle, variant, references[variant].as_object().unwrap());
    }
}

fn detections_match_onnxruntime(bundle: &Bundle, variant: &str, photos: &serde_json::Map<String, Value>) {
    let models = VisionModels::load(bundle, Some(variant), false).unwrap();
    let mut session = models.session().unwrap();
    assert!(photos.len() >= 9, "the reference detections cover every photo");
    for (photo, reference) in photos {
        // The reference leaves boxes as the detector drew them; Lookout clips them to the image.
        let size: Vec<f64> = reference["size"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // The reference pipeline stops at the detector's threshold; Lookout's per-label filters come after it.
        let expected: Vec<&Value> = reference["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                let b: Vec<f64> = e["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                let area = (b[2].min(size[0]) - b[0].max(0.0)) * (b[3].min(size[1]) - b[1].max(0.0));
                let label = models.detector.labels().iter().position(|l| l == e["label"].as_str().unwrap()).unwrap();
                let filter = models.detector.label_filters()[label];
                filter.admits(e["score"].as_f64().unwrap() as f32, (area / (size[0] * size[1])) as f32)
            })
            .collect();
        let ours = session.detect(&load_image(&testdata().join("photos").join(photo)).unwrap()).unwrap();
        assert_eq!(ours.len(), expected.len(), "{variant} {photo}: {ours:?}");
        for (o, e) in ours.iter().zip(expected) {
            assert_eq!(o.label, e["label"].as_str().unwrap(), "{variant} {photo}");
            assert!((o.score - e["score"].as_f64().unwrap() as f32).abs() < 0.01, "{variant} {photo}: {o:?} vs {e}");
            for (i, (a, b)) in o.bbox.iter().zip(e["box"].as_array().unwrap()).enumerate() {
                let b = b.as_f64().unwrap().clamp(0.0, size[i % 2]) as f32;
                assert!((a - b).abs() < 2.0, "{variant} {photo}: {o:?} vs {e}");
            }
        }
    }
}

/// A session that reads every line of an image however slow the machine: under qemu-arm the default text budget
/// ends before a paragraph's last line.
fn session_reading_everything(models: &VisionModels) -> VisionSession<'_> {
    let mut session = models.session().unwrap();
    session.set_text_budget(std::time::Duration::from_secs(3600));
    session
}

#[test]
fn rendered_text_is_read_exactly() {
    let dir = testdata().join("text");
    let renders: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let models = VisionModels::load(&bundle(), None, true).unwrap();
    let mut session = session_reading_everything(&models);
    let mut misread = Vec::new();
    for render in &renders {
        let image = load_image(&dir.join(render["file"].as_str().unwrap())).unwrap();
        let read: Vec<String> = session.read_text(&image).unwrap().into_iter().map(|l| l.text).collect();
        let read = read.join(" ");
        let expected = render["text"].as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
        if read != expected {
            misread.push(format!("{}: {read:?}", render["file"].as_str().unwrap()));
        }
    }
    // PP-OCRv4's recognizer, in onnxruntime too, reads DejaVu Sans 40 px "Lookout" as "Look0ut"; every other
    // render reads exactly, word spaces included (onnxruntime's pipeline without the blank-column rule: 26 of 73
    // with spaces, 72 ignoring them).
    assert!(misread.len() <= 1, "{} of {} renders misread: {misread:#?}", misread.len(), renders.len());
}

/// Edits (insertions, deletions, substitutions) that turn `a` into `b`, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            current.push((previous[j + 1] + 1).min(current[j] + 1).min(previous[j] + usize::from(ca != cb)));
        }
        previous = current;
    }
    previous[b.len()]
}

#[test]
fn long_lines_and_paragraphs_are_read_at_their_own_width() {
    let dir = testdata().join("lines");
    let renders: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    assert!(renders.len() >= 100, "{} renders", renders.len());
    let models = VisionModels::load(&bundle(), None, true).unwrap();
    let mut session = session_reading_everything(&models);
    // Character errors and characters, clean renders and degraded ones; the same for onnxruntime running rapidocr's
    // dynamic-width recognizer at each box's own width.
    let (mut clean, mut degraded) = ((0, 0), (0, 0));
    let mut onnxruntime_clean = (0, 0);
    let mut worst = (0.0, String::new());
    for render in &renders {
        let image = load_image(&dir.join(render["file"].as_str().unwrap())).unwrap();
        let read: Vec<String> = session.read_text(&image).unwrap().into_iter().map(|l| l.text).collect();
        let expected: Vec<&str> = render["text"].as_str().unwrap().lines().collect();
        if expected.len() > 1 {
            assert_eq!(
                read.len(),
                expected.len(),
                "{}: the paragraph's lines are kept apart: {read:#?}",
                render["file"]
            );
        }
        let (read, expected) = (read.join(" "), expected.join(" "));
        let errors = edit_distance(&read, &expected);
        let rate = errors as f64 / expected.chars().count() as f64;
        if rate > worst.0 {
            worst = (rate, format!("{}: {read:?}", render["file"]));
        }
        let tally = if render["condition"] == "clean" { &mut clean } else { &mut degraded };
        *tally = (tally.0 + errors, tally.1 + expected.chars().count());
        if render["condition"] == "clean" {
            let theirs = render["onnxruntime"].as_str().unwrap().lines().collect::<Vec<_>>().join(" ");
            onnxruntime_clean = (
                onnxruntime_clean.0 + edit_distance(&theirs, &expected),
                onnxruntime_clean.1 + expected.chars().count(),
            );
        }
    }
    let rate = |(errors, chars): (usize, usize)| errors as f64 / chars as f64;
    eprintln!(
        "clean CER {:.4}, onnxruntime at native width {:.4}; degraded CER {:.4}",
        rate(clean),
        rate(onnxruntime_clean),
        rate(degraded)
    );
    assert!(
        rate(clean) <= rate(onnxruntime_clean) + 0.005,
        "clean {:.4} vs onnxruntime {:.4}",
        rate(clean),
        rate(onnxruntime_clean)
    );
    assert!(rate(clean) <= 0.03, "clean character error rate {:.4} ({clean:?}); worst {worst:?}", rate(clean));
    assert!(
        rate(degraded) <= 0.08,
        "degraded character error rate {:.4} ({degraded:?}); worst {worst:?}",
        rate(degraded)
    );
    assert!(worst.0 <= 0.2, "every render is mostly read; worst {worst:?}");
}

#[test]
fn a_page_is_read_in_order_until_the_time_budget_ends() {
    let dir = testdata().join("lines");
    let page = load_image(&dir.join("paragraph.DejaVuSerif.16.clean.png")).unwrap();
    let models = VisionModels::load(&bundle(), None, true).unwrap();
    let mut session = session_reading_everything(&models);
    let whole = session.read_text(&page).unwrap();
    assert!(whole.len() == 6 && !session.text_was_cut(), "{whole:?}");
    session.set_text_budget(std::time::Duration::ZERO);
    let scene = session.describe(&page).unwrap();
    assert!(scene.text_cut && session.text_was_cut());
    assert_eq!(scene.text.len(), 1, "the first line is always read: {:?}", scene.text);
    assert_eq!(scene.text[0].text, whole[0].text);
}

#[test]
fn scene_labels_match_onnxruntime_pipeline() {
    let bundle = bundle();
    let models = VisionModels::load(&bundle, None, false).unwrap().with_scene_classifier(&bundle).unwrap();
    assert!(models.classifier.is_some(), "the default bundle has a scene classifier");
    let mut session = models.session().unwrap();
    let expected = index()["scene_labels"].as_object().unwrap().clone();
    assert!(expected.len() >= 9);
    for (photo, labels) in &expected {
        let ours = session.classify(&load_image(&testdata().join("photos").join(photo)).unwrap()).unwrap();
        let theirs = labels.as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{photo}: {ours:?} vs {theirs:?}");
        for (o, t) in ours.iter().zip(theirs) {
            assert_eq!(o.label, t["label"].as_str().unwrap(), "{photo}: {ours:?} vs {theirs:?}");
            assert!((o.score - t["score"].as_f64().unwrap() as f32).abs() < 0.03, "{photo}: {ours:?} vs {theirs:?}");
        }
    }
    // ImageNet classes 151 to 268 are dog breeds.
    let dog = &expected["dog.jpg"][0];
    assert!((151..=268).contains(&dog["class"].as_u64().unwrap()), "dog.jpg: {dog}");
}

#[test]
fn a_camera_frame_reports_its_three_people_and_none_of_the_clutter_the_filters_hold_back() {
    // vtest.avi frame 0 (prepared by reference_camera.py): three people walking; a rock, a signpost, cones and
    // litter that the detector scores as people and sports balls below the per-label filters.
    let frame = testdata().parent().unwrap().join("camera/vtest/f0000.jpg");
    let image = load_image(&frame).unwrap_or_else(|e| panic!("{}: {e} (models/prepare/prepare.sh)", frame.display()));
    let mut models = VisionModels::load(&bundle(), None, false).unwrap();
    let count = |models: &VisionModels, label: &str| {
        let found = models.session().unwrap().detect(&image).unwrap();
        found.iter().filter(|d| d.label == label).count()
    };
    assert_eq!(count(&models, "person"), 3);
    assert_eq!(count(&models, "sports ball"), 0);
    for label in ["person", "sports ball"] {
        let relaxed = LabelFilter { min_score: 0.0, ..LabelFilter::default_for(label) };
        models.detector.set_label_filter(label, relaxed).unwrap();
    }
    assert!(count(&models, "person") >= 5, "without its filter the clutter counts as people");
    assert!(count(&models, "sports ball") >= 3, "and cones and litter as sports balls");
}

/// Frames with nothing in them: uniform colours, a tiny frame, a strip of an extreme aspect ratio and sensor-like
/// noise. Neither detector may invent an object in them.
#[test]
fn frames_with_nothing_in_them_give_no_objects_from_either_detector() {
    use lookout_models::vision::image::RgbImage;
    let uniform = |w: u32, h: u32, rgb: [u8; 3]| {
        let mut image = RgbImage::new(w, h);
        image.data.chunks_exact_mut(3).for_each(|p| p.copy_from_slice(&rgb));
        image
    };
    let mut noise = RgbImage::new(640, 480);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for v in noise.data.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *v = 96 + (state % 64) as u8;
    }
    let frames = [
        ("black", uniform(640, 480, [0, 0, 0])),
        ("white", uniform(640, 480, [255, 255, 255])),
        ("grey", uniform(1280, 720, [128, 128, 128])),
        ("green", uniform(640, 480, [40, 160, 60])),
        ("tiny", uniform(3, 2, [200, 30, 30])),
        ("strip", uniform(4000, 8, [90, 90, 200])),
        ("noise", noise),
    ];
    let bundle = bundle();
    for variant in bundle.variants("object-detector") {
        let mut models = VisionModels::load(&bundle, Some(variant), false).unwrap();
        for tiles in [false, true] {
            models.detector.set_tiles(tiles);
            let mut session = models.session().unwrap();
            for (name, frame) in &frames {
                let found = session.detect(frame).unwrap();
                assert!(found.is_empty(), "{variant} (tiles {tiles}) on the {name} frame: {found:?}");
            }
        }
    }
}

/// Moving candidates, for the daemon's tracker: on frame 0 of the concourse clip, people walking in plain view in a
/// high grey view score 0.30-0.40, under the person filter; with moving candidates on the detector returns them too,
/// every one a person from 0.30, and everything it returned before is still there.
#[test]
fn moving_candidates_add_the_low_scoring_people_and_keep_the_rest() {
    use lookout_models::vision::detections::iou;
    let path = testdata().parent().unwrap().join("camera/concourse/f0000.jpg");
    let frame = load_image(&path).unwrap_or_else(|e| panic!("{}: {e} (prepare.sh)", path.display()));
    let models = VisionModels::load(&bundle(), None, false).unwrap();
    let mut session = models.session().unwrap();
    session.set_moving_candidates(true);
    let with_candidates = session.detect(&frame).unwrap();
    // A new session starts without them (an image sent with a question to the daemon is a single image).
    let plain = models.session().unwrap().detect(&frame).unwrap();
    let person = models.detector.label_filters()[0];
    assert!(person.has_moving_candidates(), "{person:?}");
    for d in &plain {
        assert!(with_candidates.iter().any(|w| w.label == d.label && iou(w.bbox, d.bbox) > 0.9), "{d:?} lost");
    }
    let added: Vec<_> = with_candidates.iter().filter(|w| !plain.iter().any(|d| iou(w.bbox, d.bbox) > 0.9)).collect();
    assert!(added.len() >= 8, "{} added: {added:?}", added.len());
    assert!(
        added.iter().all(|d| d.label == "person" && (person.moving_min_score..person.min_score).contains(&d.score)),
        "{added:?}"
    );
}

/// A large camera frame in tiles: frame 168 of the concourse clip (prepared by reference_camera.py), 1920x1080,
/// some 35 people small in a high view. The tiles find many more of them; everyone the whole frame found is still
/// there, once (a person in two tiles or in a tile and the frame is not counted twice); tiles add no label but
/// people and vehicles; a frame the whole letterbox sees at more than half its size is looked at as before.
#[test]
fn tiles_find_more_of_a_large_frames_far_people_and_count_none_twice() {
    use lookout_models::vision::detections::iou;
    let camera = testdata().parent().unwrap().join("camera");
    let load = |path: PathBuf| load_image(&path).unwrap_or_else(|e| panic!("{}: {e} (prepare.sh)", path.display()));
    let wide = load(camera.join("concourse/f0168.jpg"));
    let mut models = VisionModels::load(&bundle(), None, false).unwrap();
    let detect = |models: &VisionModels, image| models.session().unwrap().detect(image).unwrap();
    let people = |models: &VisionModels, image| {
        detect(models, image).into_iter().filter(|d| d.label == "person").collect::<Vec<_>>()
    };
    let whole = people(&models, &wide);
    let whole_others = detect(&models, &wide);
    let narrow = load(camera.join("vtest/f0000.jpg"));
    let narrow_whole = people(&models, &narrow);
    models.detector.set_tiles(true);
    let tiled = people(&models, &wide);
    assert!(whole.len() >= 8, "the whole frame alone finds the nearer people: {}", whole.len());
    assert!(tiled.len() as f32 >= 1.8 * whole.len() as f32, "tiles {} against {}", tiled.len(), whole.len());
    for other in detect(&models, &wide).iter().filter(|d| d.label != "person") {
        assert!(
            whole_others.iter().any(|w| w.label == other.label && iou(w.bbox, other.bbox) > 0.9),
            "{other:?} is not the whole frame's"
        );
    }
    for person in &whole {
        assert!(tiled.iter().any(|t| iou(t.bbox, person.bbox) > 0.5), "{person:?} lost in tiles");
    }
    for (i, a) in tiled.iter().enumerate() {
        for b in &tiled[i + 1..] {
            let centre = |d: &[f32; 4]| ((d[0] + d[2]) / 2.0, (d[1] + d[3]) / 2.0);
            let ((ax, ay), (bx, by)) = (centre(&a.bbox), centre(&b.bbox));
            let inside = |(x, y): (f32, f32), d: &[f32; 4]| d[0] <= x && x <= d[2] && d[1] <= y && y <= d[3];
            assert!(!(inside((ax, ay), &b.bbox) && inside((bx, by), &a.bbox)), "one person twice: {a:?} and {b:?}");
        }
    }
    assert_eq!(people(&models, &narrow), narrow_whole, "768x576 is seen at two thirds of its size: no tiles");
}

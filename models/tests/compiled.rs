//! Compiled graphs (tract's NNEF archive of the prepared graph): the same logits, transcripts and detector outputs
//! as the ONNX path, and refused with a named error when stale (another source graph or engine), truncated or
//! corrupt.

use std::path::PathBuf;

use lookout_models::audio::{load_mono_16k, AudioLimit};
use lookout_models::bundle::{resolve_models_dir, Bundle, DEFAULT_BUNDLE};
use lookout_models::llm::LanguageModel;
use lookout_models::vision::image::load_image;
use lookout_models::vision::VisionModels;
use lookout_models::whisper::{DecodeOptions, Whisper};
use lookout_models::ModelError;

fn bundle() -> Bundle {
    let bundle = Bundle::locate(&resolve_models_dir(None), DEFAULT_BUNDLE)
        .expect("default bundle (run models/prepare/prepare.sh)");
    let decoder = bundle.component("llm-decoder", Some("q4")).unwrap();
    assert!(decoder.compiled.is_some(), "the q4 decoder has no compiled form (run models/prepare/prepare.sh)");
    bundle
}

/// A copy of `bundle` in a fresh directory: every file linked, the manifest changed by `edit`.
fn edited_copy(bundle: &Bundle, name: &str, edit: impl FnOnce(&mut Bundle)) -> Bundle {
    let dir = std::env::temp_dir().join(format!("lookout-compiled-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut copy = Bundle { dir: dir.clone(), manifest: bundle.manifest.clone() };
    let files = bundle
        .manifest
        .components
        .iter()
        .flat_map(|c| std::iter::once(c.file.clone()).chain(c.compiled.iter().map(|k| k.file.clone())));
    for file in files {
        let link = dir.join(&file);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(bundle.dir.join(&file), &link).unwrap();
    }
    edit(&mut copy);
    copy.write_manifest().unwrap();
    Bundle::open(&dir).unwrap()
}

fn decoder_mut(bundle: &mut Bundle) -> &mut lookout_models::bundle::Component {
    bundle.manifest.components.iter_mut().find(|c| c.role == "llm-decoder" && c.variant == "q4").unwrap()
}

fn stale_error(bundle: &Bundle) -> (PathBuf, String) {
    match LanguageModel::load(bundle, Some("q4")) {
        Err(e @ ModelError::StaleCompiled { .. }) => {
            let ModelError::StaleCompiled { ref path, .. } = e else { unreachable!() };
            (path.clone(), e.to_string())
        }
        Err(other) => panic!("expected a stale compiled graph, got: {other}"),
        Ok(_) => panic!("a stale compiled graph was used"),
    }
}

#[test]
fn compiled_and_onnx_decoders_give_the_same_logits() {
    let bundle = bundle();
    let from_onnx = edited_copy(&bundle, "onnx", |b| {
        b.manifest.components.iter_mut().filter(|c| c.role == "llm-decoder").for_each(|c| c.compiled = None)
    });
    let prompt: Vec<u32> =
        vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 1, 4093, 198, 504, 314, 260, 3575, 282, 4649, 47];
    for variant in ["q4", "f32"] {
        let logits = |bundle: &Bundle| {
            let model = LanguageModel::load(bundle, Some(variant)).unwrap();
            model.session(None).unwrap().prompt_logits(&prompt).unwrap()
        };
        let (compiled, onnx) = (logits(&bundle), logits(&from_onnx));
        assert_eq!(compiled.len(), onnx.len());
        let max = compiled.iter().zip(&onnx).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max < 1e-4, "{variant}: compiled and ONNX logits differ by {max}");
    }
    let _ = std::fs::remove_dir_all(&from_onnx.dir);
}

fn testdata(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/testdata")).join(path)
}

/// The bundle as it loads without any compiled graph.
fn onnx_only(bundle: &Bundle, name: &str) -> Bundle {
    edited_copy(bundle, name, |b| b.manifest.components.iter_mut().for_each(|c| c.compiled = None))
}

#[test]
fn compiled_and_onnx_whisper_give_the_same_tokens() {
    let bundle = bundle();
    let from_onnx = onnx_only(&bundle, "speech");
    for variant in ["int8", "f32"] {
        assert!(
            bundle.component("asr-encoder", Some(variant)).unwrap().compiled.is_some(),
            "{variant} encoder not compiled"
        );
        let compiled = Whisper::load(&bundle, Some(variant)).unwrap();
        let onnx = Whisper::load(&from_onnx, Some(variant)).unwrap();
        for clip in ["speech/how_many_people.wav", "speech/is_the_door_open.wav"] {
            let samples = load_mono_16k(testdata(clip), AudioLimit::RECORDING).unwrap();
            let options = DecodeOptions::default();
            let ours = compiled.session().unwrap().transcribe_window(&samples, &options).unwrap();
            let reference = onnx.session().unwrap().transcribe_window(&samples, &options).unwrap();
            assert!(!ours.tokens.is_empty(), "{variant} {clip}: nothing transcribed");
            assert_eq!(ours.tokens, reference.tokens, "{variant} {clip}: {:?} vs {:?}", ours.text, reference.text);
        }
    }
    let _ = std::fs::remove_dir_all(&from_onnx.dir);
}

#[test]
fn compiled_and_onnx_vision_give_the_same_scene() {
    let bundle = bundle();
    let from_onnx = onnx_only(&bundle, "vision");
    let compiled = VisionModels::load(&bundle, None, true).unwrap();
    let onnx = VisionModels::load(&from_onnx, None, true).unwrap();
    for photo in ["photos/kite.jpg", "photos/coffee.png", "text/exit_42.DejaVuSerif.32.png"] {
        let image = load_image(&testdata(&format!("vision/{photo}"))).unwrap();
        let (ours, reference) =
            (compiled.session().unwrap().describe(&image).unwrap(), onnx.session().unwrap().describe(&image).unwrap());
        assert!(!ours.objects.is_empty() || !ours.text.is_empty(), "{photo}: an empty scene");
        assert_eq!(ours.objects.len(), reference.objects.len(), "{photo}: detections differ");
        for (a, b) in ours.objects.iter().zip(&reference.objects) {
            assert_eq!(a.label, b.label, "{photo}");
            assert!((a.score - b.score).abs() < 1e-4, "{photo} {}: score {} vs {}", a.label, a.score, b.score);
        }
        let texts =
            |scene: &lookout_models::vision::Scene| scene.text.iter().map(|t| t.text.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&ours), texts(&reference), "{photo}: text read differs");
    }
    let _ = std::fs::remove_dir_all(&from_onnx.dir);
}

#[test]
fn a_compiled_graph_of_another_source_or_engine_is_refused_by_name() {
    let bundle = bundle();
    let other_source =
        edited_copy(&bundle, "source", |b| decoder_mut(b).compiled.as_mut().unwrap().source_sha256 = "0".repeat(64));
    let (path, message) = stale_error(&other_source);
    assert!(path.ends_with("decoder.q4.nnef.tar"), "{}", path.display());
    assert!(message.contains("compiled from another") && message.contains("models/prepare/prepare.sh"), "{message}");

    let other_engine =
        edited_copy(&bundle, "engine", |b| decoder_mut(b).compiled.as_mut().unwrap().engine = "tract 0.21.0".into());
    let (_, message) = stale_error(&other_engine);
    assert!(message.contains("tract 0.21.0") && message.contains("models/prepare/prepare.sh"), "{message}");
    for b in [other_source, other_engine] {
        let _ = std::fs::remove_dir_all(&b.dir);
    }
}

#[test]
fn a_truncated_or_corrupt_compiled_graph_is_refused_by_name() {
    let bundle = bundle();
    let compiled = bundle.component("llm-decoder", Some("q4")).unwrap().compiled.clone().unwrap();
    let bytes = std::fs::read(bundle.dir.join(&compiled.file)).unwrap();
    let write_over = |copy: &Bundle, data: &[u8]| {
        let path = copy.dir.join(&compiled.file);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, data).unwrap();
        path
    };

    let truncated = edited_copy(&bundle, "truncated", |_| {});
    let path = write_over(&truncated, &bytes[..bytes.len() / 2]);
    match LanguageModel::load(&truncated, Some("q4")) {
        Err(ModelError::SizeMismatch { path: named, .. }) => assert_eq!(named, path),
        other => panic!("expected a size mismatch naming {}, got {:?}", path.display(), other.err()),
    }

    let corrupt = edited_copy(&bundle, "corrupt", |_| {});
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x5a;
    let path = write_over(&corrupt, &flipped);
    match LanguageModel::load(&corrupt, Some("q4")) {
        Err(ModelError::HashMismatch { path: named, .. }) => assert_eq!(named, path),
        other => panic!("expected a hash mismatch naming {}, got {:?}", path.display(), other.err()),
    }
    for b in [truncated, corrupt] {
        let _ = std::fs::remove_dir_all(&b.dir);
    }
}

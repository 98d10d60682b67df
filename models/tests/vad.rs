//! Silero VAD through tract against onnxruntime on the same ONNX file and real speech, and the speech regions
//! it finds.

use std::path::PathBuf;

use lookout_models::audio::{load_mono_16k, AudioLimit};
use lookout_models::bundle::{resolve_models_dir, Bundle, DEFAULT_BUNDLE};
use lookout_models::vad::SileroVad;

fn testdata() -> PathBuf {
    let dir = std::env::var_os("LOOKOUT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/testdata"));
    assert!(
        dir.join("speech/vad.json").is_file(),
        "test data missing in {} (run models/prepare/prepare.sh)",
        dir.display()
    );
    dir.join("speech")
}

fn vad() -> SileroVad {
    let bundle = Bundle::locate(&resolve_models_dir(None), DEFAULT_BUNDLE)
        .expect("default bundle (run models/prepare/prepare.sh)");
    SileroVad::load(&bundle).expect("VAD loads")
}

#[test]
fn probabilities_match_onnxruntime() {
    let dir = testdata();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vad.json")).unwrap()).unwrap();
    let vad = vad();
    let mut session = vad.session().unwrap();
    let clips = reference.as_object().unwrap();
    assert!(!clips.is_empty());
    for (file, expected) in clips {
        let expected: Vec<f32> = expected.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let samples = load_mono_16k(dir.join(file), AudioLimit::RECORDING).unwrap();
        let ours = session.probabilities(&samples).unwrap();
        assert_eq!(ours.len(), expected.len(), "{file}: chunk count");
        let worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{file}: tract and onnxruntime differ by {worst}");
        assert!(expected.iter().any(|p| *p > 0.9), "{file}: the reference hears speech");
    }
}

#[test]
fn speech_regions_cover_the_speech_and_skip_silence() {
    let dir = testdata();
    let vad = vad();
    let mut session = vad.session().unwrap();
    // Nine sentences with 1 s of silence between them: the VAD splits them apart.
    let long = load_mono_16k(dir.join("long_sentences.wav"), AudioLimit::RECORDING).unwrap();
    let regions = session.speech_regions(&long).unwrap();
    assert!((7..=9).contains(&regions.len()), "expected about one region per sentence, got {regions:?}");
    let covered: usize = regions.iter().map(|r| r.end - r.start).sum();
    assert!(covered < long.len() * 9 / 10, "silence should be left out: {covered} of {} samples", long.len());
    // Pure silence has no speech.
    assert!(session.speech_regions(&vec![0.0; 16_000 * 3]).unwrap().is_empty());
}

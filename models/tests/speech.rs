//! The transcriber over a long recording: it asks its caller before each window (where a daemon beats its
//! watchdog), and stops with `Cancelled` when told to. Whisper's language list against its vocabulary.

use std::cell::Cell;
use std::path::PathBuf;

use lookout_models::audio::{load_mono_16k, AudioLimit};
use lookout_models::bundle::{resolve_models_dir, Bundle, DEFAULT_BUNDLE};
use lookout_models::speech::Transcriber;
use lookout_models::vad::SileroVad;
use lookout_models::whisper::{DecodeOptions, Whisper, LANGUAGES};
use lookout_models::ModelError;

fn long_recording() -> Vec<f32> {
    let dir = std::env::var_os("LOOKOUT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/testdata"));
    let path = dir.join("speech/long_sentences.wav");
    assert!(path.is_file(), "test data missing at {} (run models/prepare/prepare.sh)", path.display());
    load_mono_16k(path, AudioLimit::RECORDING).unwrap()
}

#[test]
fn a_transcription_asks_before_each_window_and_stops_when_told() {
    let bundle = Bundle::locate(&resolve_models_dir(None), DEFAULT_BUNDLE)
        .expect("default bundle (run models/prepare/prepare.sh)");
    let whisper = Whisper::load(&bundle, Some("int8")).unwrap();
    let vad = SileroVad::load(&bundle).unwrap();
    let mut transcriber = Transcriber::new(&whisper, Some(&vad)).unwrap();
    let samples = long_recording();
    let options = DecodeOptions::default();

    let asked = Cell::new(0);
    let transcript = transcriber
        .transcribe_until(&samples, &options, &|| {
            asked.set(asked.get() + 1);
            false
        })
        .unwrap();
    assert!(transcript.frames.len() >= 2, "the recording should need several windows: {:?}", transcript.frames);
    assert_eq!(asked.get(), transcript.frames.len(), "one question per window");

    let asked = Cell::new(0);
    let stopped = transcriber.transcribe_until(&samples, &options, &|| {
        asked.set(asked.get() + 1);
        asked.get() == 2
    });
    assert!(matches!(stopped, Err(ModelError::Cancelled)), "{stopped:?}");
    assert_eq!(asked.get(), 2, "no window after the one it was told to stop at");
}

#[test]
fn the_language_list_is_the_vocabularys_language_tokens_in_order() {
    let bundle = Bundle::locate(&resolve_models_dir(None), DEFAULT_BUNDLE)
        .expect("default bundle (run models/prepare/prepare.sh)");
    let whisper = Whisper::load(&bundle, Some("int8")).unwrap();
    let vocab = whisper.vocab();
    let id = |token: &str| vocab.special(token).unwrap_or_else(|| panic!("{token} is not in the vocabulary"));
    let first = id("<|en|>");
    assert_eq!(first, whisper.config.sot + 1, "the languages follow <|startoftranscript|>");
    for (i, language) in LANGUAGES.iter().enumerate() {
        assert_eq!(id(&format!("<|{language}|>")), first + i as u32, "{language}");
    }
    assert_eq!(id("<|translate|>"), first + LANGUAGES.len() as u32, "no language after the list's last");
}

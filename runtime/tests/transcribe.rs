//! `lookout transcribe` end to end on the real default bundle: reference transcripts, onnxruntime's token
//! sequences on the same ONNX files, and every kind of bad input.

mod common;

use common::{lookout, normalize, speech_index, word_error_rate, Clip};
use serde_json::Value;

fn transcribe_json(clip_path: &str, extra: &[&str]) -> Value {
    let mut args = vec!["transcribe", "--json", clip_path];
    args.extend_from_slice(extra);
    let out = lookout(&args);
    assert!(out.status.success(), "transcribe {clip_path} {extra:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("transcribe --json prints JSON")
}

fn tokens_of(json: &Value) -> Vec<u64> {
    json["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()))
        .collect()
}

fn short_clips() -> Vec<Clip> {
    speech_index().into_iter().filter(|c| c.duration_s <= 30.0).collect()
}

/// Same ONNX files, same mel, same prompt and suppression: tract must emit onnxruntime's tokens, up to a step where
/// onnxruntime's top two were tied and tract took the runner-up (after which the two decodes go their own ways).
fn matches_onnxruntime(variant: &str) {
    const END: u64 = 50257; // <|endoftext|>: a decode that stops where the other goes on chose it
    for clip in short_clips() {
        let reference = clip.reference_tokens(variant);
        let json = transcribe_json(&clip.path(), &["--variant", variant, "--no-vad", "--window", "full"]);
        assert_eq!(json["variant"], variant);
        let ours = tokens_of(&json);
        let Some(step) = (0..=ours.len().max(reference.len())).find(|&i| ours.get(i) != reference.get(i)) else {
            continue;
        };
        let choice = ours.get(step).copied().unwrap_or(END);
        assert!(
            clip.reference_ties(variant).contains(&(step, choice)),
            "{variant} tokens differ from onnxruntime on {} at step {step}, where onnxruntime's pick was no tie:\n ours {ours:?}\n want {reference:?}",
            clip.file
        );
        eprintln!(
            "{variant} {}: a tie at step {step} broken the other way (token {choice}); the tokens before it match",
            clip.file
        );
    }
}

#[test]
fn f32_tokens_match_onnxruntime() {
    matches_onnxruntime("f32");
}

#[test]
fn int8_tokens_match_onnxruntime() {
    matches_onnxruntime("int8");
}

/// The default path (VAD, default variant) gets the words right on every clip.
fn transcripts_are_right(variant: &str, window: &str) {
    for clip in speech_index() {
        let json = transcribe_json(&clip.path(), &["--variant", variant, "--window", window]);
        let text = json["text"].as_str().unwrap();
        let wer = word_error_rate(&clip.text, text);
        // Whisper base hears beckett.wav's first "Ever" as "Never" (so do onnxruntime and CTranslate2 on these
        // weights): one word in twelve. On the 38 s espeak-ng clip it misses 7 to 9 words of 89 ("quick round
        // fox"), in both variants and in onnxruntime alike.
        // A tie in onnxruntime's decode (`Clip::reference_ties`) may go either way: one word each.
        let limit = match clip.file.as_str() {
            "beckett.wav" => 0.09,
            _ if clip.duration_s > 30.0 => 0.15,
            _ => 0.0,
        } + clip.reference_ties(variant).len() as f64 / normalize(&clip.text).split(' ').count() as f64;
        assert!(wer <= limit, "{variant}/{window} {}: WER {wer:.2}: got {text:?}, want {:?}", clip.file, clip.text);
        assert!(json["segments"].as_array().unwrap().iter().all(|s| s["end_s"].as_f64() > s["start_s"].as_f64()));
        for key in ["load", "mel", "encode", "decode"] {
            assert!(json["timings_ms"][key].as_f64().is_some(), "timings_ms.{key} missing");
        }
    }
}

#[test]
fn int8_transcripts_are_right() {
    transcripts_are_right("int8", "full");
}

#[test]
fn f32_transcripts_are_right() {
    transcripts_are_right("f32", "full");
}

#[test]
fn short_window_transcripts_are_right() {
    transcripts_are_right("int8", "fit");
}

#[test]
fn long_audio_is_transcribed_in_consecutive_windows() {
    let long =
        speech_index().into_iter().find(|c| c.duration_s > 30.0).expect("a clip longer than 30 s in the test data");
    let json = transcribe_json(&long.path(), &["--no-vad"]);
    assert!(json["frames"].as_array().unwrap().len() >= 2, "expected several windows: {json}");
    assert!(word_error_rate(&long.text, json["text"].as_str().unwrap()) <= 0.15);
}

#[test]
fn plain_output_is_the_text() {
    let clip = short_clips()
        .into_iter()
        .find(|c| c.file.contains("kitchen"))
        .expect("the kitchen-light query in the test data");
    let out = lookout(&["transcribe", &clip.path()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(normalize(&text), normalize(&clip.text));
}

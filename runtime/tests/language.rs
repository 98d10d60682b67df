//! `lookout caption` and `lookout ask` end to end on real photos and synthesized speech: captions name what was
//! detected and nothing else, counts come from the detector, spoken questions are transcribed and answered, and
//! bad requests get a clear error.

mod common;

use common::{lookout, testdata_dir};
use serde_json::Value;

fn photo(name: &str) -> String {
    testdata_dir().join("vision/photos").join(name).to_string_lossy().into_owned()
}

fn speech(name: &str) -> String {
    testdata_dir().join("speech").join(name).to_string_lossy().into_owned()
}

fn json_of(args: &[&str]) -> Value {
    let out = lookout(args);
    assert!(out.status.success(), "lookout {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// Whole lowercase words of a sentence.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn mentions(text: &str, names: &[&str]) -> bool {
    let w = words(text);
    names.iter().any(|name| {
        let parts = words(name);
        w.windows(parts.len()).any(|win| win == parts.as_slice())
    })
}

/// A photo, the objects its caption must name (each in one of these words) and the labels it must not use.
type CaptionCase = (&'static str, &'static [&'static [&'static str]], &'static [&'static str]);

#[test]
fn captions_name_the_detected_objects_and_invent_none() {
    let cases: &[CaptionCase] = &[
        (
            "dog.jpg",
            &[&["dog", "dogs"], &["bicycle", "bicycles", "bike", "bikes"]],
            &["cat", "horse", "sheep", "person", "people", "kite"],
        ),
        ("horses.jpg", &[&["horse", "horses"]], &["dog", "cow", "person", "people", "zebra", "giraffe"]),
        (
            "kite.jpg",
            &[&["kite", "kites"], &["people", "person", "persons", "men", "women"]],
            &["dog", "horse", "bird", "car", "boat"],
        ),
        (
            "giraffe.jpg",
            &[&["giraffe", "giraffes"], &["zebra", "zebras"]],
            &["elephant", "horse", "dog", "person", "people"],
        ),
        ("chelsea.png", &[&["cat", "cats"]], &["dog", "person", "people", "teddy bear"]),
    ];
    for (name, must, must_not) in cases {
        let out = json_of(&["caption", &photo(name), "--json"]);
        let caption = out["answer"].as_str().unwrap();
        assert!(caption.ends_with('.') && caption.split_whitespace().count() >= 3, "{name}: one sentence: {caption:?}");
        for names in *must {
            assert!(mentions(caption, names), "{name}: caption {caption:?} does not name {names:?}");
        }
        for label in *must_not {
            assert!(!mentions(caption, &[label]), "{name}: caption {caption:?} invents {label:?}");
        }
        let reply = &out["reply"];
        let generation = &reply["generation"];
        assert!(generation["prompt_tokens"].as_u64().unwrap() > 20, "{name}: token counts reported");
        assert!(generation["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(
            reply["prompt_text"].as_str().unwrap().contains("<|im_start|>user"),
            "{name}: the fused prompt is shown"
        );
        assert!(out["scene"]["counts"].is_object());
        eprintln!("{name}: {caption} ({})", reply["source"]);
    }
}

#[test]
fn how_many_people_on_kite_answers_the_detected_count() {
    let out = json_of(&["ask", "--image", &photo("kite.jpg"), "--text", "how many people are there?", "--json"]);
    let detected = out["scene"]["counts"]["person"].as_u64().expect("people detected on kite.jpg");
    assert!(detected >= 5, "kite.jpg shows a crowd on the beach; detected {detected}");
    let answer = out["answer"].as_str().unwrap();
    assert!(words(answer).contains(&detected.to_string()), "answer {answer:?} does not state the detected {detected}");
    assert_eq!(out["question"], "how many people are there?");
}

#[test]
fn spoken_what_do_you_see_works_end_to_end() {
    let out = json_of(&["ask", "--image", &photo("dog.jpg"), "--audio", &speech("what_do_you_see.wav"), "--json"]);
    let transcript = out["transcript"].as_str().unwrap().to_lowercase();
    assert!(transcript.contains("what do you see"), "transcript {transcript:?}");
    let answer = out["answer"].as_str().unwrap();
    assert!(mentions(answer, &["dog", "dogs"]), "answer {answer:?} names the dog");
    assert!(!mentions(answer, &["cat", "person", "people", "horse"]), "answer {answer:?} invents");
    for stage in ["transcribe", "vision", "answer", "load_decoder"] {
        assert!(out["timings_ms"][stage].as_f64().unwrap() > 0.0, "timing {stage}");
    }
}

#[test]
fn questions_beyond_the_detector_are_not_guessed() {
    let out = json_of(&["ask", "--image", &photo("person.jpg"), "--audio", &speech("is_the_door_open.wav"), "--json"]);
    let answer = out["answer"].as_str().unwrap();
    assert!(answer.starts_with("I can't tell"), "answer {answer:?}");
    assert_eq!(out["reply"]["source"], "scene");
}

#[test]
fn no_decoder_gives_the_deterministic_sentence() {
    let out = json_of(&["caption", &photo("horses.jpg"), "--no-decoder", "--json"]);
    let count = out["scene"]["counts"]["horse"].as_u64().unwrap();
    assert_eq!(out["answer"], format!("A photo with {count} horses."));
    assert_eq!(out["reply"]["source"], "scene");
    assert!(out["reply"].get("generation").is_none());
}

fn assert_fails(args: &[&str], code: i32, needle: &str) {
    let out = lookout(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "lookout {args:?}: {stderr}");
    assert!(stderr.contains(needle), "lookout {args:?}: {stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_requests_get_clear_errors() {
    let kite = photo("kite.jpg");
    assert_fails(&["ask", "--image", &kite, "--text", "   "], 3, "--text is empty");
    let long = "why ".repeat(600);
    assert_fails(&["ask", "--image", &kite, "--text", &long], 3, "limited to 2000");
    assert_fails(&["ask", "--image", &kite, "--text", "hi", "--temperature", "9"], 3, "temperature");
    assert_fails(&["ask", "--image", &kite, "--text", "hi", "--top-p", "0"], 3, "top-p");
    assert_fails(&["ask", "--image", &kite], 2, "--audio");
    assert_fails(&["ask", "--image", &kite, "--text", "hi", "--audio", "x.wav"], 2, "cannot be used with");
    assert_fails(&["caption", "/nonexistent/photo.jpg"], 3, "photo.jpg");
    assert_fails(&["ask", "--image", &kite, "--audio", "/nonexistent/q.wav"], 3, "q.wav");
    assert_fails(&["caption", &kite, "--max-tokens", "0"], 2, "max-tokens");
    assert_fails(&["caption", &kite, "--variant", "q2"], 4, "available: q4, f32");
}

#[test]
fn models_inspect_reads_the_gguf_and_refuses_broken_ones() {
    use lookout_models::bundle::{resolve_models_dir, Bundle, DEFAULT_BUNDLE};
    let bundle = Bundle::locate(&resolve_models_dir(None), DEFAULT_BUNDLE).expect("default bundle");
    let gguf = bundle.path_of(bundle.component("llm-gguf", None).unwrap()).to_string_lossy().into_owned();
    let out = json_of(&["models", "inspect", &gguf, "--json"]);
    assert_eq!(out["architecture"], "llama");
    assert_eq!(out["decoder"]["n_layers"], 30);
    assert_eq!(out["tensor_types"]["Q4_1"], 210);

    let dir = std::env::temp_dir().join(format!("lookout-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read(&gguf).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &original[..original.len() / 3]).unwrap();
    assert_fails(&["models", "inspect", cut.to_str().unwrap()], 3, "truncated");
    let key = b"general.architecture\x08\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00llama";
    let at = original.windows(key.len()).position(|w| w == key).unwrap() + key.len() - 5;
    let mut other = original.clone();
    other[at..at + 5].copy_from_slice(b"mamba");
    let renamed = dir.join("mamba.gguf");
    std::fs::write(&renamed, &other).unwrap();
    assert_fails(&["models", "inspect", renamed.to_str().unwrap()], 3, "architecture `mamba` is not supported");
    std::fs::remove_dir_all(&dir).ok();
}

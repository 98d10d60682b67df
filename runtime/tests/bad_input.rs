//! Bad input gets one clear line on stderr and a distinct non-zero exit code, never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{lookout, speech_index, testdata_dir, Scratch};

#[path = "../../models/tests/support/silent_flac.rs"]
mod silent_flac;

const BAD_INPUT: i32 = 3;
const BAD_MODELS: i32 = 4;

fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr should mention {needle:?}: {stderr}");
    }
}

fn wav_header(format_tag: u16, channels: u16, rate: u32, bits: u16, data_len: u32) -> Vec<u8> {
    let block = channels * bits.div_ceil(8);
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_len).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&format_tag.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * block as u32).to_le_bytes());
    h.extend_from_slice(&block.to_le_bytes());
    h.extend_from_slice(&bits.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

fn scratch(name: &str) -> Scratch {
    Scratch::new(&format!("bad-input-{name}"))
}

fn transcribe(path: &Path) -> Output {
    lookout(&["transcribe", path.to_str().unwrap()])
}

#[test]
fn missing_audio_file() {
    assert_fails(&transcribe(Path::new("/nonexistent/query.wav")), BAD_INPUT, &["/nonexistent/query.wav"]);
}

#[test]
fn file_that_is_not_audio() {
    let dir = scratch("not-audio");
    let path = dir.join("notes.wav");
    fs::write(&path, "this is a text file, not a recording\n").unwrap();
    assert_fails(&transcribe(&path), BAD_INPUT, &["notes.wav"]);
}

#[test]
fn zero_byte_file() {
    let dir = scratch("zero");
    let path = dir.join("empty.wav");
    fs::write(&path, b"").unwrap();
    assert_fails(&transcribe(&path), BAD_INPUT, &["empty.wav"]);
}

#[test]
fn wav_without_samples() {
    let dir = scratch("no-samples");
    let path = dir.join("silent.wav");
    fs::write(&path, wav_header(1, 1, 16_000, 16, 0)).unwrap();
    assert_fails(&transcribe(&path), BAD_INPUT, &["no samples"]);
}

#[test]
fn unsupported_wav_encoding() {
    let dir = scratch("alaw");
    let path = dir.join("alaw.wav");
    let mut bytes = wav_header(6, 1, 8_000, 8, 8_000);
    bytes.extend(std::iter::repeat_n(0xD5u8, 8_000));
    fs::write(&path, bytes).unwrap();
    assert_fails(&transcribe(&path), BAD_INPUT, &["alaw.wav"]);
}

#[test]
fn truncated_wav() {
    let dir = scratch("truncated");
    let path = dir.join("cut.wav");
    let mut bytes = wav_header(1, 1, 16_000, 16, 64_000);
    bytes.extend(std::iter::repeat_n(0u8, 1_001));
    fs::write(&path, bytes).unwrap();
    assert_fails(&transcribe(&path), BAD_INPUT, &["cut.wav"]);
}

#[test]
fn a_flac_bomb_is_refused_at_the_documented_limits() {
    use silent_flac::{silent_flac, FRAMES_PER_BLOCK};
    let dir = scratch("bomb");
    // 3,000 blocks of silence: under 64 KB that expand to 68 minutes of 48 kHz stereo.
    let streamed = dir.join("streamed.flac");
    fs::write(&streamed, silent_flac(48_000, 2, 3_000, 0)).unwrap();
    let declared = dir.join("declared.flac");
    fs::write(&declared, silent_flac(48_000, 2, 3_000, 3_000 * FRAMES_PER_BLOCK)).unwrap();
    assert_fails(&transcribe(&declared), BAD_INPUT, &["declared.flac", "more than the limit of 1800 s"]);
    let photo = testdata_dir().join("vision/photos/kite.jpg");
    for (path, name) in [(&streamed, "streamed.flac"), (&declared, "declared.flac")] {
        let out =
            lookout(&["ask", "--image", photo.to_str().unwrap(), "--audio", path.to_str().unwrap(), "--no-decoder"]);
        assert_fails(&out, BAD_INPUT, &[name, "the limit of 60 s"]);
    }
}

/// A copy of the default bundle made of links, with `damage` applied to the int8 speech decoder's file.
fn damaged_bundle(name: &str, damage: impl Fn(&Path, &str)) -> Scratch {
    let source = bundle_dir();
    let dir = scratch(name);
    for entry in walk(&source) {
        let relative = entry.strip_prefix(&source).unwrap();
        let target = dir.join(relative);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        if relative == Path::new("manifest.toml") {
            fs::copy(&entry, &target).unwrap();
        } else {
            std::os::unix::fs::symlink(&entry, &target).unwrap();
        }
    }
    // The file the speech decoder loads from: its compiled form when the bundle has one.
    let compiled = "whisper-base/decoder.int8.nnef.tar";
    damage(&dir, if source.join(compiled).exists() { compiled } else { "whisper-base/decoder.int8.onnx" });
    dir
}

fn bundle_dir() -> PathBuf {
    let out = lookout(&["models", "list", "--json"]);
    assert!(out.status.success(), "models list: {}", String::from_utf8_lossy(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let default = listing.as_array().unwrap().iter().find(|b| b["name"] == "default").expect("a default bundle");
    PathBuf::from(default["dir"].as_str().unwrap())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn clip() -> String {
    speech_index()[0].path()
}

#[test]
fn corrupt_model_file_is_named_with_its_hash() {
    let dir = damaged_bundle("corrupt", |dir, file| {
        let path = dir.join(file);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        fs::remove_file(&path).unwrap();
        fs::write(&path, bytes).unwrap();
    });
    let out = lookout(&["--models", dir.to_str().unwrap(), "transcribe", &clip(), "--variant", "int8"]);
    assert_fails(&out, BAD_MODELS, &["decoder.int8.", "sha256"]);
    let verify = lookout(&["--models", dir.to_str().unwrap(), "models", "verify"]);
    assert_eq!(verify.status.code(), Some(BAD_MODELS));
    let listing = String::from_utf8_lossy(&verify.stdout);
    assert!(
        listing.lines().any(|l| l.contains("decoder.int8.") && l.contains("expected")),
        "the damaged file is not flagged: {listing}"
    );
}

#[test]
fn missing_model_file_is_named() {
    let dir = damaged_bundle("missing", |dir, file| fs::remove_file(dir.join(file)).unwrap());
    let out = lookout(&["--models", dir.to_str().unwrap(), "transcribe", &clip(), "--variant", "int8"]);
    assert_fails(&out, BAD_MODELS, &["decoder.int8.", "missing"]);
}

#[test]
fn malformed_manifest() {
    let dir = damaged_bundle("manifest", |dir, _| {
        fs::write(dir.join("manifest.toml"), "format = 1\nname = [oops\n").unwrap()
    });
    let out = lookout(&["--models", dir.to_str().unwrap(), "transcribe", &clip()]);
    assert_fails(&out, BAD_MODELS, &["manifest.toml"]);
}

#[test]
fn absent_bundle() {
    let out = lookout(&["--models", "/nonexistent/models", "transcribe", &clip()]);
    assert_fails(&out, BAD_MODELS, &["/nonexistent/models"]);
}

#[test]
fn unknown_variant_lists_the_available_ones() {
    let out = lookout(&["transcribe", &clip(), "--variant", "int3"]);
    assert_fails(&out, BAD_MODELS, &["int3", "int8", "f32"]);
    let photo = testdata_dir().join("vision/photos/dog.jpg");
    let out = lookout(&["describe", photo.to_str().unwrap(), "--detector", "yolo"]);
    assert_fails(&out, BAD_MODELS, &["yolo", "centernet", "nanodet"]);
}

#[test]
fn unknown_language() {
    let out = lookout(&["transcribe", &clip(), "--language", "klingon"]);
    assert_fails(&out, BAD_INPUT, &["klingon"]);
}

fn describe(path: &Path) -> Output {
    lookout(&["describe", path.to_str().unwrap()])
}

#[test]
fn missing_image() {
    assert_fails(&describe(Path::new("/nonexistent/photo.jpg")), BAD_INPUT, &["/nonexistent/photo.jpg"]);
}

#[test]
fn file_that_is_not_an_image() {
    let dir = scratch("not-image");
    let path = dir.join("photo.jpg");
    fs::write(&path, "plain text pretending to be a photo\n").unwrap();
    assert_fails(&describe(&path), BAD_INPUT, &["photo.jpg"]);
}

/// A minimal PNG: signature and an IHDR chunk declaring `width` × `height`, then `rest`.
fn png_with_header(width: u32, height: u32, rest: &[u8]) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(&ihdr);
    bytes.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    bytes.extend_from_slice(rest);
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn image_declaring_a_huge_size_is_refused_before_decoding() {
    let dir = scratch("huge");
    let path = dir.join("huge.png");
    fs::write(&path, png_with_header(100_000, 100_000, &[])).unwrap();
    assert_fails(&describe(&path), BAD_INPUT, &["huge.png"]);
}

#[test]
fn zero_size_image() {
    let dir = scratch("zero-size");
    let path = dir.join("empty.png");
    fs::write(&path, png_with_header(0, 0, &[])).unwrap();
    assert_fails(&describe(&path), BAD_INPUT, &["empty.png"]);
}

#[test]
fn truncated_photo() {
    let photo = common::testdata_dir().join("vision/photos/dog.jpg");
    let bytes = fs::read(&photo).expect("dog.jpg in the test data");
    let dir = scratch("truncated-photo");
    let path = dir.join("cut.jpg");
    fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    assert_fails(&describe(&path), BAD_INPUT, &["cut.jpg", "truncated"]);
    let text = common::testdata_dir().join("vision/text/sign.png");
    let bytes = fs::read(&text).unwrap();
    let path = dir.join("cut.png");
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&describe(&path), BAD_INPUT, &["cut.png", "truncated"]);
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    // `lookout models list | head -0`: the pipe closes before the table is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["models", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
}

//! Shared helpers for the integration tests: running the binary, locating the prepared test data, scoring text.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// A deadline for something the binary must do, stretched by `$LOOKOUT_TEST_PATIENCE` (a factor, default 1)
/// where it runs under emulation: cross/test.sh sets it for qemu-user, which runs the models some 20 times slower
/// (and a frame waits behind the caption of the one before).
pub fn patience(deadline: Duration) -> Duration {
    let factor = std::env::var("LOOKOUT_TEST_PATIENCE").ok().and_then(|f| f.parse::<f64>().ok()).filter(|f| *f >= 1.0);
    deadline.mul_f64(factor.unwrap_or(1.0))
}

/// `--text-budget` for commands whose assertions need every line of a sign read: the default 4 s, stretched as
/// [`patience`] stretches deadlines (emulated, PP-OCR outlasts the default on a two-line sign).
pub fn text_budget_arg() -> String {
    patience(Duration::from_secs(4)).as_secs_f32().min(600.0).to_string()
}

/// Runs the `lookout` binary built for these tests.
pub fn lookout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lookout")).args(args).output().expect("run lookout")
}

/// Runs `lookout` with extra environment variables.
pub fn lookout_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lookout"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lookout")
}

/// The test data written by the model preparation: `$LOOKOUT_TESTDATA`, else `<workspace>/.cache/testdata`.
pub fn testdata_dir() -> PathBuf {
    let dir = std::env::var_os("LOOKOUT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/testdata"));
    assert!(dir.is_dir(), "test data missing at {} (run models/prepare/prepare.sh first)", dir.display());
    dir
}

/// One speech clip with its reference transcript and onnxruntime's token sequences.
pub struct Clip {
    pub file: String,
    pub text: String,
    pub duration_s: f64,
    pub entry: Value,
}

impl Clip {
    pub fn path(&self) -> String {
        testdata_dir().join("speech").join(&self.file).to_string_lossy().into_owned()
    }

    pub fn reference_tokens(&self, variant: &str) -> Vec<u64> {
        self.entry["decode"][variant]["tokens"]
            .as_array()
            .unwrap_or_else(|| panic!("no onnxruntime {variant} tokens (decode.{variant}.tokens) for {}", self.file))
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect()
    }

    /// The steps of onnxruntime's greedy decode where its top two logits were less than [`TIE_LOGITS`] apart, each
    /// with the runner-up: a tie that another CPU's order of summation may break the other way (step
    /// `tokens.len()` is the choice to end). Empty for clips longer than one window, which have no reference decode.
    pub fn reference_ties(&self, variant: &str) -> Vec<(usize, u64)> {
        let decode = &self.entry["decode"][variant];
        let (Some(gaps), Some(runners_up)) = (decode["gap"].as_array(), decode["runner_up"].as_array()) else {
            return Vec::new();
        };
        let ties = gaps.iter().zip(runners_up).enumerate().filter(|(_, (gap, _))| gap.as_f64().unwrap() < TIE_LOGITS);
        ties.map(|(step, (_, runner_up))| (step, runner_up.as_u64().unwrap())).collect()
    }
}

/// Two logits closer than this are a tie that another CPU may break the other way. f32 sums differ only in their
/// order; int8 (Q8_0 blocks) is referenced by onnxruntime running exactly the values its blocks hold, which Lookout's
/// block products match within 2e-3 (decoding steps round activations to 16 bits per block of 32).
const TIE_LOGITS: f64 = 0.02;

pub fn speech_index() -> Vec<Clip> {
    let path = testdata_dir().join("speech/index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let entries: Vec<Value> = serde_json::from_str(&text).expect("speech index is JSON");
    assert!(!entries.is_empty());
    entries
        .into_iter()
        .map(|e| Clip {
            file: e["file"].as_str().unwrap().to_string(),
            text: e["text"].as_str().unwrap().to_string(),
            duration_s: e["duration_s"].as_f64().unwrap(),
            entry: e,
        })
        .collect()
}

/// Lower case, letters, digits and single spaces only.
pub fn normalize(text: &str) -> String {
    let kept: String = text.chars().map(|c| if c.is_alphanumeric() { c.to_ascii_lowercase() } else { ' ' }).collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Word error rate of `hypothesis` against `reference`, after normalization.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r: Vec<String> = normalize(reference).split(' ').filter(|w| !w.is_empty()).map(str::to_string).collect();
    let h: Vec<String> = normalize(hypothesis).split(' ').filter(|w| !w.is_empty()).map(str::to_string).collect();
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = prev + usize::from(rw != hw);
            prev = row[j + 1];
            row[j + 1] = sub.min(row[j] + 1).min(prev + 1);
        }
    }
    row[h.len()] as f64 / r.len().max(1) as f64
}

/// A test's own directory under the system's temporary one, emptied when made and removed when dropped (it may hold
/// copies of models, photos and recordings).
pub struct Scratch(PathBuf);

impl Scratch {
    /// `lookout-NAME-PID` in the temporary directory.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lookout-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `board = ...` line of a daemon test's configuration: the development machine's profile, made for this build
/// (a cross build run under qemu-user would be refused the x86 profile as shipped). Written once per test process,
/// so that no daemon reads it while another test rewrites it.
pub fn test_machine_board() -> String {
    static PROFILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let profile = PROFILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lookout-test-machine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        lookout::board::development_profile_for_this_build(&dir).unwrap()
    });
    format!("board = \"{}\"", profile.display())
}

//! Tests of the audio front-end, with helpers for fixtures and reference arrays.

mod decode;
mod mel;
mod resample;

use std::path::{Path, PathBuf};

use crate::npy::read_f32 as read_npy_f32;

/// A file committed under `models/tests/fixtures`.
fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// Root of the generated reference data: `$LOOKOUT_TESTDATA`, else `<workspace>/.cache/testdata`.
fn testdata_dir() -> PathBuf {
    match std::env::var_os("LOOKOUT_TESTDATA") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(".cache").join("testdata"),
    }
}

/// A reference file under the test data root; panics with a clear message when it is absent.
fn require_testdata(relative: &str) -> PathBuf {
    let path = testdata_dir().join(relative);
    assert!(
        path.is_file(),
        "reference file {} is missing: run models/prepare/prepare.sh, or set LOOKOUT_TESTDATA to a directory holding it",
        path.display()
    );
    path
}

/// Largest absolute difference between two equally long slices.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

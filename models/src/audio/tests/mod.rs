//! Tests of the audio front-end, with helpers for fixtures and reference arrays.

mod decode;
mod mel;
mod resample;

use std::path::{Path, PathBuf};

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

/// A little-endian f32 `.npy` array: its shape and its values in C order.
struct NpyArray {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn read_npy_f32(path: &Path) -> Result<NpyArray, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not a .npy file", path.display()));
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        version => return Err(format!("{}: unsupported .npy version {version}", path.display())),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| format!("{}: unreadable .npy header", path.display()))?;
    if !header.contains("'descr': '<f4'") {
        return Err(format!("{}: expected little-endian f32, header {header}", path.display()));
    }
    if !header.contains("'fortran_order': False") {
        return Err(format!("{}: Fortran-ordered arrays are not handled", path.display()));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| format!("{}: no shape in header {header}", path.display()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| format!("shape {shape_text}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let data = &bytes[data_start..];
    if data.len() != count * 4 {
        return Err(format!("{}: {} data bytes for shape {shape:?}", path.display(), data.len()));
    }
    let values = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(NpyArray { shape, values })
}

/// Largest absolute difference between two equally long slices.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

//! Reading the little-endian f32 `.npy` files the model preparation writes as reference outputs and the vision
//! bench writes as input tensors (for the tests and developer tools that compare against them).

use std::path::Path;

/// A little-endian f32 `.npy` array: its shape and its values in C order.
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Reads a little-endian f32 `.npy` file (version 1 to 3, C order).
pub fn read_f32(path: &Path) -> Result<NpyArray, String> {
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

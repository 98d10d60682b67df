//! GGUF reader: header, metadata and tensor directory of a GGUF v2/v3 file, with every size bounded and every
//! tensor's data checked to lie inside the file, so a corrupt or truncated file is an error, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Why a GGUF file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a GGUF file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}` needs bytes {start}..{end} but the file has {len}: the file is truncated")]
    Truncated { path: PathBuf, tensor: String, start: u64, end: u64, len: u64 },
    #[error("{path}: architecture `{found}` is not supported (supported: {supported})")]
    UnsupportedArchitecture { path: PathBuf, found: String, supported: String },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

impl From<GgufError> for crate::error::ModelError {
    fn from(e: GgufError) -> Self {
        crate::error::ModelError::BadGguf(e.to_string())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

/// One entry of the tensor directory; `dims` are in GGUF order (fastest-varying first).
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Absolute position of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

/// A parsed GGUF file (metadata and directory; tensor data stays on disk).
#[derive(Debug)]
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

// Bounds that keep a corrupt header from asking for absurd allocations.
const MAX_STRING: u64 = 1 << 24;
const MAX_ARRAY: u64 = 1 << 24;
const MAX_ENTRIES: u64 = 1 << 16;
const MAX_DIMS: u32 = 4;

/// Block size (elements) and bytes per block of the ggml tensor types this reader can size.
fn type_layout(ggml_type: u32) -> Option<(u64, u64, &'static str)> {
    Some(match ggml_type {
        0 => (1, 4, "F32"),
        1 => (1, 2, "F16"),
        2 => (32, 18, "Q4_0"),
        3 => (32, 20, "Q4_1"),
        6 => (32, 22, "Q5_0"),
        7 => (32, 24, "Q5_1"),
        8 => (32, 34, "Q8_0"),
        10 => (256, 84, "Q2_K"),
        11 => (256, 110, "Q3_K"),
        12 => (256, 144, "Q4_K"),
        13 => (256, 176, "Q5_K"),
        14 => (256, 210, "Q6_K"),
        30 => (1, 2, "BF16"),
        _ => return None,
    })
}

/// The name of a ggml tensor type, for messages.
pub fn type_name(ggml_type: u32) -> String {
    type_layout(ggml_type).map(|(_, _, n)| n.to_string()).unwrap_or_else(|| format!("type {ggml_type}"))
}

struct Cursor<R: Read> {
    inner: R,
    pos: u64,
    /// The file's length: every count read is checked against the bytes left before anything is sized from it.
    len: u64,
    path: PathBuf,
}

/// Fewest bytes one metadata value of each type takes in the file.
fn min_value_bytes(kind: u32) -> u64 {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl<R: Read> Cursor<R> {
    fn bad(&self, reason: impl Into<String>) -> GgufError {
        GgufError::Malformed { path: self.path.clone(), reason: reason.into() }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| self.bad(format!("file ends inside the header at byte {}", self.pos)))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count of `what`, each taking at least `min_bytes` of the file: refused when above `max` or when the bytes
    /// left cannot hold that many.
    fn count(&mut self, what: &str, max: u64, min_bytes: u64) -> Result<u64> {
        let n = self.u64()?;
        if n > max {
            return Err(self.bad(format!("{what} {n} exceeds {max}")));
        }
        let left = self.len.saturating_sub(self.pos);
        if n.saturating_mul(min_bytes) > left {
            return Err(self.bad(format!("{what} {n} needs more than the {left} bytes left in the file")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let len = self.count("string length", MAX_STRING, 1)?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|_| self.bad("file ends inside a string"))?;
        self.pos += len;
        String::from_utf8(buf).map_err(|_| self.bad("a string is not UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: u32) -> Result<Value> {
        Ok(match kind {
            0 => Value::Uint(self.bytes::<1>()?[0] as u64),
            1 => Value::Int(self.bytes::<1>()?[0] as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.bytes()?) as u64),
            3 => Value::Int(i16::from_le_bytes(self.bytes()?) as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(i32::from_le_bytes(self.bytes()?) as i64),
            6 => Value::Float(f32::from_le_bytes(self.bytes()?) as f64),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.bad("arrays nested too deeply"));
                }
                let item_kind = self.u32()?;
                let n = self.count("array length", MAX_ARRAY, min_value_bytes(item_kind))?;
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(item_kind, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

impl Gguf {
    /// Reads the header, metadata and tensor directory of `path` and checks every tensor's extent.
    pub fn open(path: &Path) -> Result<Gguf> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut cur = Cursor { inner: BufReader::new(file), pos: 0, len: file_len, path: path.to_path_buf() };
        if &cur.bytes::<4>()? != b"GGUF" {
            return Err(cur.bad("missing the GGUF magic"));
        }
        let version = cur.u32()?;
        if !(2..=3).contains(&version) {
            return Err(cur.bad(format!("GGUF version {version} (2 and 3 are supported)")));
        }
        // A tensor's directory entry takes at least 32 bytes (name length, one dimension, type, offset), a metadata
        // entry 13 (key length, type, a one-byte value).
        let n_tensors = cur.count("tensor count", MAX_ENTRIES, 32)?;
        let n_kv = cur.count("metadata count", MAX_ENTRIES, 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = cur.string()?;
            let kind = cur.u32()?;
            let value = cur.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = cur.string()?;
            let n_dims = cur.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(cur.bad(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| cur.u64()).collect::<Result<Vec<_>>>()?;
            let ggml_type = cur.u32()?;
            let offset = cur.u64()?;
            let (block, block_bytes, _) = type_layout(ggml_type).ok_or_else(|| GgufError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` has unknown ggml type {ggml_type}"),
            })?;
            let elements = dims.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d));
            let bytes = elements
                .filter(|e| *e > 0 && dims[0] % block == 0)
                .and_then(|e| (e / block).checked_mul(block_bytes))
                .ok_or_else(|| {
                    cur.bad(format!("tensor `{name}` has invalid dimensions {dims:?} for {}", type_name(ggml_type)))
                })?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset, bytes });
        }
        let alignment = match metadata.get("general.alignment") {
            Some(Value::Uint(a)) if a.is_power_of_two() => *a,
            None => 32,
            Some(other) => return Err(cur.bad(format!("invalid general.alignment {other:?}"))),
        };
        let data_start = cur.pos.div_ceil(alignment) * alignment;
        for t in &mut tensors {
            let start = data_start.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => t.offset = start,
                (start, end) => {
                    return Err(GgufError::Truncated {
                        path: path.to_path_buf(),
                        tensor: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len: file_len,
                    })
                }
            }
        }
        Ok(Gguf { path: path.to_path_buf(), version, metadata, tensors })
    }

    fn missing(&self, key: &str, what: &str) -> GgufError {
        GgufError::Malformed { path: self.path.clone(), reason: format!("metadata `{key}` is missing or not {what}") }
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        match self.metadata.get(key) {
            Some(Value::Str(s)) => Ok(s),
            _ => Err(self.missing(key, "a string")),
        }
    }

    pub fn uint(&self, key: &str) -> Result<u64> {
        match self.metadata.get(key) {
            Some(Value::Uint(n)) => Ok(*n),
            Some(Value::Int(n)) if *n >= 0 => Ok(*n as u64),
            _ => Err(self.missing(key, "a non-negative integer")),
        }
    }

    pub fn float(&self, key: &str) -> Result<f64> {
        match self.metadata.get(key) {
            Some(Value::Float(x)) => Ok(*x),
            _ => Err(self.missing(key, "a number")),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.metadata.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.as_str()),
                    _ => Err(self.missing(key, "an array of strings")),
                })
                .collect(),
            _ => Err(self.missing(key, "an array of strings")),
        }
    }

    pub fn ints(&self, key: &str) -> Result<Vec<i64>> {
        match self.metadata.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Int(n) => Ok(*n),
                    Value::Uint(n) => Ok(*n as i64),
                    _ => Err(self.missing(key, "an array of integers")),
                })
                .collect(),
            _ => Err(self.missing(key, "an array of integers")),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Hyperparameters of a Llama-architecture decoder, read and checked from GGUF metadata and tensor shapes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
}

pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];
/// Tensors each decoder layer has: two norms, four attention projections, three feed-forward projections.
const TENSORS_PER_LAYER: usize = 9;

impl LlamaConfig {
    /// Checks the architecture, the hyperparameters and the presence and shape of every tensor a decoder needs.
    pub fn from_gguf(gguf: &Gguf) -> Result<LlamaConfig> {
        let arch = gguf.str("general.architecture")?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(GgufError::UnsupportedArchitecture {
                path: gguf.path.clone(),
                found: arch.to_string(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let bad = |reason: String| GgufError::Malformed { path: gguf.path.clone(), reason };
        let usize_of = |k: &str| {
            let n = gguf.uint(&key(k))?;
            usize::try_from(n).map_err(|_| bad(format!("`{}` is {n}, more than this machine can address", key(k))))
        };
        let n_heads = usize_of("attention.head_count")?;
        let d_model = usize_of("embedding_length")?;
        let config = LlamaConfig {
            n_layers: usize_of("block_count")?,
            d_model,
            d_ff: usize_of("feed_forward_length")?,
            n_heads,
            n_kv_heads: usize_of("attention.head_count_kv").unwrap_or(n_heads),
            head_dim: d_model.checked_div(n_heads).unwrap_or(0),
            n_vocab: gguf.strings("tokenizer.ggml.tokens")?.len(),
            n_ctx_train: usize_of("context_length")?,
            rope_theta: gguf.float(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: gguf.float(&key("attention.layer_norm_rms_epsilon"))?,
        };
        // Each layer needs nine tensors: checked before the list of expected tensors is built from the count.
        if config.n_layers > gguf.tensors.len() / TENSORS_PER_LAYER {
            return Err(bad(format!(
                "`{}` is {}, but the file holds {} tensors ({TENSORS_PER_LAYER} a layer)",
                key("block_count"),
                config.n_layers,
                gguf.tensors.len()
            )));
        }
        if config.n_layers == 0
            || config.n_heads == 0
            || config.n_kv_heads == 0
            || !config.d_model.is_multiple_of(config.n_heads)
            || !config.n_heads.is_multiple_of(config.n_kv_heads)
        {
            return Err(bad(format!("inconsistent hyperparameters {config:?}")));
        }
        let (d, kv, ff, v) = (
            config.d_model as u64,
            (config.n_kv_heads * config.head_dim) as u64,
            config.d_ff as u64,
            config.n_vocab as u64,
        );
        let mut expected: Vec<(String, Vec<u64>)> =
            vec![("token_embd.weight".into(), vec![d, v]), ("output_norm.weight".into(), vec![d])];
        for n in 0..config.n_layers {
            let p = format!("blk.{n}.");
            expected.extend([
                (format!("{p}attn_norm.weight"), vec![d]),
                (format!("{p}attn_q.weight"), vec![d, d]),
                (format!("{p}attn_k.weight"), vec![d, kv]),
                (format!("{p}attn_v.weight"), vec![d, kv]),
                (format!("{p}attn_output.weight"), vec![d, d]),
                (format!("{p}ffn_norm.weight"), vec![d]),
                (format!("{p}ffn_gate.weight"), vec![d, ff]),
                (format!("{p}ffn_up.weight"), vec![d, ff]),
                (format!("{p}ffn_down.weight"), vec![ff, d]),
            ]);
        }
        for (name, dims) in expected {
            let tensor = gguf.tensor(&name).ok_or_else(|| bad(format!("tensor `{name}` is missing")))?;
            if tensor.dims != dims {
                return Err(bad(format!("tensor `{name}` has shape {:?}, expected {dims:?}", tensor.dims)));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file of metadata only, declaring `n_tensors` tensors it does not hold.
    fn gguf_bytes(n_tensors: u64, metadata: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&n_tensors.to_le_bytes());
        bytes.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, kind, value) in metadata {
            bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
            bytes.extend_from_slice(key.as_bytes());
            bytes.extend_from_slice(&kind.to_le_bytes());
            bytes.extend_from_slice(value);
        }
        bytes
    }

    fn string_value(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn open(name: &str, bytes: &[u8]) -> Result<Gguf> {
        let path = std::env::temp_dir().join(format!("lookout-gguf-{}-{name}.gguf", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let result = Gguf::open(&path);
        std::fs::remove_file(&path).unwrap();
        result
    }

    fn reason(error: GgufError) -> String {
        match error {
            GgufError::Malformed { reason, .. } => reason,
            other => panic!("expected a malformed-file error, got {other:?}"),
        }
    }

    #[test]
    fn a_block_count_the_file_cannot_hold_is_refused_before_anything_is_sized_from_it() {
        let u32_value = |n: u32| n.to_le_bytes().to_vec();
        let mut tokens = 8u32.to_le_bytes().to_vec();
        tokens.extend_from_slice(&1u64.to_le_bytes());
        tokens.extend_from_slice(&string_value("a"));
        let bytes = gguf_bytes(
            0,
            &[
                ("general.architecture", 8, string_value("llama")),
                ("llama.block_count", 10, (1u64 << 40).to_le_bytes().to_vec()),
                ("llama.attention.head_count", 4, u32_value(1)),
                ("llama.embedding_length", 4, u32_value(1)),
                ("llama.feed_forward_length", 4, u32_value(1)),
                ("llama.context_length", 4, u32_value(1)),
                ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5f32.to_le_bytes().to_vec()),
                ("tokenizer.ggml.tokens", 9, tokens),
            ],
        );
        assert!(bytes.len() < 400, "{} bytes", bytes.len());
        let gguf = open("layers", &bytes).unwrap();
        let error = reason(LlamaConfig::from_gguf(&gguf).unwrap_err());
        // A 32-bit build cannot even hold the count as a size; a 64-bit one finds that the file lacks the tensors.
        let expected = if cfg!(target_pointer_width = "32") {
            "`llama.block_count` is 1099511627776, more than this machine can address"
        } else {
            "`llama.block_count` is 1099511627776, but the file holds 0 tensors (9 a layer)"
        };
        assert_eq!(error, expected);
    }

    #[test]
    fn counts_are_checked_against_the_bytes_left() {
        let error = reason(open("tensors", &gguf_bytes(60_000, &[])).unwrap_err());
        assert_eq!(error, "tensor count 60000 needs more than the 8 bytes left in the file");
        let mut array = 10u32.to_le_bytes().to_vec(); // of u64 values
        array.extend_from_slice(&(1u64 << 20).to_le_bytes());
        let error = reason(open("array", &gguf_bytes(0, &[("big", 9, array)])).unwrap_err());
        assert_eq!(error, "array length 1048576 needs more than the 0 bytes left in the file");
        let error =
            reason(open("string", &gguf_bytes(0, &[("s", 8, (1u64 << 24).to_le_bytes().to_vec())])).unwrap_err());
        assert_eq!(error, "string length 16777216 needs more than the 0 bytes left in the file");
    }
}

//! The models crate's error type: every failure a caller can act on, with the file or component named.

use std::path::PathBuf;

use crate::audio::AudioError;

/// What went wrong while finding, checking, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no model bundle at {0} (run models/prepare/prepare.sh, or point --models / LOOKOUT_MODELS at a bundle)")]
    BundleNotFound(PathBuf),
    #[error("cannot read bundle manifest {path}: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error("bundle has no {role} component{}", variant.as_ref().map(|v| format!(" of variant `{v}` (available: {available})")).unwrap_or_default())]
    NoComponent { role: String, variant: Option<String>, available: String },
    #[error("model file missing for component `{component}`: {path}")]
    MissingFile { component: String, path: PathBuf },
    #[error("model file corrupt for component `{component}`: {path}: sha256 is {actual}, manifest says {expected}")]
    HashMismatch { component: String, path: PathBuf, expected: String, actual: String },
    #[error("model file for component `{component}` has {actual} bytes, manifest says {expected}: {path}")]
    SizeMismatch { component: String, path: PathBuf, expected: u64, actual: u64 },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("component `{component}`: missing or invalid parameter `{param}` in the manifest")]
    BadParam { component: String, param: String },
    #[error("compiled graph of component `{component}` is stale: {path}: {reason}; rebuild it with models/prepare/prepare.sh")]
    StaleCompiled { component: String, path: PathBuf, reason: String },
    #[error("cannot load component `{component}` into the engine: {reason}")]
    Load { component: String, reason: String },
    #[error("component `{component}` failed while running: {reason}")]
    Run { component: String, reason: String },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    InvalidToken { id: i64, vocab: usize },
    #[error("tokenizer {path}: {reason}")]
    BadTokenizer { path: PathBuf, reason: String },
    #[error("unknown language `{0}` (use an ISO code the model knows, such as en, de, fr)")]
    UnknownLanguage(String),
    #[error("GGUF: {0}")]
    BadGguf(String),
    #[error(
        "the prompt has {tokens} tokens but the context holds {capacity} (prompt and answer together); shorten it"
    )]
    PromptTooLong { tokens: usize, capacity: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// The caller asked the work to stop before it finished.
    #[error("stopped before it finished")]
    Cancelled,
}

impl ModelError {
    pub(crate) fn load(component: &str, err: impl std::fmt::Display) -> Self {
        ModelError::Load { component: component.to_string(), reason: format!("{err:#}") }
    }
    pub(crate) fn run(component: &str, err: impl std::fmt::Display) -> Self {
        ModelError::Run { component: component.to_string(), reason: format!("{err:#}") }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

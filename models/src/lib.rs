//! Lookout's models: bundles and their manifests, audio preprocessing, and the encoders and decoders that run
//! through tract. This is the only crate that talks to the engine.

pub mod allocations;
pub mod audio;
pub mod bundle;
pub mod compile;
pub mod engine;
pub mod error;
pub mod llm;
pub mod npy;
pub mod speech;
pub mod tokenizer;
pub mod vad;
pub mod vision;
pub mod whisper;

pub use error::{ModelError, Result};

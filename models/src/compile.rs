//! Compiled graphs: every graph of a bundle written once as tract's NNEF archive of the prepared model (parsed,
//! typed, decluttered, transformed) next to its ONNX file, and recorded in the manifest with the source file and
//! engine version it came from, so that loading it leaves only kernel selection and weight packing.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::bundle::{sha256_file, Bundle, Compiled, Component};
use crate::engine::{self, GraphSpec, COMPILED_ROLES};
use crate::error::{ModelError, Result};
use crate::llm::LanguageModel;
use crate::vad::SileroVad;
use crate::vision::encoders::image_graph_spec;
use crate::whisper::Whisper;

/// What compiling one component did.
#[derive(Debug, Clone, Serialize)]
pub struct CompileReport {
    pub component: String,
    pub file: String,
    /// `compiled`, or `up to date` when the manifest already names a compiled form of this source and engine.
    pub status: &'static str,
    pub bytes: u64,
    pub ms: f64,
}

/// Compiles every component of a compiled role that has no current compiled form (all of them with `force`), and
/// records each in the manifest. Measured footprints are dropped when anything was compiled: the loading peak
/// changes.
pub fn compile_bundle(bundle: &mut Bundle, force: bool) -> Result<Vec<CompileReport>> {
    let mut reports = Vec::new();
    for ix in 0..bundle.manifest.components.len() {
        let component = &bundle.manifest.components[ix];
        if !COMPILED_ROLES.contains(&component.role.as_str()) {
            continue;
        }
        if !force && matches!(bundle.checked_compiled_path(component, engine::ENGINE), Ok(Some(_))) {
            let compiled = component.compiled.as_ref().expect("checked above");
            reports.push(CompileReport {
                component: component.name.clone(),
                file: compiled.file.clone(),
                status: "up to date",
                bytes: compiled.bytes,
                ms: 0.0,
            });
            continue;
        }
        let file = compiled_file_name(&component.file);
        let out = bundle.dir.join(&file);
        let started = Instant::now();
        let spec = graph_spec(bundle, component)?;
        engine::compile(&component.name, &bundle.checked_path(component)?, &spec, &out)?;
        let io = |source| ModelError::Io { path: out.clone(), source };
        let bytes = std::fs::metadata(&out).map_err(io)?.len();
        let sha256 = sha256_file(&out).map_err(io)?;
        let compiled = Compiled {
            file: file.clone(),
            sha256,
            bytes,
            source_sha256: component.sha256.clone(),
            engine: engine::ENGINE.to_string(),
        };
        reports.push(CompileReport {
            component: component.name.clone(),
            file,
            status: "compiled",
            bytes,
            ms: started.elapsed().as_secs_f64() * 1e3,
        });
        // Recorded at once, so that a later component's failure leaves every written archive in the manifest.
        bundle.manifest.components[ix].compiled = Some(compiled);
        bundle.manifest.footprints.clear();
        bundle.write_manifest()?;
    }
    Ok(reports)
}

/// How the loader of a component's role declares its graph.
fn graph_spec(bundle: &Bundle, component: &Component) -> Result<GraphSpec> {
    match component.role.as_str() {
        "llm-decoder" => LanguageModel::graph_spec(bundle, component),
        "asr-encoder" => Whisper::encoder_spec(component),
        "asr-decoder" => Whisper::decoder_spec(component),
        "vad" => SileroVad::graph_spec(component),
        "object-detector" | "scene-classifier" | "ocr-detector" | "ocr-recognizer" => image_graph_spec(component),
        role => Err(ModelError::load(&component.name, format!("no graph of role {role} is compiled"))),
    }
}

/// `dir/decoder.q4.onnx` → `dir/decoder.q4.nnef.tar`.
fn compiled_file_name(source: &str) -> String {
    let path = Path::new(source);
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(source);
    let name = format!("{stem}.nnef.tar");
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => format!("{}/{name}", parent.display()),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_files_sit_next_to_their_source() {
        assert_eq!(compiled_file_name("smollm/decoder.q4.onnx"), "smollm/decoder.q4.nnef.tar");
        assert_eq!(compiled_file_name("decoder.onnx"), "decoder.nnef.tar");
    }

    #[test]
    fn engine_names_the_tract_in_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"tract-nnef\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"'))
            .unwrap();
        assert!(engine::ENGINE.starts_with(&format!("tract {version},")), "{} is not tract {version}", engine::ENGINE);
    }
}

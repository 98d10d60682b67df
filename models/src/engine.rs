//! The one door to the tract engine: load an ONNX graph with declared input facts, optimize it once, run it
//! through reusable per-stream states, and turn engine failures (panics included) into typed errors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::error::{ModelError, Result};

pub use tract_onnx::prelude::{DatumType, TValue, Tensor};

/// One dimension of a declared input: a fixed size, a named symbol resolved at run time, or an expression over
/// symbols (`P+S`).
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Fixed(usize),
    Symbol(&'static str),
    Expr(&'static str),
}

/// An optimized graph, loaded once and shared by every state that runs it.
pub struct Graph {
    component: String,
    plan: Arc<TypedSimplePlan>,
}

/// Per-stream execution state of a [`Graph`]: reuse one per stream.
pub struct GraphState {
    component: String,
    state: TypedSimpleState,
}

impl Graph {
    /// Loads `path`, declares each input's type and shape, and optimizes the graph for this CPU.
    pub fn load(component: &str, path: &Path, inputs: &[(DatumType, &[Dim])]) -> Result<Graph> {
        Graph::load_with_transforms(component, path, inputs, &[])
    }

    /// Like [`Graph::load`], applying tract model transforms by name (such as `transformers_detect_all`, which turns
    /// past/present KV pairs into a KV cache kept in the state) between decluttering and optimization.
    pub fn load_with_transforms(
        component: &str,
        path: &Path,
        inputs: &[(DatumType, &[Dim])],
        transforms: &[&str],
    ) -> Result<Graph> {
        let plan = guard(component, || {
            let mut model = prepare(path, inputs, transforms)?;
            model.optimize()?;
            model.into_runnable()
        })
            .map_err(|e| ModelError::load(component, e))?;
        Ok(Graph { component: component.to_string(), plan })
    }

    /// Loads a graph compiled by [`compile`]: only kernel selection and weight packing are left to do.
    pub fn load_compiled(component: &str, path: &Path) -> Result<Graph> {
        let load = || -> TractResult<Arc<TypedSimplePlan>> {
            let mut model = nnef_framework().model_for_path(path)?;
            model.optimize()?;
            model.into_runnable()
        };
        let plan = guard(component, load).map_err(|e| ModelError::load(component, format!("{}: {e:#}", path.display())))?;
        Ok(Graph { component: component.to_string(), plan })
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    /// The names of the inputs the optimized graph takes, in order.
    pub fn input_names(&self) -> Vec<String> {
        let model = self.plan.model();
        model.inputs.iter().map(|outlet| model.node(outlet.node).name.clone()).collect()
    }

    /// A fresh execution state; keep it and reuse it for every run of one stream.
    pub fn new_state(&self) -> Result<GraphState> {
        let state = TypedSimpleState::new(&self.plan).map_err(|e| ModelError::load(&self.component, e))?;
        Ok(GraphState { component: self.component.clone(), state })
    }
}

impl GraphState {
    pub fn run(&mut self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let state = &mut self.state;
        guard(&self.component, || state.run(inputs)).map_err(|e| ModelError::run(&self.component, e))
    }
}

/// The engine a compiled graph must come from: the tract this crate is built with (pinned in Cargo.toml).
pub const ENGINE: &str = "tract 0.23.9";

/// Parses an ONNX graph, declares its inputs, declutters it and applies the named model transforms: everything
/// before optimization, which is what a compiled graph holds.
fn prepare(path: &Path, inputs: &[(DatumType, &[Dim])], transforms: &[&str]) -> TractResult<TypedModel> {
    let mut model = tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_value_info(true).model_for_path(path)?;
    for (ix, (dtype, dims)) in inputs.iter().enumerate() {
        let shape: TVec<TDim> = dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Ok(TDim::from(*n)),
                Dim::Symbol(name) => Ok(model.symbols.sym(name).into()),
                Dim::Expr(expr) => model.symbols.parse_tdim(expr),
            })
            .collect::<TractResult<_>>()?;
        model.set_input_fact(ix, InferenceFact::dt_shape(*dtype, shape))?;
    }
    let mut typed = model.into_typed()?.into_decluttered()?;
    for name in transforms {
        let transform = tract_onnx::tract_core::transform::get_transform(name)?
            .ok_or_else(|| anyhow::anyhow!("unknown model transform {name}"))?;
        transform.transform(&mut typed)?;
    }
    if !transforms.is_empty() {
        typed.declutter()?; // what the transforms fused leaves patterns for the declutter passes
    }
    Ok(typed)
}

fn nnef_framework() -> tract_nnef::framework::Nnef {
    use tract_transformers::WithTractTransformers;
    tract_nnef::nnef().with_tract_transformers().with_onnx()
}

/// Compiles an ONNX graph (inputs declared and transforms applied as [`Graph::load_with_transforms`] does) into
/// `out`, tract's NNEF archive, which [`Graph::load_compiled`] loads without parsing, typing or decluttering.
/// Written to a temporary file renamed over `out`, so a failure never leaves a partial archive.
pub fn compile(component: &str, path: &Path, inputs: &[(DatumType, &[Dim])], transforms: &[&str], out: &Path) -> Result<()> {
    let temporary = out.with_extension("part");
    let write = || -> TractResult<()> {
        let model = prepare(path, inputs, transforms)?;
        let file = std::io::BufWriter::new(std::fs::File::create(&temporary)?);
        nnef_framework().write_to_tar(&model, file)?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&temporary, out)?;
        Ok(())
    };
    guard(component, write).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        ModelError::load(component, format!("compiling {} into {}: {e:#}", path.display(), out.display()))
    })
}

/// Runs engine code, turning a panic inside the engine into an error instead of aborting the process.
fn guard<T>(component: &str, f: impl FnOnce() -> TractResult<T>) -> TractResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(anyhow::anyhow!("engine fault in {component}: {what}"))
        }
    }
}

/// Sets how many threads every graph's matrix products use from now on, process-wide; `0` and `1` mean a single
/// thread. Returns the count in effect: a pool that cannot be started leaves a single thread.
pub fn set_threads(n: usize) -> usize {
    use tract_linalg::multithread::{set_default_executor, Executor};
    // Flash attention spreads its heads over rayon's global pool whatever the executor says.
    tract_transformers::ops::flash_sdpa::TRACT_FLASH_SDPA_ST.set(n <= 1);
    if n <= 1 {
        set_default_executor(Executor::SingleThread);
        return 1;
    }
    match catch_unwind(|| Executor::multithread(n)) {
        Ok(executor) => {
            set_default_executor(executor);
            n
        }
        Err(_) => {
            set_default_executor(Executor::SingleThread);
            1
        }
    }
}

/// Builds an input tensor from a shape and data.
pub fn tensor<T: tract_onnx::prelude::Datum + Copy>(shape: &[usize], data: &[T]) -> Result<TValue> {
    Tensor::from_shape(shape, data)
        .map(|t| t.into_tvalue())
        .map_err(|e| ModelError::run("input", e))
}

/// Reads an output tensor as a flat f32 slice.
pub fn f32_slice<'t>(component: &str, value: &'t TValue) -> Result<&'t [f32]> {
    value
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .map_err(|e| ModelError::run(component, e))
}

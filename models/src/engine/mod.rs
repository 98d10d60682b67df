//! The one door to the tract engine: load a bundle component's graph (its compiled form when there is one, else
//! its ONNX file with declared input facts), optimize it once, run it through reusable per-stream states, and turn
//! engine failures (panics included) into typed errors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::bundle::{Bundle, Component};
use crate::error::{ModelError, Result};

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx512_products;
pub mod block_quant;
mod depthwise;
mod depthwise_x86;
mod direct_conv;
mod epilogue;
mod layout_forms;
mod max_pool;
mod nnef_ops;
mod pad;
mod pointwise;
mod resize;
#[cfg(test)]
mod test_graphs;
mod top_k;
mod weight_rows;
mod workers;

pub use tract_onnx::prelude::{DatumType, TValue, TVec, Tensor};

/// One dimension of a declared input: a fixed size, a named symbol resolved at run time, or an expression over
/// symbols (`P+S`).
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Fixed(usize),
    Symbol(&'static str),
    Expr(&'static str),
}

/// How a component's graph is declared to the engine: each input's type and shape, in order, and the tract model
/// transforms applied between decluttering and optimization (such as `transformers_detect_all`, which turns
/// past/present KV pairs into a KV cache kept in the run state), and whether products over constant f32 weights
/// read them as rows in place (see [`GraphSpec::with_weight_rows`]). Loading from ONNX and compiling use the same
/// spec.
#[derive(Debug, Clone)]
pub struct GraphSpec {
    pub inputs: Vec<(DatumType, Vec<Dim>)>,
    pub transforms: &'static [&'static str],
    pub weight_rows: bool,
}

impl GraphSpec {
    pub fn new(inputs: Vec<(DatumType, Vec<Dim>)>) -> GraphSpec {
        GraphSpec { inputs, transforms: &[], weight_rows: false }
    }

    pub fn with_transforms(self, transforms: &'static [&'static str]) -> GraphSpec {
        GraphSpec { transforms, ..self }
    }

    /// Products and row lookups over constant f32 weights become Lookout's row operators, which read the weights
    /// as stored: nothing is packed at load (the f32 language decoder's 540 MB), and a tied output head shares its
    /// embedding's table. For graphs whose time goes to large matrix-vector products.
    pub fn with_weight_rows(self) -> GraphSpec {
        GraphSpec { weight_rows: true, ..self }
    }
}

/// Loads a component's graph: its compiled form when the manifest records a current one (a stale or damaged one is
/// refused), else its ONNX file, with a one-line notice when the role is one that preparation compiles.
pub fn load_component(bundle: &Bundle, component: &Component, spec: &GraphSpec) -> Result<Graph> {
    if let Some(compiled) = bundle.checked_compiled_path(component, ENGINE)? {
        return Graph::load_compiled(&component.name, &compiled);
    }
    if COMPILED_ROLES.contains(&component.role.as_str()) {
        eprintln!(
            "notice: {} has no compiled form, so it loads from ONNX, more slowly (models/prepare/prepare.sh compiles it)",
            component.file
        );
    }
    Graph::load(&component.name, &bundle.checked_path(component)?, spec)
}

/// Checks the file a component loads from, as [`load_component`] checks it (size, sha256, and a compiled form
/// against its source and this engine), without loading it.
pub fn check_component(bundle: &Bundle, component: &Component) -> Result<()> {
    if bundle.checked_compiled_path(component, ENGINE)?.is_none() {
        bundle.checked_path(component)?;
    }
    Ok(())
}

/// The roles whose graphs preparation compiles (`lookout models compile`): every graph in a bundle.
pub const COMPILED_ROLES: [&str; 8] = [
    "llm-decoder",
    "asr-encoder",
    "asr-decoder",
    "vad",
    "object-detector",
    "scene-classifier",
    "ocr-detector",
    "ocr-recognizer",
];

/// An optimized graph, loaded once and shared by every state that runs it.
pub struct Graph {
    component: String,
    plan: Arc<TypedSimplePlan>,
    /// The share of the multiply-adds in tract's own products (see [`tract_products_share`]).
    tract_product_share: Option<f64>,
    /// tract's own products share their work between threads.
    tract_threads: bool,
}

/// What one optimized graph runs on this CPU (see [`Graph::kernels`]).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KernelReport {
    pub component: String,
    pub nodes: usize,
    /// Operators by name, with how many nodes run each.
    pub ops: std::collections::BTreeMap<String, usize>,
    /// Matrix-product kernels by name, with how many products use each (a product with several modes lists each).
    pub product_kernels: std::collections::BTreeMap<String, usize>,
    /// The share of the graph's multiply-adds done by tract's own products (`None` where it is only known when the
    /// graph runs), and whether their work is shared between threads (see [`tract_products_share`]).
    pub tract_product_share: Option<f64>,
    pub tract_threads: bool,
}

/// Below this share of a graph's multiply-adds in tract's own products, they run on the calling thread.
const TRACT_THREADS_MIN_SHARE: f64 = 0.1;

/// The share of `model`'s multiply-adds done by tract's own matrix products, `None` where the size of one of them is
/// only known when the graph runs (a sequence's length). Where Lookout's operators do nearly all of them (the vision
/// graphs on CPUs with AVX-512), tract's thread pool would only wake for a few small products, and its threads would
/// spin on the cores Lookout's helpers run on (CenterNet on two threads: 44 ms with tract's pool, 42 ms without).
fn tract_products_share(model: &TypedModel) -> Option<f64> {
    use tract_nnef::internal::{Cost, DimLike};
    use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
    let (mut tract, mut all) = (0usize, 0usize);
    for node in &model.nodes {
        let Ok(facts) = model.node_input_facts(node.id) else { continue };
        let Ok(costs) = node.op.cost(&facts) else { continue };
        let fma: Option<usize> =
            costs.iter().filter(|(cost, _)| matches!(cost, Cost::FMA(_))).map(|(_, count)| count.to_usize().ok()).sum();
        let is_tracts = node.op_is::<OptMatMul>();
        match fma {
            Some(fma) => {
                all += fma;
                tract += if is_tracts { fma } else { 0 };
            }
            None if is_tracts => return None,
            None => {}
        }
    }
    (all > 0).then(|| tract as f64 / all as f64)
}

/// The single-winner routines (activations, reductions, depthwise and direct convolutions) tract picks for f32 on
/// this CPU, by function: the implementation's name, or `None` where no kernel serves it and the op falls back to
/// generic code.
pub fn routines() -> Vec<(&'static str, Option<&'static str>)> {
    use tract_linalg::{isa, routines};
    let native = isa::native();
    routines::Func::ALL
        .iter()
        .map(|func| (func.name(), routines::best_for(*func, DatumType::F32, &native).map(|r| r.name())))
        .collect()
}

/// The mean time one node of a graph took to run (see [`Graph::profile`]).
#[derive(Debug, Clone, Default)]
pub struct NodeTime {
    pub op: String,
    pub node: String,
    /// What the operator says of itself (shapes, kernels, fused operations).
    pub info: String,
    pub ms: f64,
}

/// Per-stream execution state of a [`Graph`]: reuse one per stream.
pub struct GraphState {
    component: String,
    state: TypedSimpleState,
    tract_threads: bool,
}

impl Graph {
    /// Loads the ONNX graph at `path` as `spec` declares it and optimizes it for this CPU.
    pub fn load(component: &str, path: &Path, spec: &GraphSpec) -> Result<Graph> {
        let plan = guard(component, || into_plan(prepare(path, spec)?)).map_err(|e| ModelError::load(component, e))?;
        Ok(Graph::new(component, plan))
    }

    /// Loads a graph compiled by [`compile`]: only kernel selection and weight packing are left to do.
    pub fn load_compiled(component: &str, path: &Path) -> Result<Graph> {
        let load = || into_plan(nnef_framework().model_for_path(path)?);
        let plan =
            guard(component, load).map_err(|e| ModelError::load(component, format!("{}: {e:#}", path.display())))?;
        Ok(Graph::new(component, plan))
    }

    fn new(component: &str, plan: Arc<TypedSimplePlan>) -> Graph {
        let tract_product_share = tract_products_share(plan.model());
        let tract_threads = tract_product_share.is_none_or(|share| share >= TRACT_THREADS_MIN_SHARE);
        Graph { component: component.to_string(), plan, tract_product_share, tract_threads }
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    /// The names of the inputs the optimized graph takes, in order.
    pub fn input_names(&self) -> Vec<String> {
        let model = self.plan.model();
        model.inputs.iter().map(|outlet| model.node(outlet.node).name.clone()).collect()
    }

    /// What the optimized graph runs: its operators by name, and the kernel each matrix product got.
    pub fn kernels(&self) -> KernelReport {
        let model = self.plan.model();
        let mut report = KernelReport {
            component: self.component.clone(),
            nodes: model.nodes.len(),
            tract_product_share: self.tract_product_share,
            tract_threads: self.tract_threads,
            ..Default::default()
        };
        for node in &model.nodes {
            *report.ops.entry(node.op.name().to_string()).or_default() += 1;
            let kernels: Vec<String> =
                if let Some(product) = node.op_as::<tract_onnx::tract_core::ops::matmul::optimized::OptMatMul>() {
                    product.mmm.iter().map(|kernel| kernel.name().to_string()).collect()
                } else if let Some(block) = node.op_as::<block_quant::BlockMatMul>() {
                    vec![format!("{} ({})", block_quant::kernel_name(), block.format.name())]
                } else if node.op_is::<pointwise::Pointwise>() {
                    vec![pointwise::kernel_name().to_string()]
                } else if node.op_is::<direct_conv::DirectConv>() {
                    vec![direct_conv::kernel_name().to_string()]
                } else if node.op_is::<depthwise::Depthwise>() {
                    vec![depthwise::kernel_name().to_string()]
                } else {
                    continue;
                };
            for kernel in kernels {
                *report.product_kernels.entry(kernel).or_default() += 1;
            }
        }
        report
    }

    /// Runs the graph once to warm up, then `rounds` more times on `inputs`, and returns each node's mean time over
    /// those rounds, in plan order (a developer aid: see `examples/profile_graph.rs`).
    pub fn profile(&self, inputs: TVec<TValue>, rounds: usize) -> Result<Vec<NodeTime>> {
        use tract_onnx::tract_core::plan::eval;
        let model = self.plan.model();
        let mut times: Vec<NodeTime> = model
            .nodes
            .iter()
            .map(|node| NodeTime {
                op: node.op.name().to_string(),
                node: node.name.clone(),
                info: node.op.info().map(|lines| lines.join("; ")).unwrap_or_default(),
                ms: 0.0,
            })
            .collect();
        let mut state = TypedSimpleState::new(&self.plan).map_err(|e| ModelError::load(&self.component, e))?;
        for round in 0..=rounds {
            let run = state.run_plan_with_eval(inputs.clone(), |session, op_state, node, node_inputs| {
                let started = std::time::Instant::now();
                let outputs = eval(session, op_state, node, node_inputs);
                if round > 0 {
                    times[node.id].ms += started.elapsed().as_secs_f64() * 1e3 / rounds as f64;
                }
                outputs
            });
            in_tract_scope(self.tract_threads, || guard(&self.component, || run))
                .map_err(|e| ModelError::run(&self.component, e))?;
        }
        let order = self.plan.order_without_consts();
        Ok(order.iter().map(|&id| std::mem::take(&mut times[id])).collect())
    }

    /// A fresh execution state; keep it and reuse it for every run of one stream.
    pub fn new_state(&self) -> Result<GraphState> {
        let state = TypedSimpleState::new(&self.plan).map_err(|e| ModelError::load(&self.component, e))?;
        Ok(GraphState { component: self.component.clone(), state, tract_threads: self.tract_threads })
    }
}

impl GraphState {
    pub fn run(&mut self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let state = &mut self.state;
        in_tract_scope(self.tract_threads, || guard(&self.component, || state.run(inputs)))
            .map_err(|e| ModelError::run(&self.component, e))
    }
}

/// Runs `f` with tract's products on the thread pool [`set_threads`] gave them, or on the calling thread alone.
fn in_tract_scope<R>(tract_threads: bool, f: impl FnOnce() -> R) -> R {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    if tract_threads {
        f()
    } else {
        multithread_tract_scope(Executor::SingleThread, f)
    }
}

/// The engine a compiled graph must come from: the tract this crate is built with (pinned in Cargo.toml), and the
/// revision of Lookout's own rewrites of the prepared graph and of its NNEF forms (2: f32 weight rows; 3: top-k by
/// heap; 4: convolutions and pools kept as prepared; 5: resampling in one pass; 6: channel-last pools in place of
/// transposed ones), so that an archive written before one changed is compiled again.
pub const ENGINE: &str = "tract 0.23.9, lookout graphs 6";

/// Parses an ONNX graph, declares its inputs, declutters it, applies the named model transforms and Lookout's own
/// rewrites (f32 weight rows where the spec asks, top-k and resampling in one pass, channel-last pools): everything
/// before optimization, which is what a compiled graph holds.
fn prepare(path: &Path, spec: &GraphSpec) -> TractResult<TypedModel> {
    let mut onnx = tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_value_info(true);
    block_quant::onnx::register(&mut onnx.op_register);
    attention::onnx::register(&mut onnx.op_register);
    let mut model = onnx.model_for_path(path)?;
    for (ix, (dtype, dims)) in spec.inputs.iter().enumerate() {
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
    for name in spec.transforms {
        let transform = tract_onnx::tract_core::transform::get_transform(name)?
            .ok_or_else(|| anyhow::anyhow!("unknown model transform {name}"))?;
        transform.transform(&mut typed)?;
    }
    if !spec.transforms.is_empty() {
        typed.declutter()?; // what the transforms fused leaves patterns for the declutter passes
    }
    if spec.weight_rows {
        weight_rows::rewrite(&mut typed)?;
    }
    top_k::rewrite(&mut typed)?;
    resize::rewrite(&mut typed)?;
    layout_forms::rewrite_transposed_pools(&mut typed)?;
    Ok(typed)
}

/// Puts the operator `replacement` gives in place of every node whose operator is an `O`, fed with that node's first
/// input only (`None` leaves the node as it is). Returns how many were replaced.
fn replace_each<O: TypedOp, R: TypedOp>(
    model: &mut TypedModel,
    replacement: impl Fn(&TypedModel, &TypedNode, &O) -> TractResult<Option<R>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<O>() else { continue };
        let Some(new_op) = replacement(model, node, op)? else { continue };
        let input = node.inputs[0];
        TypedModelPatch::replace_single_op(model, node, &[input], new_op)?.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Puts an operator in place of each part of the graph `found` recognizes (from a node id: the part's inputs, the
/// operator, and the last node it replaces), one at a time, compacting the graph after each so that the constants
/// only the replaced nodes held (weights laid out anew for the operator) are freed before the next is laid out,
/// and handed back to the system once the resident size has grown by [`TRIM_AFTER_KIB`]: else the freed weights of
/// every product stay resident until loading ends (10 MiB over the recognizer's 40 at its peak), and a trim after
/// each product would add some 80 ms to loading the vision graphs (after each 1 MiB of growth, 50 ms; after 2 MiB,
/// no more than the machine's noise).
/// Returns how many were replaced.
fn replace_with_compaction<O: TypedOp>(
    model: &mut TypedModel,
    found: impl Fn(&TypedModel, usize) -> TractResult<Option<(TVec<OutletId>, O, usize)>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    let mut resident_after_trim = resident_kib();
    loop {
        let mut next = None;
        for id in model.eval_order()? {
            if let Some(part) = found(model, id)? {
                next = Some((id, part));
                break;
            }
        }
        let Some((id, (inputs, op, last))) = next else { return Ok(replaced) };
        let mut patch = TypedModelPatch::new(format!("{} in place of {}", op.name(), model.node(id).name));
        let inputs = inputs.iter().map(|&input| patch.tap_model(model, input)).collect::<TractResult<TVec<_>>>()?;
        let wire = patch.wire_node(&model.node(id).name, op, &inputs)?[0];
        patch.shunt_outside(model, OutletId::new(last, 0), wire)?;
        patch.apply(model)?;
        model.compact()?;
        if let (Some(now), Some(then)) = (resident_kib(), resident_after_trim) {
            if now > then + TRIM_AFTER_KIB {
                release_free_memory();
                resident_after_trim = resident_kib();
            }
        }
        replaced += 1;
    }
}

/// Evaluates an operator of one f32 input into a new f32 tensor of `shape`, which `compute` fills entirely.
fn eval_into_f32(
    inputs: &[TValue],
    shape: &[usize],
    compute: impl FnOnce(&[f32], &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let x = inputs[0].try_as_plain_ram()?;
    // SAFETY: `compute` writes every output value (or fails, and the tensor is dropped unread).
    let mut out = unsafe { Tensor::uninitialized::<f32>(shape)? };
    {
        let mut plain = out.try_as_plain_ram_mut()?;
        compute(x.as_slice::<f32>()?, plain.as_slice_mut::<f32>()?)?;
    }
    Ok(tvec!(out.into_tvalue()))
}

/// Whether this CPU runs Lookout's AVX-512 products.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return avx512_products::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Growth of the resident size while a graph's products are rewritten past which freed memory is handed back.
const TRIM_AFTER_KIB: u64 = 2048;

/// This process's resident size (`VmRSS`), in KiB, where the kernel reports it.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns the allocator's free memory to the kernel (glibc keeps what a program frees unless asked). No-op off
/// glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers from us.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Turns a parsed graph into its runnable plan. Parsing, rewriting and optimizing each leave freed tensors behind
/// in glibc's heap, scattered where they cannot be trimmed from its top; returning them after each step keeps the
/// loading peak near the resident size, and the next graph loaded starts from what this one holds.
fn into_plan(mut model: TypedModel) -> TractResult<Arc<TypedSimplePlan>> {
    release_free_memory();
    rewrite_products(&mut model)?;
    release_free_memory();
    model.optimize()?;
    pad::rewrite(&mut model)?;
    max_pool::rewrite(&mut model)?;
    let plan = model.into_runnable()?;
    release_free_memory();
    Ok(plan)
}

/// Lookout's own products in place of tract's where this CPU runs them faster (see `pointwise`, `direct_conv` and
/// `depthwise`).
fn rewrite_products(model: &mut TypedModel) -> TractResult<()> {
    pointwise::rewrite(model)?;
    direct_conv::rewrite(model)?;
    depthwise::rewrite(model)?;
    Ok(())
}

/// The registry of Lookout's NNEF forms, which compiled archives declare (`extension tract_registry lookout`).
fn lookout_registry() -> tract_nnef::internal::Registry {
    let mut registry = tract_nnef::internal::Registry::new("lookout");
    nnef_ops::register(&mut registry);
    block_quant::register_nnef(&mut registry);
    attention::register_nnef(&mut registry);
    top_k::register_nnef(&mut registry);
    layout_forms::register(&mut registry);
    resize::register_nnef(&mut registry);
    registry
}

/// The NNEF reader and writer with every registry a compiled graph may use; built once (it takes about 15 ms).
/// Lookout's registry comes first, so that its forms of convolutions and pools are the ones written.
fn nnef_framework() -> &'static tract_nnef::framework::Nnef {
    use tract_transformers::WithTractTransformers;
    static NNEF: std::sync::OnceLock<tract_nnef::framework::Nnef> = std::sync::OnceLock::new();
    NNEF.get_or_init(|| {
        let mut nnef = tract_nnef::nnef().with_tract_transformers().with_onnx();
        nnef.registries.insert(0, lookout_registry());
        nnef
    })
}

/// Compiles an ONNX graph (declared and transformed as [`Graph::load`] does) into `out`, tract's NNEF archive,
/// which [`Graph::load_compiled`] loads without parsing, typing or decluttering. Written to a temporary file renamed
/// over `out`, so a failure never leaves a partial archive.
pub fn compile(component: &str, path: &Path, spec: &GraphSpec, out: &Path) -> Result<()> {
    let temporary = out.with_extension("part");
    let write = || -> TractResult<()> {
        let mut model = prepare(path, spec)?;
        nnef_ops::make_writable(&mut model);
        let file = std::io::BufWriter::new(std::fs::File::create(&temporary)?);
        nnef_framework().write_to_tar(&model, file)?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        nnef_framework().model_for_path(&temporary).map_err(|e| e.context("reading the archive back"))?;
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
    workers::set_threads(n);
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
    Tensor::from_shape(shape, data).map(|t| t.into_tvalue()).map_err(|e| ModelError::run("input", e))
}

/// Reads an output tensor as a flat f32 slice.
pub fn f32_slice<'t>(component: &str, value: &'t TValue) -> Result<&'t [f32]> {
    value.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(|e| ModelError::run(component, e))
}

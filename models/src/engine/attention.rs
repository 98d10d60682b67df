//! Causal grouped-query attention that keeps its own key/value cache in the run state: each call appends the new
//! positions' keys and values in place (the cache grows by doubling, never copied per token) and attends every new
//! query to all earlier positions, without the per-step concatenation, packing and layout changes the generic graph
//! needs.

use tract_nnef::internal::*;
use tract_nnef::ser::{invocation, numeric, IntoAst};

use super::workers;

/// Inputs: queries f32 `[1, heads, S, head_dim]`, keys and values f32 `[1, kv_heads, S, head_dim]` of the S new
/// positions (rotary embedding already applied); output f32 `[1, S, heads * head_dim]`. Query head `h` reads
/// key/value head `h / (heads / kv_heads)`; scores are scaled by `1 / sqrt(head_dim)`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CausalAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Op for CausalAttention {
    fn name(&self) -> StaticName {
        "CausalAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} heads over {} key/value heads of {}", self.heads, self.kv_heads, self.head_dim)])
    }

    op_as_typed_op!();
}

impl EvalOp for CausalAttention {
    not_out_of_plan!();

    fn state(&self, _: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(Some(Box::new(AttentionCache::default())))
    }
}

impl TypedOp for CausalAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(self.kv_heads > 0 && self.heads % self.kv_heads == 0, "CausalAttention: {} heads over {} key/value heads", self.heads, self.kv_heads);
        for (input, heads) in inputs.iter().zip([self.heads, self.kv_heads, self.kv_heads]) {
            ensure!(input.datum_type == f32::datum_type(), "CausalAttention takes f32");
            ensure!(
                input.rank() == 4 && input.shape[1] == heads.to_dim() && input.shape[3] == self.head_dim.to_dim(),
                "CausalAttention: input {:?} is not [1, {heads}, S, {}]",
                input.shape,
                self.head_dim
            );
        }
        let positions = inputs[0].shape[2].clone();
        Ok(tvec!(f32::fact([1.to_dim(), positions, (self.heads * self.head_dim).to_dim()])))
    }

    as_op!();
}

/// The keys and values of every position so far, `[kv_heads][capacity][head_dim]` each, `len` positions filled.
#[derive(Clone, Debug, Default)]
struct AttentionCache {
    keys: Vec<f32>,
    values: Vec<f32>,
    len: usize,
    capacity: usize,
}

impl AttentionCache {
    /// Makes room for `more` positions, doubling the capacity when it runs out.
    fn reserve(&mut self, op: &CausalAttention, more: usize) {
        let needed = self.len + more;
        if needed <= self.capacity {
            return;
        }
        let capacity = needed.max(self.capacity * 2).max(64);
        let d = op.head_dim;
        let grow = |old: &[f32]| {
            let mut new = vec![0f32; op.kv_heads * capacity * d];
            for head in 0..op.kv_heads {
                let filled = self.len * d;
                new[head * capacity * d..][..filled].copy_from_slice(&old[head * self.capacity * d..][..filled]);
            }
            new
        };
        self.keys = grow(&self.keys);
        self.values = grow(&self.values);
        self.capacity = capacity;
    }

    fn append(&mut self, op: &CausalAttention, keys: &[f32], values: &[f32], count: usize) {
        self.reserve(op, count);
        let d = op.head_dim;
        for head in 0..op.kv_heads {
            let at = (head * self.capacity + self.len) * d;
            self.keys[at..at + count * d].copy_from_slice(&keys[head * count * d..][..count * d]);
            self.values[at..at + count * d].copy_from_slice(&values[head * count * d..][..count * d]);
        }
        self.len += count;
    }
}

/// Where the attention output lands: `[S, heads * head_dim]`; each head writes its own columns.
#[derive(Clone, Copy)]
struct Output(*mut f32);

// SAFETY: each head is computed by one thread and writes only its own columns of one buffer that outlives it.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// Multiply-adds above which a call shares its heads among threads.
const PARALLEL_MIN_MACS: usize = 100_000;

impl OpState for AttentionCache {
    fn eval(&mut self, _: &EvalContext, op: &dyn Op, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = op.downcast_ref::<CausalAttention>().context("CausalAttention state with another op")?;
        let (queries, keys, values) = args_3!(inputs);
        let count = queries.shape()[2];
        ensure!(keys.shape()[2] == count && values.shape()[2] == count, "CausalAttention: inputs disagree on positions");
        let keys = keys.try_as_plain_ram()?;
        let values = values.try_as_plain_ram()?;
        let first = self.len;
        self.append(op, keys.as_slice::<f32>()?, values.as_slice::<f32>()?, count);
        let queries = queries.try_as_plain_ram()?;
        let queries = queries.as_slice::<f32>()?;
        let width = op.heads * op.head_dim;
        let mut out = Tensor::zero::<f32>(&[1, count, width])?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            let output = Output(plain.as_slice_mut::<f32>()?.as_mut_ptr());
            let cache = &*self;
            let head = |h: usize| {
                // SAFETY: `output` holds count × width values; head h writes only its columns.
                unsafe { attend_head(op, cache, queries, first, count, h, output) }
            };
            let workers = workers::current();
            let macs = op.heads * count * self.len * op.head_dim * 2;
            if macs >= PARALLEL_MIN_MACS && workers.threads() > 1 {
                workers.run(op.heads, &head);
            } else {
                (0..op.heads).for_each(head);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }

    fn reset_lanes(&mut self, _: &[LaneId]) -> TractResult<()> {
        bail!("CausalAttention keeps one stream's cache: the run state has no lanes")
    }
}

/// Query head `h` for the new positions `first..first + count`, each attending to every position up to its own.
///
/// # Safety
/// `output` must point at `count × heads × head_dim` values, and no other thread may write head `h`'s columns.
unsafe fn attend_head(op: &CausalAttention, cache: &AttentionCache, queries: &[f32], first: usize, count: usize, h: usize, output: Output) {
    let d = op.head_dim;
    let kv = h / (op.heads / op.kv_heads);
    let keys = &cache.keys[kv * cache.capacity * d..][..cache.len * d];
    let values = &cache.values[kv * cache.capacity * d..][..cache.len * d];
    let scale = 1.0 / (d as f32).sqrt();
    let mut weights = vec![0f32; cache.len];
    let mut mixed = vec![0f32; d];
    for s in 0..count {
        let query = &queries[(h * count + s) * d..][..d];
        let visible = first + s + 1;
        let mut largest = f32::NEG_INFINITY;
        for (weight, key) in weights[..visible].iter_mut().zip(keys.chunks_exact(d)) {
            *weight = dot(query, key) * scale;
            largest = largest.max(*weight);
        }
        let mut total = 0f32;
        for weight in &mut weights[..visible] {
            *weight = (*weight - largest).exp();
            total += *weight;
        }
        mixed.iter_mut().for_each(|m| *m = 0.0);
        for (weight, value) in weights[..visible].iter().zip(values.chunks_exact(d)) {
            let weight = weight / total;
            mixed.iter_mut().zip(value).for_each(|(m, v)| *m += weight * v);
        }
        let at = output.0.add(s * op.heads * d + h * d);
        std::ptr::copy_nonoverlapping(mixed.as_ptr(), at, d);
    }
}

/// A dot product in eight independent lanes, which the compiler turns into vector code.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Adds the NNEF form to `registry`.
pub fn register_nnef(registry: &mut Registry) {
    registry.register_dumper(dump);
    registry.register_primitive(
        "lookout_causal_attention",
        &[
            TypeName::Scalar.tensor().named("queries"),
            TypeName::Scalar.tensor().named("keys"),
            TypeName::Scalar.tensor().named("values"),
            TypeName::Integer.named("heads"),
            TypeName::Integer.named("kv_heads"),
            TypeName::Integer.named("head_dim"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load,
    );
}

fn dump(ast: &mut IntoAst, node: &TypedNode, op: &CausalAttention) -> TractResult<Option<Arc<RValue>>> {
    let inputs: Vec<_> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
    let attributes = [("heads", numeric(op.heads)), ("kv_heads", numeric(op.kv_heads)), ("head_dim", numeric(op.head_dim))];
    Ok(Some(invocation("lookout_causal_attention", &inputs, &attributes)))
}

fn load(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let inputs: TVec<OutletId> = ["queries", "keys", "values"]
        .iter()
        .map(|name| invocation.named_arg_as(builder, name))
        .collect::<TractResult<_>>()?;
    let mut count = |name| -> TractResult<usize> { Ok(invocation.named_arg_as::<i64>(builder, name)? as usize) };
    let op = CausalAttention { heads: count("heads")?, kv_heads: count("kv_heads")?, head_dim: count("head_dim")? };
    builder.wire(op, &inputs)
}

/// The ONNX form: `LookoutAttention(queries, keys, values)` in the `ai.lookout` domain with attributes `heads`,
/// `kv_heads` and `head_dim`.
pub mod onnx {
    use super::CausalAttention;
    use tract_onnx::model::{OnnxOpRegister, ParsingContext};
    use tract_onnx::pb::NodeProto;
    use tract_onnx::tract_hir::internal::*;

    pub fn register(register: &mut OnnxOpRegister) {
        register.insert("LookoutAttention", parse);
    }

    fn parse(_: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
        let op = CausalAttention { heads: node.get_attr("heads")?, kv_heads: node.get_attr("kv_heads")?, head_dim: node.get_attr("head_dim")? };
        Ok((expand(Parsed(op)), vec![]))
    }

    #[derive(Debug, Clone)]
    struct Parsed(CausalAttention);

    impl Expansion for Parsed {
        fn name(&self) -> StaticName {
            "LookoutAttention".into()
        }

        fn rules<'r, 'p: 'r, 's: 'r>(
            &'s self,
            s: &mut Solver<'r>,
            inputs: &'p [TensorProxy],
            outputs: &'p [TensorProxy],
        ) -> InferenceResult {
            check_input_arity(inputs, 3)?;
            check_output_arity(outputs, 1)?;
            s.equals(&outputs[0].datum_type, f32::datum_type())?;
            s.equals(&outputs[0].rank, 3)?;
            s.equals(&outputs[0].shape[0], 1.to_dim())?;
            s.equals(&outputs[0].shape[1], &inputs[0].shape[2])?;
            s.equals(&outputs[0].shape[2], (self.0.heads * self.0.head_dim).to_dim())
        }

        fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
            model.wire_node(prefix, self.0.clone(), inputs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention over all positions at once with a causal mask, as the reference.
    fn reference(op: &CausalAttention, q: &[f32], k: &[f32], v: &[f32], n: usize) -> Vec<f32> {
        let d = op.head_dim;
        let mut out = vec![0f32; n * op.heads * d];
        for h in 0..op.heads {
            let kv = h / (op.heads / op.kv_heads);
            for s in 0..n {
                let scores: Vec<f64> = (0..=s)
                    .map(|j| (0..d).map(|i| (q[(h * n + s) * d + i] * k[(kv * n + j) * d + i]) as f64).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                for i in 0..d {
                    let mixed: f64 = (0..=s).map(|j| weights[j] / total * v[(kv * n + j) * d + i] as f64).sum();
                    out[s * op.heads * d + h * d + i] = mixed as f32;
                }
            }
        }
        out
    }

    /// Rows `from..to` of a `[heads, n, d]` tensor as a `[1, heads, to - from, d]` input.
    fn positions(x: &[f32], heads: usize, n: usize, d: usize, from: usize, to: usize) -> TValue {
        let mut rows = Vec::new();
        for h in 0..heads {
            rows.extend_from_slice(&x[(h * n + from) * d..(h * n + to) * d]);
        }
        Tensor::from_shape(&[1, heads, to - from, d], &rows).unwrap().into_tvalue()
    }

    #[test]
    fn a_prompt_then_steps_equal_attention_over_everything_at_once() {
        let op = CausalAttention { heads: 6, kv_heads: 2, head_dim: 16 };
        let n = 70; // past the first capacity of 64: the cache grows once
        let random = |seed: usize, len: usize| -> Vec<f32> { (0..len).map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0).collect() };
        let (q, k, v) = (random(1, op.heads * n * 16), random(2, op.kv_heads * n * 16), random(3, op.kv_heads * n * 16));
        let expected = reference(&op, &q, &k, &v, n);
        let mut cache = AttentionCache::default();
        let mut produced = Vec::new();
        for (from, to) in [(0, 50), (50, 51), (51, 52), (52, 70)] {
            let inputs = tvec!(positions(&q, 6, n, 16, from, to), positions(&k, 2, n, 16, from, to), positions(&v, 2, n, 16, from, to));
            let out = cache.eval(&EvalContext::out_of_plan(), &op, inputs).unwrap();
            assert_eq!(out[0].shape(), &[1, to - from, 96]);
            produced.extend_from_slice(out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap());
        }
        for (ours, exact) in produced.iter().zip(&expected) {
            assert!((ours - exact).abs() < 1e-5, "{ours} vs {exact}");
        }
    }
}

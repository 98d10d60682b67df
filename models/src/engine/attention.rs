//! Causal grouped-query attention that keeps its own key/value cache in the run state: it takes the fused q/k/v
//! projection as it comes out of the product, applies the rotary embedding at each position, appends the keys and
//! values in place (the cache grows by doubling, never copied per token) and attends every new query to all
//! earlier positions, without the per-step splits, layout changes, concatenation and packing of the generic graph.

use tract_nnef::internal::*;
use tract_nnef::ser::{invocation, numeric, IntoAst};

use super::nnef_ops::size_arg;
use super::workers;

/// Input: the S new positions' projections f32 `[1, S, (heads + 2 * kv_heads) * head_dim]`, queries then keys then
/// values, heads in order; output f32 `[1, S, heads * head_dim]`. The new positions follow the cached ones (the
/// first call starts at position 0). Queries and keys get the rotary embedding in rotate-half layout (frequencies
/// `rope_theta^(-2i / head_dim)`); query head `h` reads key/value head `h / (heads / kv_heads)`; scores are scaled
/// by `1 / sqrt(head_dim)`.
#[derive(Clone, Debug, PartialEq)]
pub struct CausalAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
}

impl std::hash::Hash for CausalAttention {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.heads, self.kv_heads, self.head_dim, self.rope_theta.to_bits()).hash(state)
    }
}

impl Eq for CausalAttention {}

impl CausalAttention {
    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// The rotary frequencies, computed as the reference graph does (in f64, then rounded to f32).
    fn frequencies(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        (0..self.head_dim / 2).map(|i| (1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / d)) as f32).collect()
    }
}

/// Rotates one head's vector by the angles `position * frequencies` (rotate-half layout).
fn rotate(x: &mut [f32], position: usize, frequencies: &[f32]) {
    let half = frequencies.len();
    for (i, &frequency) in frequencies.iter().enumerate() {
        let angle = position as f32 * frequency;
        let (sin, cos) = (angle.sin(), angle.cos());
        let (first, second) = (x[i], x[i + half]);
        x[i] = first * cos - second * sin;
        x[i + half] = second * cos + first * sin;
    }
}

impl Op for CausalAttention {
    fn name(&self) -> StaticName {
        "CausalAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} heads over {} key/value heads of {}, rotary base {}",
            self.heads, self.kv_heads, self.head_dim, self.rope_theta
        )])
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
        ensure!(
            self.kv_heads > 0
                && self.heads.is_multiple_of(self.kv_heads)
                && self.head_dim > 0
                && self.head_dim.is_multiple_of(2),
            "CausalAttention: {} heads over {} key/value heads of {}",
            self.heads,
            self.kv_heads,
            self.head_dim
        );
        let input = inputs[0];
        ensure!(input.datum_type == f32::datum_type(), "CausalAttention takes f32");
        ensure!(
            input.rank() == 3 && input.shape[2] == self.width().to_dim(),
            "CausalAttention: input {:?} is not [1, S, {}]",
            input.shape,
            self.width()
        );
        Ok(tvec!(f32::fact([1.to_dim(), input.shape[1].clone(), (self.heads * self.head_dim).to_dim()])))
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
        let projections = args_1!(inputs);
        let count = projections.shape()[1];
        let projections = projections.try_as_plain_ram()?;
        let projections = projections.as_slice::<f32>()?;
        let (d, first) = (op.head_dim, self.len);
        // Queries [heads][count][d], keys and values [kv_heads][count][d], rotated at their positions.
        let frequencies = op.frequencies();
        let mut queries = vec![0f32; op.heads * count * d];
        let mut keys = vec![0f32; op.kv_heads * count * d];
        let mut values = vec![0f32; op.kv_heads * count * d];
        for (s, row) in projections.chunks_exact(op.width()).enumerate() {
            for (head, vector) in row.chunks_exact(d).enumerate() {
                let (target, at, rotated) = if head < op.heads {
                    (&mut queries, head, true)
                } else if head < op.heads + op.kv_heads {
                    (&mut keys, head - op.heads, true)
                } else {
                    (&mut values, head - op.heads - op.kv_heads, false)
                };
                let slot = &mut target[(at * count + s) * d..][..d];
                slot.copy_from_slice(vector);
                if rotated {
                    rotate(slot, first + s, &frequencies);
                }
            }
        }
        self.append(op, &keys, &values, count);
        let width = op.heads * d;
        let mut out = Tensor::zero::<f32>(&[1, count, width])?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            let output = Output(plain.as_slice_mut::<f32>()?.as_mut_ptr());
            let cache = &*self;
            let queries = queries.as_slice();
            let head = |h: usize| {
                // SAFETY: `output` holds count × width values; head h writes only its columns.
                unsafe { attend_head(op, cache, queries, first, count, h, output) }
            };
            let workers = workers::current();
            let macs = op.heads * count * self.len * d * 2;
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
unsafe fn attend_head(
    op: &CausalAttention,
    cache: &AttentionCache,
    queries: &[f32],
    first: usize,
    count: usize,
    h: usize,
    output: Output,
) {
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
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
            TypeName::Scalar.tensor().named("projections"),
            TypeName::Integer.named("heads"),
            TypeName::Integer.named("kv_heads"),
            TypeName::Integer.named("head_dim"),
            TypeName::Scalar.named("rope_theta"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load,
    );
}

fn dump(ast: &mut IntoAst, node: &TypedNode, op: &CausalAttention) -> TractResult<Option<Arc<RValue>>> {
    let projections = ast.mapping[&node.inputs[0]].clone();
    let attributes = [
        ("heads", numeric(op.heads)),
        ("kv_heads", numeric(op.kv_heads)),
        ("head_dim", numeric(op.head_dim)),
        ("rope_theta", numeric(op.rope_theta)),
    ];
    Ok(Some(invocation("lookout_causal_attention", &[projections], &attributes)))
}

fn load(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let projections = invocation.named_arg_as(builder, "projections")?;
    let heads = size_arg(builder, invocation, "heads")?;
    let kv_heads = size_arg(builder, invocation, "kv_heads")?;
    let head_dim = size_arg(builder, invocation, "head_dim")?;
    let rope_theta = invocation.named_arg_as::<f32>(builder, "rope_theta")?;
    builder.wire(CausalAttention { heads, kv_heads, head_dim, rope_theta }, &[projections])
}

/// The ONNX form: `LookoutAttention(projections)` in the `ai.lookout` domain with attributes `heads`, `kv_heads`,
/// `head_dim` and `rope_theta`.
pub mod onnx {
    use super::CausalAttention;
    use tract_onnx::model::{OnnxOpRegister, ParsingContext};
    use tract_onnx::pb::NodeProto;
    use tract_onnx::tract_hir::internal::*;

    pub fn register(register: &mut OnnxOpRegister) {
        register.insert("LookoutAttention", parse);
    }

    fn parse(_: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
        let op = CausalAttention {
            heads: node.get_attr("heads")?,
            kv_heads: node.get_attr("kv_heads")?,
            head_dim: node.get_attr("head_dim")?,
            rope_theta: node.get_attr("rope_theta")?,
        };
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
            check_input_arity(inputs, 1)?;
            check_output_arity(outputs, 1)?;
            s.equals(&outputs[0].datum_type, f32::datum_type())?;
            s.equals(&outputs[0].rank, 3)?;
            s.equals(&outputs[0].shape[0], 1.to_dim())?;
            s.equals(&outputs[0].shape[1], &inputs[0].shape[1])?;
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

    /// Rotary embedding at every position, then plain attention over all positions at once with a causal mask, in
    /// f64, as the reference. `projections` is `[n][width]`.
    fn reference(op: &CausalAttention, projections: &[f32], n: usize) -> Vec<f32> {
        let d = op.head_dim;
        let frequencies = op.frequencies();
        let vector = |s: usize, head: usize| -> Vec<f32> {
            let mut v = projections[s * op.width() + head * d..][..d].to_vec();
            if head < op.heads + op.kv_heads {
                rotate(&mut v, s, &frequencies);
            }
            v
        };
        let mut out = vec![0f32; n * op.heads * d];
        for h in 0..op.heads {
            let kv = h / (op.heads / op.kv_heads);
            for s in 0..n {
                let q = vector(s, h);
                let scores: Vec<f64> = (0..=s)
                    .map(|j| {
                        q.iter().zip(vector(j, op.heads + kv)).map(|(a, b)| (a * b) as f64).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                for i in 0..d {
                    let mixed: f64 =
                        (0..=s).map(|j| weights[j] / total * vector(j, op.heads + op.kv_heads + kv)[i] as f64).sum();
                    out[s * op.heads * d + h * d + i] = mixed as f32;
                }
            }
        }
        out
    }

    #[test]
    fn a_prompt_then_steps_equal_attention_over_everything_at_once() {
        let op = CausalAttention { heads: 6, kv_heads: 2, head_dim: 16, rope_theta: 10000.0 };
        let n = 70; // past the first capacity of 64: the cache grows once
        let projections: Vec<f32> = (0..n * op.width()).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let expected = reference(&op, &projections, n);
        let mut cache = AttentionCache::default();
        let mut produced = Vec::new();
        for (from, to) in [(0, 50), (50, 51), (51, 52), (52, 70)] {
            let rows = &projections[from * op.width()..to * op.width()];
            let input = Tensor::from_shape(&[1, to - from, op.width()], rows).unwrap().into_tvalue();
            let out = cache.eval(&EvalContext::out_of_plan(), &op, tvec!(input)).unwrap();
            assert_eq!(out[0].shape(), &[1, to - from, 96]);
            produced.extend_from_slice(out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap());
        }
        for (ours, exact) in produced.iter().zip(&expected) {
            assert!((ours - exact).abs() < 1e-5, "{ours} vs {exact}");
        }
    }

    #[test]
    fn rotation_turns_each_pair_by_its_angle() {
        // Head of 4: pairs (0, 2) and (1, 3) with frequencies 1 and 1/100 (theta 10000).
        let op = CausalAttention { heads: 1, kv_heads: 1, head_dim: 4, rope_theta: 10000.0 };
        let frequencies = op.frequencies();
        assert_eq!(frequencies, [1.0, 0.01]);
        let mut x = [1.0, 1.0, 0.0, 0.0];
        rotate(&mut x, 3, &frequencies);
        let expected = [3f32.cos(), 0.03f32.cos(), 3f32.sin(), 0.03f32.sin()];
        for (a, b) in x.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{x:?} vs {expected:?}");
        }
    }
}

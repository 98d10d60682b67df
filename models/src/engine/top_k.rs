//! The k best values along an axis, found in one pass with a heap of k entries. tract 0.23.9's `Topk` sorts each
//! whole lane and takes the first k: the CenterNet detector's top 100 of its 1.3 million heatmap scores took about
//! 55 ms of a 175 ms run that way. Once k values are kept, a contiguous lane is read in blocks, and a block none of
//! whose values beats the worst kept is passed over with one comparison a value and no branch (most of a detector's
//! heatmap). Prepared graphs get this operator in place of a `Topk` with a constant k; the results are the same,
//! ties included (equal values come in index order).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use tract_nnef::internal::*;
use tract_nnef::ser::{invocation, logical, numeric, IntoAst};
use tract_onnx::tract_core::ops::array::Topk;

use super::nnef_ops::size_arg;

/// `input` f32 → (`values` f32, `indices` i64), with the axis `axis` cut to `k`: along each lane, the k largest
/// values (the k smallest when not `largest`) in that order, equal values by index, NaN after every number.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct TopK {
    pub axis: usize,
    pub largest: bool,
    pub k: usize,
}

/// One candidate of a lane, ordered by rank: `a < b` when `a` comes first in the output.
#[derive(Clone, Copy)]
struct Candidate {
    value: f32,
    index: usize,
    largest: bool,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_value = match (self.value.is_nan(), other.value.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                let ascending = self.value.partial_cmp(&other.value).unwrap_or(Ordering::Equal);
                if self.largest {
                    ascending.reverse()
                } else {
                    ascending
                }
            }
        };
        by_value.then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// Values of a contiguous lane checked together against the worst kept before any is looked at alone.
const BLOCK: usize = 64;

impl TopK {
    /// The first `k` of `lane` by rank, best first. `best` is a heap of at most k entries whose top is the worst
    /// kept (reused between lanes).
    fn select(&self, lane: tract_ndarray::ArrayView1<f32>, best: &mut BinaryHeap<Candidate>) -> Vec<Candidate> {
        best.clear();
        let consider = |best: &mut BinaryHeap<Candidate>, index: usize, value: f32| {
            let candidate = Candidate { value, index, largest: self.largest };
            if best.len() < self.k {
                best.push(candidate);
            } else if best.peek().is_some_and(|worst| candidate < *worst) {
                *best.peek_mut().expect("the heap holds k entries") = candidate;
            }
        };
        match lane.as_slice() {
            Some(values) if self.k > 0 => {
                for (block, chunk) in values.chunks(BLOCK).enumerate() {
                    let full = best.len() == self.k;
                    if full && best.peek().is_some_and(|worst| !self.may_beat(chunk, worst.value)) {
                        continue;
                    }
                    for (i, &value) in chunk.iter().enumerate() {
                        consider(best, block * BLOCK + i, value);
                    }
                }
            }
            _ => {
                for (index, &value) in lane.iter().enumerate() {
                    consider(best, index, value);
                }
            }
        }
        let mut chosen: Vec<Candidate> = best.drain().collect();
        chosen.sort_unstable();
        chosen
    }

    /// Whether a value of `values`, each after the one `worst` came from, may rank before it. A later value equal
    /// to it ranks after it, and NaN after every number, so only a strictly better number may.
    fn may_beat(&self, values: &[f32], worst: f32) -> bool {
        if worst.is_nan() {
            return true;
        }
        if self.largest {
            values.iter().fold(false, |any, &v| any | (v > worst))
        } else {
            values.iter().fold(false, |any, &v| any | (v < worst))
        }
    }
}

impl Op for TopK {
    fn name(&self) -> StaticName {
        "TopK".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} {} along axis {}", if self.largest { "largest" } else { "smallest" }, self.k, self.axis)])
    }

    op_as_typed_op!();
}

impl EvalOp for TopK {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].try_as_plain_ram()?;
        let input = input.to_array_view::<f32>()?;
        ensure!(self.axis < input.ndim(), "TopK: axis {} of a rank {} input", self.axis, input.ndim());
        let length = input.shape()[self.axis];
        ensure!(self.k <= length, "TopK: k={} of an axis of {length}", self.k);
        let mut shape: TVec<usize> = input.shape().into();
        shape[self.axis] = self.k;
        let mut values = tract_ndarray::ArrayD::<f32>::zeros(&*shape);
        let mut indices = tract_ndarray::ArrayD::<i64>::zeros(&*shape);
        let axis = tract_ndarray::Axis(self.axis);
        let mut best = BinaryHeap::with_capacity(self.k);
        let lanes = input.lanes(axis).into_iter().zip(values.lanes_mut(axis)).zip(indices.lanes_mut(axis));
        for ((lane, mut lane_values), mut lane_indices) in lanes {
            for (j, chosen) in self.select(lane, &mut best).into_iter().enumerate() {
                lane_values[j] = chosen.value;
                lane_indices[j] = chosen.index as i64;
            }
        }
        Ok(tvec!(values.into_tensor().into_tvalue(), indices.into_tensor().into_tvalue()))
    }
}

impl TypedOp for TopK {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "TopK takes f32 values");
        ensure!(self.axis < inputs[0].rank(), "TopK: axis {} of a rank {} input", self.axis, inputs[0].rank());
        let mut shape = inputs[0].shape.to_tvec();
        shape[self.axis] = self.k.to_dim();
        Ok(tvec!(f32::fact(&shape), i64::fact(&shape)))
    }

    as_op!();
}

/// Puts [`TopK`] in place of every tract `Topk` over f32 with a constant k. Returns how many were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_each(model, |model, node, topk: &Topk| {
        let k = model.outlet_fact(node.inputs[1])?.konst.as_ref().and_then(|k| k.cast_to_scalar::<i64>().ok());
        let Some(k) = k.and_then(|k| usize::try_from(k).ok()) else { return Ok(None) };
        if model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
            return Ok(None);
        }
        Ok(Some(TopK { axis: topk.axis, largest: topk.largest, k }))
    })
}

/// Adds the NNEF form `lookout_top_k(input, axis, largest, k)`.
pub fn register_nnef(registry: &mut Registry) {
    registry.register_dumper(dump);
    registry.register_primitive(
        "lookout_top_k",
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Integer.named("axis"),
            TypeName::Logical.named("largest"),
            TypeName::Integer.named("k"),
        ],
        &[("values", TypeName::Scalar.tensor()), ("indices", TypeName::Integer.tensor())],
        load,
    );
}

fn dump(ast: &mut IntoAst, node: &TypedNode, op: &TopK) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    let attributes = [("axis", numeric(op.axis)), ("largest", logical(op.largest)), ("k", numeric(op.k))];
    Ok(Some(invocation("lookout_top_k", &[input], &attributes)))
}

fn load(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let axis = size_arg(builder, invocation, "axis")?;
    let largest = invocation.named_arg_as(builder, "largest")?;
    let k = size_arg(builder, invocation, "k")?;
    builder.wire(TopK { axis, largest, k }, &[input])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract's own `Topk` and the replacement on the same input: values and indices equal.
    fn both(input: Tensor, axis: usize, largest: bool, k: usize) -> [TVec<TValue>; 2] {
        let theirs = Topk { axis, largest, fallback_k: k.to_dim() };
        let theirs = theirs
            .eval(&EvalContext::out_of_plan(), tvec!(input.clone().into_tvalue(), tensor0(k as i64).into_tvalue()));
        let ours = TopK { axis, largest, k }.eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue()));
        [theirs.unwrap(), ours.unwrap()]
    }

    #[test]
    fn the_k_best_equal_tract_sorting_the_whole_lane_ties_included() {
        // Few distinct values, so that ties cross the k-th place; three lanes along the middle axis.
        let data: Vec<f32> = (0..3 * 500 * 2).map(|i| ((i * 7919) % 37) as f32 / 4.0 - 3.0).collect();
        let input = Tensor::from_shape(&[3, 500, 2], &data).unwrap();
        for (largest, k) in [(true, 100), (false, 100), (true, 1), (true, 500), (false, 0)] {
            let [theirs, ours] = both(input.clone(), 1, largest, k);
            for (a, b) in theirs.iter().zip(&ours) {
                assert_eq!(a.shape(), b.shape(), "largest={largest} k={k}");
                assert_eq!(a.clone().into_tensor(), b.clone().into_tensor(), "largest={largest} k={k}");
            }
        }
    }

    /// Long contiguous lanes, read in blocks, give what the same lanes give value by value when they are strided:
    /// mostly one value below the k-th, with better values, ties of the k-th value and NaNs scattered after the
    /// first k, for the largest and the smallest.
    #[test]
    fn blocks_passed_over_lose_no_value_that_ranks_in_the_k_best() {
        let lane = 5000;
        let value = |i: usize| match (i * 7919) % 101 {
            0 => f32::NAN,
            1..=3 => ((i * 31) % 9) as f32,
            4..=6 => -(((i * 17) % 9) as f32),
            _ => 0.0,
        };
        let rows: Vec<f32> = (0..2 * lane).map(value).collect();
        let columns: Vec<f32> = (0..lane).flat_map(|j| [value(j), value(lane + j)]).collect();
        let rows = Tensor::from_shape(&[2, lane], &rows).unwrap();
        let columns = Tensor::from_shape(&[lane, 2], &columns).unwrap();
        for (largest, k) in [(true, 100), (false, 100), (true, 7), (false, 1), (true, lane)] {
            let eval = |input: &Tensor, axis: usize| {
                let op = TopK { axis, largest, k };
                let out = op.eval(&EvalContext::out_of_plan(), tvec!(input.clone().into_tvalue())).unwrap();
                // Each lane's k as a row, so that both layouts compare alike; values by their bits (NaN included).
                let as_rows = |t: TValue| {
                    let t = t.into_tensor();
                    if axis == 0 {
                        t.permute_axes(&[1, 0]).unwrap()
                    } else {
                        t
                    }
                };
                let (values, indices) = (as_rows(out[0].clone()), as_rows(out[1].clone()));
                let values: Vec<u32> =
                    values.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect();
                let indices = indices.try_as_plain_ram().unwrap().as_slice::<i64>().unwrap().to_vec();
                (values, indices)
            };
            assert_eq!(eval(&columns, 0), eval(&rows, 1), "largest={largest} k={k}");
        }
    }

    #[test]
    fn nan_comes_after_every_number_and_k_past_the_axis_is_refused() {
        let input = tensor1(&[1.0f32, f32::NAN, 3.0, -2.0]);
        let op = TopK { axis: 0, largest: true, k: 3 };
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(input.clone().into_tvalue())).unwrap();
        assert_eq!(out[1].clone().into_tensor(), tensor1(&[2i64, 0, 3]));
        let too_many = TopK { axis: 0, largest: true, k: 5 };
        let error = too_many.eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue())).unwrap_err();
        assert!(error.to_string().contains("k=5 of an axis of 4"), "{error}");
    }
}

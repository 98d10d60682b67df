//! What Lookout's own products ([`super::pointwise`], [`super::direct_conv`]) apply to their sums before storing
//! them, and how it is found in a graph: the bias addition, the leaky ReLU, clamps (ReLU, ReLU6), scales and shifts
//! by constants and the hard swish that follow a product alone, taken into it so that the output is written once.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Max, Min, Mul};
use tract_onnx::tract_core::ops::nn::LeakyRelu;

/// One elementwise operation of an epilogue, constants as f32 bits.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Step {
    /// Plus the epilogue's bias, one value per output channel.
    Bias,
    /// Times a constant.
    Scale(u32),
    /// Plus a constant.
    Shift(u32),
    /// Negative values times a constant (a leaky ReLU).
    Leaky(u32),
    Max(u32),
    Min(u32),
    /// `v · min(max(v + shift, lo), hi)`: the hard swish's gate (3, 0, 6), its scale a `Scale` after it.
    Gate([u32; 3]),
}

impl Step {
    /// The step on one value, for the portable loops.
    pub fn apply(&self, v: f32, bias: f32) -> f32 {
        let f = f32::from_bits;
        match *self {
            Step::Bias => v + bias,
            Step::Scale(a) => v * f(a),
            Step::Shift(b) => v + f(b),
            Step::Leaky(alpha) => {
                if v < 0.0 {
                    v * f(alpha)
                } else {
                    v
                }
            }
            Step::Max(x) => v.max(f(x)),
            Step::Min(x) => v.min(f(x)),
            Step::Gate([shift, lo, hi]) => v * (v + f(shift)).max(f(lo)).min(f(hi)),
        }
    }
}

/// What a product applies to each sum before storing it: `steps` in order.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Epilogue {
    /// One value per output channel, for [`Step::Bias`].
    pub bias: Option<Arc<Tensor>>,
    pub steps: Vec<Step>,
}

/// An epilogue's values as the kernels take them.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub bias: Option<&'a [f32]>,
    pub steps: &'a [Step],
}

impl Epilogue {
    /// Its values, read in place, with the bias checked to hold one value per each of `n` channels.
    pub fn parts(&self, n: usize) -> TractResult<Parts<'_>> {
        let bias = self.bias.as_ref().map(|b| b.try_as_plain_ram()?.as_slice::<f32>()).transpose()?;
        ensure!(bias.is_none_or(|b| b.len() == n), "a bias of {:?} values for {n} channels", bias.map(<[f32]>::len));
        ensure!(bias.is_some() || !self.steps.contains(&Step::Bias), "a bias step without a bias");
        Ok(Parts { bias, steps: &self.steps })
    }

    pub fn describe(&self) -> String {
        let f = f32::from_bits;
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|step| match *step {
                Step::Bias => "+bias".to_string(),
                Step::Scale(a) => format!("*{}", f(a)),
                Step::Shift(b) => format!("+{}", f(b)),
                Step::Leaky(alpha) => format!("leaky {}", f(alpha)),
                Step::Max(x) => format!("max {}", f(x)),
                Step::Min(x) => format!("min {}", f(x)),
                Step::Gate([s, lo, hi]) => format!("gate +{} in {}..{}", f(s), f(lo), f(hi)),
            })
            .collect();
        format!("epilogue [{}]", steps.join(", "))
    }
}

impl Parts<'_> {
    /// The epilogue of one sum, for the portable loops.
    pub fn apply(&self, sum: f32, channel: usize) -> f32 {
        let bias = self.bias.map_or(0.0, |b| b[channel]);
        self.steps.iter().fold(sum, |v, step| step.apply(v, bias))
    }
}

pub fn concrete_shape(fact: &TypedFact) -> Option<TVec<usize>> {
    fact.shape.as_concrete().map(|s| s.into())
}

/// What follows the product at node `id` (`n` output channels, innermost where `out_n_last`, else outermost) and
/// can be computed with it, through reshapes and casts that keep the values in place: a bias addition (a constant
/// of one value per output channel; added to `bias`, the product's own, if it has one) first, then any of a leaky
/// ReLU, additions, multiplications, `Max` and `Min` by one constant, and the gate of a hard swish (the value times
/// its own clamped shift, with the value scaled first or not). Returns the epilogue, the last node taken and its
/// output shape.
pub fn following(
    model: &TypedModel,
    id: usize,
    n: usize,
    out_n_last: bool,
    bias: Option<Vec<f32>>,
) -> TractResult<(Epilogue, usize, TVec<usize>)> {
    let mut epilogue = Epilogue { steps: if bias.is_some() { vec![Step::Bias] } else { vec![] }, ..Default::default() };
    let mut bias = bias;
    let mut last = id;
    let mut last_shape = concrete_shape(model.outlet_fact(OutletId::new(id, 0))?).unwrap_or_default();
    let mut cursor = id;
    loop {
        let outlet = OutletId::new(cursor, 0);
        if model.outputs.contains(&outlet) {
            break;
        }
        let Some(shape) = concrete_shape(model.outlet_fact(outlet)?) else { break };
        if let Some((steps, end)) = gate_at(model, outlet)? {
            epilogue.steps.extend(steps);
            (cursor, last, last_shape) = (end, end, shape);
            continue;
        }
        let successors = model.outlet_successors(outlet);
        if successors.len() != 1 {
            break;
        }
        let next = model.node(successors[0].node);
        let Some(next_shape) = concrete_shape(model.outlet_fact(OutletId::new(next.id, 0))?) else { break };
        if next_shape.iter().product::<usize>() != shape.iter().product::<usize>() {
            break;
        }
        if in_place(next) {
            cursor = next.id;
            continue;
        }
        let step = if let Some(leaky) = next.op_as::<ElementWiseOp>().and_then(|op| op.0.downcast_ref::<LeakyRelu>()) {
            Step::Leaky(leaky.alpha.to_bits())
        } else {
            let Some(binary) = next.op_as::<TypedBinOp>() else { break };
            if next.inputs.len() != 2 || next_shape != shape {
                break;
            }
            let Some(konst) = constant_through_casts(model, next.inputs[1 - successors[0].slot])? else { break };
            let values = konst.try_as_plain_ram()?;
            let values = values.as_slice::<f32>()?;
            if let [value] = values {
                match () {
                    _ if binary.0.is::<Add>() => Step::Shift(value.to_bits()),
                    _ if binary.0.is::<Mul>() => Step::Scale(value.to_bits()),
                    _ if binary.0.is::<Max>() => Step::Max(value.to_bits()),
                    _ if binary.0.is::<Min>() => Step::Min(value.to_bits()),
                    _ => break,
                }
            } else if binary.0.is::<Add>() && epilogue.steps.iter().all(|s| *s == Step::Bias) {
                let Some(added) = per_channel(konst.shape(), values, &shape, n, out_n_last) else { break };
                bias = Some(match bias {
                    Some(own) => own.iter().zip(&added).map(|(a, b)| a + b).collect(),
                    None => added,
                });
                epilogue.steps = vec![Step::Bias];
                (cursor, last, last_shape) = (next.id, next.id, next_shape);
                continue;
            } else {
                break;
            }
        };
        epilogue.steps.push(step);
        (cursor, last, last_shape) = (next.id, next.id, next_shape);
    }
    epilogue.bias = bias.map(|b| Tensor::from_shape(&[n], &b)).transpose()?.map(Tensor::into_arc_tensor);
    Ok((epilogue, last, last_shape))
}

/// A reshape that keeps the values where they are, or a cast to f32 (which NNEF's loader puts before every binary
/// operator's inputs).
pub fn in_place(node: &TypedNode) -> bool {
    let kept = match (node.op_as::<AxisOp>(), node.op_as::<Cast>()) {
        (Some(axis_op), _) => !matches!(axis_op, AxisOp::Move(..)),
        (_, Some(cast)) => cast.to == f32::datum_type(),
        _ => false,
    };
    kept && node.inputs.len() == 1
}

/// The node `node` reaches through casts to f32 that feed one node each.
fn through_casts(model: &TypedModel, node: usize) -> usize {
    let mut node = node;
    while let Some(cast) = model.node(node).op_as::<Cast>() {
        let successors = model.outlet_successors(OutletId::new(node, 0));
        if cast.to != f32::datum_type() || successors.len() != 1 {
            break;
        }
        node = successors[0].node;
    }
    node
}

/// The node whose output reaches `outlet` through casts to f32.
fn origin(model: &TypedModel, mut outlet: OutletId) -> usize {
    loop {
        let node = model.node(outlet.node);
        match node.op_as::<Cast>() {
            Some(cast) if cast.to == f32::datum_type() && node.inputs.len() == 1 => outlet = node.inputs[0],
            _ => return outlet.node,
        }
    }
}

/// The hard swish's gate where `outlet` feeds two branches that meet in one multiplication: `+ shift`, `Max` and
/// `Min` by constants on one, the value itself (or times a constant) on the other. Returns the steps and the
/// multiplication's node.
fn gate_at(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(Vec<Step>, usize)>> {
    let successors = model.outlet_successors(outlet);
    let [a, b] = successors else { return Ok(None) };
    let scalar = |node: &TypedNode, op: &dyn Fn(&TypedBinOp) -> bool| -> TractResult<Option<f32>> {
        if node.op_as::<TypedBinOp>().is_none_or(|b| !op(b)) || node.inputs.len() != 2 {
            return Ok(None);
        }
        for input in &node.inputs {
            if let Some(konst) = constant_through_casts(model, *input)? {
                return Ok(konst.try_as_plain_ram()?.as_slice::<f32>()?.first().copied().filter(|_| konst.len() == 1));
            }
        }
        Ok(None)
    };
    let single = |node: usize| -> Option<usize> {
        match model.outlet_successors(OutletId::new(node, 0)) {
            [only] => Some(through_casts(model, only.node)),
            _ => None,
        }
    };
    for (gate_start, value_start) in [(a.node, b.node), (b.node, a.node)] {
        // The gate: + shift, then Max and Min by constants (either order).
        let add = model.node(through_casts(model, gate_start));
        let Some(shift) = scalar(add, &|b| b.0.is::<Add>())? else { continue };
        let Some(first) = single(add.id) else { continue };
        let Some(second) = single(first) else { continue };
        let (first, second) = (model.node(first), model.node(second));
        let (lo, hi) = match (
            scalar(first, &|b| b.0.is::<Max>())?,
            scalar(second, &|b| b.0.is::<Min>())?,
            scalar(first, &|b| b.0.is::<Min>())?,
            scalar(second, &|b| b.0.is::<Max>())?,
        ) {
            (Some(lo), Some(hi), _, _) | (_, _, Some(hi), Some(lo)) if lo <= hi => (lo, hi),
            _ => continue,
        };
        let Some(product) = single(second.id) else { continue };
        // The value: straight into the product, or times a constant first.
        let value = model.node(through_casts(model, value_start));
        let scale = if value.id == product { None } else { scalar(value, &|b| b.0.is::<Mul>())? };
        if value.id != product && (scale.is_none() || single(value.id) != Some(product)) {
            continue;
        }
        let product_node = model.node(product);
        let mut origins: Vec<usize> = product_node.inputs.iter().map(|i| origin(model, *i)).collect();
        origins.sort();
        let mut expected = vec![second.id, if scale.is_some() { value.id } else { outlet.node }];
        expected.sort();
        let is_mul = product_node.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Mul>());
        let taken = [add.id, first.id, second.id, value.id];
        if !is_mul
            || origins != expected
            || model.outlet_fact(OutletId::new(product, 0))?.shape != model.outlet_fact(outlet)?.shape
            || model.outputs.iter().any(|o| taken.contains(&o.node))
        {
            continue;
        }
        let mut steps = vec![Step::Gate([shift, lo, hi].map(f32::to_bits))];
        steps.extend(scale.map(|s| Step::Scale(s.to_bits())));
        return Ok(Some((steps, product)));
    }
    Ok(None)
}

/// The f32 constant at `outlet`, or behind casts to f32.
pub fn constant_through_casts(model: &TypedModel, mut outlet: OutletId) -> TractResult<Option<Arc<Tensor>>> {
    loop {
        let fact = model.outlet_fact(outlet)?;
        if let Some(konst) = &fact.konst {
            return Ok((konst.datum_type() == f32::datum_type()).then(|| konst.clone()));
        }
        let node = model.node(outlet.node);
        match node.op_as::<Cast>() {
            Some(cast) if cast.to == f32::datum_type() && node.inputs.len() == 1 => outlet = node.inputs[0],
            _ => return Ok(None),
        }
    }
}

/// A constant added to an output of `shape` as one value per output channel: one value, or `n` values along the
/// single axis longer than one, where that axis is the innermost (`out_n_last`) or the outermost of the output's
/// axes longer than one.
fn per_channel(konst: &[usize], values: &[f32], shape: &[usize], n: usize, out_n_last: bool) -> Option<Vec<f32>> {
    if values.len() == 1 {
        return Some(vec![values[0]; n]);
    }
    if konst.len() != shape.len() || values.len() != n {
        return None;
    }
    let axis = konst.iter().position(|&l| l != 1)?;
    let others: usize = if out_n_last { shape[axis + 1..].iter().product() } else { shape[..axis].iter().product() };
    (shape[axis] == n && others == 1).then(|| values.to_vec())
}

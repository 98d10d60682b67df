//! What Lookout's own products ([`super::pointwise`], [`super::direct_conv`]) apply to their sums before storing
//! them, and how it is found in a graph: the bias addition, the leaky ReLU and the clamps (ReLU, ReLU6) that follow
//! a product alone, taken into it so that the output is written once.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Max, Min};
use tract_onnx::tract_core::ops::nn::LeakyRelu;

/// `min(max(leaky(v + bias[channel]), lo), hi)`, where `leaky` multiplies negative values by `alpha`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Epilogue {
    /// One value per output channel.
    pub bias: Option<Arc<Tensor>>,
    /// The leaky ReLU's slope for negative values, as f32 bits.
    pub leaky_alpha_bits: Option<u32>,
    /// The clamp's bounds, as f32 bits (−∞ and +∞ where the graph has none).
    pub clamp_bits: [u32; 2],
}

impl Default for Epilogue {
    fn default() -> Epilogue {
        Epilogue {
            bias: None,
            leaky_alpha_bits: None,
            clamp_bits: [f32::NEG_INFINITY, f32::INFINITY].map(f32::to_bits),
        }
    }
}

/// An epilogue's values as the kernels take them.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub bias: Option<&'a [f32]>,
    pub leaky: bool,
    pub alpha: f32,
    pub lo: f32,
    pub hi: f32,
}

impl Epilogue {
    /// Its values, with the bias checked to hold one value per each of `n` channels.
    pub fn parts<'a>(&self, bias: &'a Option<Vec<f32>>, n: usize) -> TractResult<Parts<'a>> {
        ensure!(
            bias.as_ref().is_none_or(|b| b.len() == n),
            "a bias of {:?} values for {n} channels",
            bias.as_ref().map(Vec::len)
        );
        Ok(Parts {
            bias: bias.as_deref(),
            leaky: self.leaky_alpha_bits.is_some(),
            alpha: f32::from_bits(self.leaky_alpha_bits.unwrap_or(1f32.to_bits())),
            lo: f32::from_bits(self.clamp_bits[0]),
            hi: f32::from_bits(self.clamp_bits[1]),
        })
    }

    /// The bias as f32 values, if there is one.
    pub fn bias_values(&self) -> TractResult<Option<Vec<f32>>> {
        self.bias.as_ref().map(|b| Ok(b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())).transpose()
    }

    pub fn describe(&self) -> String {
        let leaky = self.leaky_alpha_bits.map(|a| format!(" leaky {}", f32::from_bits(a))).unwrap_or_default();
        let [lo, hi] = self.clamp_bits.map(f32::from_bits);
        format!("bias:{}{leaky} clamp {lo}..{hi}", self.bias.is_some())
    }
}

impl Parts<'_> {
    /// The epilogue of one sum, for the portable loops.
    pub fn apply(&self, sum: f32, channel: usize) -> f32 {
        let mut v = sum + self.bias.map_or(0.0, |b| b[channel]);
        if self.leaky && v < 0.0 {
            v *= self.alpha;
        }
        v.max(self.lo).min(self.hi)
    }
}

pub fn concrete_shape(fact: &TypedFact) -> Option<TVec<usize>> {
    fact.shape.as_concrete().map(|s| s.into())
}

/// What follows the product at node `id` (`n` output channels, innermost where `out_n_last`, else outermost) and
/// can be computed with it, through reshapes and casts that keep the values in place: a bias addition (a constant
/// of one value per output channel, or one value; added to `bias`, the product's own, if it has one), then a leaky
/// ReLU, then clamps (`Max` and `Min` by one constant). Returns the epilogue, the last node taken and its output
/// shape.
pub fn following(
    model: &TypedModel,
    id: usize,
    n: usize,
    out_n_last: bool,
    mut bias: Option<Vec<f32>>,
) -> TractResult<(Epilogue, usize, TVec<usize>)> {
    let mut epilogue = Epilogue::default();
    let mut clamp = [f32::NEG_INFINITY, f32::INFINITY];
    let (mut biased, mut lo_set, mut hi_set) = (false, false, false);
    let mut last = id;
    let mut last_shape = concrete_shape(model.outlet_fact(OutletId::new(id, 0))?).unwrap_or_default();
    let mut cursor = id;
    loop {
        let outlet = OutletId::new(cursor, 0);
        let successors = model.outlet_successors(outlet);
        if model.outputs.contains(&outlet) || successors.len() != 1 {
            break;
        }
        let next = model.node(successors[0].node);
        let Some(shape) = concrete_shape(model.outlet_fact(OutletId::new(next.id, 0))?) else { break };
        if concrete_shape(model.outlet_fact(outlet)?).map(|s| s.iter().product::<usize>())
            != Some(shape.iter().product())
        {
            break;
        }
        // Reshapes keep the values where they are, and so does a cast to f32 (which NNEF's loader puts before
        // every binary operator's inputs).
        let in_place = match (next.op_as::<AxisOp>(), next.op_as::<Cast>()) {
            (Some(axis_op), _) => !matches!(axis_op, AxisOp::Move(..)),
            (_, Some(cast)) => cast.to == f32::datum_type(),
            _ => false,
        };
        let activated = epilogue.leaky_alpha_bits.is_some() || lo_set || hi_set;
        if in_place && next.inputs.len() == 1 {
            cursor = next.id;
            continue;
        } else if let Some(leaky) = next.op_as::<ElementWiseOp>().and_then(|op| op.0.downcast_ref::<LeakyRelu>()) {
            if activated || next.inputs.len() != 1 {
                break;
            }
            epilogue.leaky_alpha_bits = Some(leaky.alpha.to_bits());
        } else {
            let Some(binary) = next.op_as::<TypedBinOp>() else { break };
            if next.inputs.len() != 2 || concrete_shape(model.outlet_fact(outlet)?).as_ref() != Some(&shape) {
                break;
            }
            let Some(konst) = constant_through_casts(model, next.inputs[1 - successors[0].slot])? else { break };
            let values = konst.try_as_plain_ram()?;
            let values = values.as_slice::<f32>()?;
            if binary.0.is::<Add>() && !biased && !activated {
                let Some(added) = per_channel(konst.shape(), values, &shape, n, out_n_last) else { break };
                bias = Some(match bias {
                    Some(own) => own.iter().zip(&added).map(|(a, b)| a + b).collect(),
                    None => added,
                });
                biased = true;
            } else if binary.0.is::<Max>() && !lo_set && values.len() == 1 && values[0] <= clamp[1] {
                clamp[0] = values[0];
                lo_set = true;
            } else if binary.0.is::<Min>() && !hi_set && values.len() == 1 && values[0] >= clamp[0] {
                clamp[1] = values[0];
                hi_set = true;
            } else {
                break;
            }
        }
        cursor = next.id;
        last = next.id;
        last_shape = shape;
    }
    epilogue.bias = bias.map(|b| Tensor::from_shape(&[n], &b)).transpose()?.map(Tensor::into_arc_tensor);
    epilogue.clamp_bits = clamp.map(f32::to_bits);
    Ok((epilogue, last, last_shape))
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

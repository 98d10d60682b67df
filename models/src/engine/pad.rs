//! Constant padding of f32 tensors as whole rows. tract 0.23.9 pads through ndarray, one element at a time along
//! the innermost axis: the padded input of CenterNet's first convolution (a 512×512 image of 3 channels, which
//! tract's optimizer pads before its im2col) took 2.2 ms. Here the output is filled with the constant and each
//! run of values the padding leaves contiguous is copied at once. Graphs get it after optimization, in place of
//! tract's `Pad` of an f32 tensor with a constant.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

/// `input` with `pads[axis]` = (before, after) values of `value` (as bits) around each axis.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ConstantPad {
    pub pads: Vec<(usize, usize)>,
    pub value_bits: u32,
}

impl ConstantPad {
    fn output_shape(&self, input: &[usize]) -> TractResult<TVec<usize>> {
        ensure!(
            input.len() == self.pads.len(),
            "ConstantPad: {} pads for a rank {} input",
            self.pads.len(),
            input.len()
        );
        Ok(input.iter().zip(&self.pads).map(|(len, (before, after))| len + before + after).collect())
    }

    /// Copies `input` (of `shape`) into `out` (of the padded shape, already filled with the constant) at its place.
    fn place(&self, input: &[f32], shape: &[usize], out: &mut [f32]) {
        // The innermost padded axis and the axes inside it are contiguous in the input: one run per index of the
        // axes outside it.
        let Some(innermost) = self.pads.iter().rposition(|&(before, after)| before + after > 0) else {
            out.copy_from_slice(input);
            return;
        };
        let run: usize = shape[innermost..].iter().product();
        let out_shape: Vec<usize> = shape.iter().zip(&self.pads).map(|(len, (b, a))| len + b + a).collect();
        let stride = |axis: usize| out_shape[axis + 1..].iter().product::<usize>();
        // Each run's offset in the output, built axis by axis.
        let mut offsets = vec![self.pads[innermost].0 * stride(innermost)];
        for (axis, (&len, &(before, _))) in shape.iter().zip(&self.pads).enumerate().take(innermost) {
            let stride = stride(axis);
            offsets = offsets.iter().flat_map(|base| (0..len).map(move |i| base + (before + i) * stride)).collect();
        }
        for (source, offset) in input.chunks_exact(run).zip(offsets) {
            out[offset..offset + run].copy_from_slice(source);
        }
    }
}

impl Op for ConstantPad {
    fn name(&self) -> StaticName {
        "ConstantPad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} with {}", self.pads, f32::from_bits(self.value_bits))])
    }

    op_as_typed_op!();
}

impl EvalOp for ConstantPad {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape: TVec<usize> = inputs[0].shape().into();
        let output_shape = self.output_shape(&shape)?;
        let input = inputs[0].try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let mut out = vec![f32::from_bits(self.value_bits); output_shape.iter().product()];
        if !input.is_empty() {
            self.place(input, &shape, &mut out);
        }
        Ok(tvec!(tract_ndarray::ArrayD::from_shape_vec(&*output_shape, out)?.into_tensor().into_tvalue()))
    }
}

impl TypedOp for ConstantPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "ConstantPad takes f32 values");
        let shape = inputs[0].shape.as_concrete().context("ConstantPad: a shape known at load")?;
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

/// Puts [`ConstantPad`] in place of every tract `Pad` of an f32 tensor of known shape with a constant. Returns how
/// many were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_each(model, |model, node, pad: &Pad| {
        let fact = model.outlet_fact(node.inputs[0])?;
        let PadMode::Constant(value) = &pad.mode else { return Ok(None) };
        if fact.datum_type != f32::datum_type() || fact.shape.as_concrete().is_none() || value.len() != 1 {
            return Ok(None);
        }
        let value = value.cast_to_scalar::<f32>()?;
        Ok(Some(ConstantPad { pads: pad.pads.clone(), value_bits: value.to_bits() }))
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{op_names, run, values};
    use super::*;

    /// Padding before and after inner, middle and outer axes, none on some, with zero and another constant: the
    /// rewritten graph holds a ConstantPad and gives tract's values exactly.
    #[test]
    fn constant_padding_equals_tracts_pad() {
        type Case<'a> = (&'a [usize], &'a [(usize, usize)], f32);
        let cases: [Case; 5] = [
            (&[1, 7, 9, 3], &[(0, 0), (0, 1), (0, 1), (0, 0)], 0.0),
            (&[1, 7, 9, 3], &[(0, 0), (2, 1), (1, 3), (0, 0)], -1.5),
            (&[2, 5, 6], &[(0, 0), (0, 0), (2, 2)], 0.0),
            (&[4, 3], &[(1, 2), (0, 0)], 7.0),
            (&[3, 4, 5], &[(1, 0), (0, 2), (1, 1)], 0.25),
        ];
        for (shape, pads, value) in cases {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(shape)).unwrap();
            let pad = Pad { pads: pads.to_vec(), mode: PadMode::Constant(Arc::new(value.into())) };
            let out = model.wire_node("pad", pad, &[x]).unwrap()[0];
            model.select_output_outlets(&[out]).unwrap();
            let x = Tensor::from_shape(shape, &values(shape.iter().product(), 4)).unwrap();
            let expected = run(&model, &x);
            let mut rewritten = model.clone();
            assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{shape:?} {pads:?}");
            assert_eq!(op_names(&rewritten), ["Source", "ConstantPad"]);
            assert_eq!(run(&rewritten, &x), expected, "{shape:?} {pads:?} {value}");
        }
    }
}

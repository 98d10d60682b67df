//! Resampling along two adjacent axes (an image's height and width) in one pass. tract 0.23.9's `Resize` copies
//! its input, plans each axis on every run and writes a whole intermediate tensor per axis: CenterNet's three
//! feature-pyramid upsamples took 14–15 ms of a 125 ms run. Prepared graphs get this operator in place of a
//! `Resize` that changes exactly two adjacent axes of an f32 tensor; it uses tract's own per-axis plans and adds the
//! same terms in the same order, so its results are bit for bit tract's. Output rows are shared between threads.

use tract_nnef::internal::*;
use tract_nnef::ser::{ints, invocation, numeric, string, IntoAst};
use tract_onnx::tract_core::ops::nn::resize::{AxisPlan, CoordTransformer, Interpolator, Nearest, Resize};

use super::nnef_ops::size_arg;
use super::workers;

/// f32 `input` resampled along `axis` and `axis + 1` to `lengths`, at `scales` (as bits: the f32 values tract's
/// coordinate transforms divide by), with tract's interpolator, coordinate transform and rounding.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Resize2d {
    pub coord_transformer: CoordTransformer,
    pub interpolator: Interpolator,
    pub nearest: Nearest,
    pub axis: usize,
    pub lengths: [usize; 2],
    pub scale_bits: [u32; 2],
}

impl Resize2d {
    /// tract's plan for one of the two axes: which input cells each output cell reads, and their weights.
    fn plan(&self, which: usize, len_in: usize) -> AxisPlan {
        let resize = Resize {
            coord_transformer: self.coord_transformer.clone(),
            interpolator: self.interpolator.clone(),
            nearest: self.nearest,
            optional_scales_input: None,
            optional_sizes_input: None,
        };
        resize.plan_axis(f32::from_bits(self.scale_bits[which]), len_in, self.lengths[which])
    }

    fn output_shape<D: DimLike>(&self, input: &[D]) -> TractResult<TVec<D>> {
        ensure!(
            self.axis + 1 < input.len(),
            "Resize2d: axes {} and {} of a rank {} input",
            self.axis,
            self.axis + 1,
            input.len()
        );
        let mut shape: TVec<D> = input.into();
        shape[self.axis] = self.lengths[0].into();
        shape[self.axis + 1] = self.lengths[1].into();
        Ok(shape)
    }
}

/// `output[x] = Σ weight · input[index]` over `plan`'s taps for each x of `cells`, each output a run of `inner`
/// contiguous values, as tract's `resample_axis` adds them: from zero, in tap order, skipping zero weights; an
/// extrapolated cell is 0.
fn resample(input: &[f32], inner: usize, plan: &AxisPlan, cells: std::ops::Range<usize>, output: &mut [f32]) {
    let taps = |x: usize| {
        let window = if plan.extrapolated[x] { 0..0 } else { x * plan.window..(x + 1) * plan.window };
        plan.indices[window.clone()].iter().zip(&plan.weights[window]).filter(|(_, weight)| **weight != 0.0)
    };
    if inner == 1 {
        // Channel-first images resample their width one value at a time: no runs to slice.
        for (x, out) in cells.zip(output.iter_mut()) {
            *out = taps(x).fold(0.0, |sum, (&index, &weight)| sum + weight * input[index]);
        }
        return;
    }
    for (x, out) in cells.zip(output.chunks_exact_mut(inner)) {
        out.fill(0.0);
        for (&index, &weight) in taps(x) {
            for (o, i) in out.iter_mut().zip(&input[index * inner..][..inner]) {
                *o += weight * i;
            }
        }
    }
}

impl Op for Resize2d {
    fn name(&self) -> StaticName {
        "Resize2d".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} {} to {:?} along axes {} and {}",
            self.interpolator.as_str(),
            self.coord_transformer.as_str(),
            self.lengths,
            self.axis,
            self.axis + 1
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Resize2d {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape();
        let output_shape = self.output_shape(shape)?;
        let input = inputs[0].try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let [h_in, w_in] = [shape[self.axis], shape[self.axis + 1]];
        let [h_out, w_out] = self.lengths;
        ensure!(h_in > 0 && w_in > 0, "Resize2d: nothing to resample in a {shape:?} input");
        let inner: usize = shape[self.axis + 2..].iter().product();
        let (plan_h, plan_w, rows) = (self.plan(0, h_in), self.plan(1, w_in), w_in * inner);
        let mut output = vec![0f32; output_shape.iter().product()];
        if inner > 0 && w_out > 0 {
            // Output rows (an image's and a row's index) are shared between threads.
            let work = output.len() * (plan_h.window + plan_w.window);
            workers::share_rows(&mut output, w_out * inner, work, &|range, part| {
                let mut row = vec![0f32; rows];
                for (r, out_row) in range.zip(part.chunks_exact_mut(w_out * inner)) {
                    let (image, y) = (&input[r / h_out * h_in * rows..][..h_in * rows], r % h_out);
                    // The row of the height pass, as tract's first pass leaves it, then the width pass over it.
                    resample(image, rows, &plan_h, y..y + 1, &mut row);
                    resample(&row, inner, &plan_w, 0..w_out, out_row);
                }
            });
        }
        Ok(tvec!(tract_ndarray::ArrayD::from_shape_vec(&*output_shape, output)?.into_tensor().into_tvalue()))
    }
}

impl TypedOp for Resize2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "Resize2d takes f32 values");
        Ok(tvec!(f32::fact(self.output_shape(&inputs[0].shape)?)))
    }

    as_op!();
}

/// Puts [`Resize2d`] in place of every tract `Resize` of a concrete f32 tensor that changes exactly two adjacent
/// axes. Returns how many were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_each(model, |model, node, resize: &Resize| {
        let input_fact = model.outlet_fact(node.inputs[0])?;
        let (Some(input), Some(output)) =
            (input_fact.shape.as_concrete(), model.outlet_fact(OutletId::new(node.id, 0))?.shape.as_concrete())
        else {
            return Ok(None);
        };
        if input_fact.datum_type != f32::datum_type() || input.len() != output.len() {
            return Ok(None);
        }
        // The scales tract's Resize uses: its scales input when it has one per axis, else the ratio of lengths.
        let given = resize.optional_scales_input.and_then(|ix| node.inputs.get(ix));
        let given = given.map(|outlet| model.outlet_fact(*outlet)).transpose()?.and_then(|f| f.konst.clone());
        let scales: Vec<f32> = match given.filter(|s| s.len() == input.len()) {
            Some(scales) => scales.cast_to::<f32>()?.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
            None => output.iter().zip(input).map(|(o, i)| *o as f32 / *i as f32).collect(),
        };
        let changed: Vec<usize> = (0..input.len()).filter(|&a| !(input[a] == output[a] && scales[a] == 1.0)).collect();
        let &[axis, next] = changed.as_slice() else { return Ok(None) };
        if next != axis + 1 {
            return Ok(None);
        }
        Ok(Some(Resize2d {
            coord_transformer: resize.coord_transformer.clone(),
            interpolator: resize.interpolator.clone(),
            nearest: resize.nearest,
            axis,
            lengths: [output[axis], output[next]],
            scale_bits: [scales[axis].to_bits(), scales[next].to_bits()],
        }))
    })
}

pub fn register_nnef(registry: &mut Registry) {
    registry.register_dumper(dump);
    registry.register_primitive(
        "lookout_resize_2d",
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::String.named("coordinate_transformer"),
            TypeName::String.named("interpolator"),
            TypeName::String.named("nearest"),
            TypeName::Integer.named("axis"),
            TypeName::Integer.array().named("lengths"),
            TypeName::Integer.array().named("scale_bits"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load,
    );
}

fn dump(ast: &mut IntoAst, node: &TypedNode, op: &Resize2d) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    let attributes = [
        ("coordinate_transformer", string(op.coord_transformer.as_str())),
        ("interpolator", string(op.interpolator.as_str())),
        ("nearest", string(op.nearest.as_str())),
        ("axis", numeric(op.axis)),
        ("lengths", ints(&op.lengths)),
        ("scale_bits", ints(&op.scale_bits.map(|bits| bits as usize))),
    ];
    Ok(Some(invocation("lookout_resize_2d", &[input], &attributes)))
}

fn load(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let coord_transformer =
        CoordTransformer::parse(&invocation.named_arg_as::<String>(builder, "coordinate_transformer")?)?;
    let interpolator = Interpolator::parse(&invocation.named_arg_as::<String>(builder, "interpolator")?)?;
    let nearest = Nearest::parse(&invocation.named_arg_as::<String>(builder, "nearest")?)?;
    let axis = size_arg(builder, invocation, "axis")?;
    let pair = |name: &str, values: TVec<i64>| -> TractResult<[i64; 2]> {
        <[i64; 2]>::try_from(values.as_slice()).map_err(|_| anyhow!("{name} holds {} values, not 2", values.len()))
    };
    let lengths = pair("lengths", invocation.named_arg_as(builder, "lengths")?)?;
    let lengths = lengths.map(usize::try_from);
    let [Ok(height), Ok(width)] = lengths else { bail!("lengths {lengths:?} are not sizes") };
    let scale_bits = pair("scale_bits", invocation.named_arg_as(builder, "scale_bits")?)?.map(u32::try_from);
    let [Ok(h_scale), Ok(w_scale)] = scale_bits else { bail!("scale_bits {scale_bits:?} are not f32 bits") };
    let op = Resize2d {
        coord_transformer,
        interpolator,
        nearest,
        axis,
        lengths: [height, width],
        scale_bits: [h_scale, w_scale],
    };
    builder.wire(op, &[input])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tract's own Resize and the one-pass operator on the same input, for a channel-last and a channel-first
    /// tensor, each interpolator, the two coordinate transforms the detectors use and one that reads past the edges,
    /// upsampling by 2 and resizing to lengths that are not a multiple: bit for bit equal.
    #[test]
    fn one_pass_resampling_equals_tracts_resize_bit_for_bit() {
        let value = |i: usize| ((i * 7919) % 101) as f32 / 7.0 - 5.0;
        let cases: [(&[usize], usize, [usize; 2]); 3] =
            [(&[1, 5, 7, 3], 1, [10, 14]), (&[1, 3, 6, 5], 2, [12, 10]), (&[2, 4, 9, 2], 1, [7, 13])];
        for (shape, axis, lengths) in cases {
            let input: Vec<f32> = (0..shape.iter().product()).map(value).collect();
            let input = Tensor::from_shape(shape, &input).unwrap();
            for interpolator in [Interpolator::Linear, Interpolator::Cubic, Interpolator::Nearest] {
                for coord_transformer in
                    [CoordTransformer::Asymmetric, CoordTransformer::HalfPixel, CoordTransformer::AlignCorners]
                {
                    let mut sizes: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                    sizes[axis] = lengths[0] as i64;
                    sizes[axis + 1] = lengths[1] as i64;
                    let theirs = Resize {
                        coord_transformer: coord_transformer.clone(),
                        interpolator: interpolator.clone(),
                        nearest: Nearest::Floor,
                        optional_scales_input: None,
                        optional_sizes_input: Some(1),
                    };
                    let inputs = tvec!(input.clone().into_tvalue(), tensor1(&sizes).into_tvalue());
                    let theirs = theirs.eval(&EvalContext::out_of_plan(), inputs).unwrap();
                    let scale = |a: usize| (sizes[a] as f32 / shape[a] as f32).to_bits();
                    let ours = Resize2d {
                        coord_transformer: coord_transformer.clone(),
                        interpolator: interpolator.clone(),
                        nearest: Nearest::Floor,
                        axis,
                        lengths,
                        scale_bits: [scale(axis), scale(axis + 1)],
                    };
                    let ours = ours.eval(&EvalContext::out_of_plan(), tvec!(input.clone().into_tvalue())).unwrap();
                    let what = format!("{shape:?} {interpolator:?} {coord_transformer:?}");
                    assert_eq!(theirs[0].shape(), ours[0].shape(), "{what}");
                    let bits = |t: &TValue| -> Vec<u32> {
                        t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
                    };
                    assert_eq!(bits(&theirs[0]), bits(&ours[0]), "{what}");
                }
            }
        }
    }
}

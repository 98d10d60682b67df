//! Max pools of f32 images with their output rows shared between threads. tract 0.23.9's optimized max pool folds
//! each kernel tap over a row span, on the calling thread whatever the thread count: CenterNet's 3×3 pool of its
//! 128×128×90 heatmap took about 2 ms a run on one thread or two. This operator folds the same taps in the same
//! order with the same comparison, so it gives tract's values exactly, and shares the output rows between threads.
//! Graphs get it after optimization, in place of a tract `OptMaxPool` of a 2D f32 image of known shape that gives
//! no argmax indices.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::cnn::OptMaxPool;

use super::workers;

/// A max pool over images of `planes` planes of `h × w` pixels of `pixel` values each (the channels when they come
/// last, else one value, with a plane a channel), `kernel` taps `dilations` apart at `strides`, `pad_before` pixels
/// of padding, which no tap reads, before the first row and column.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RowMaxPool {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub pixel: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pad_before: [usize; 2],
    pub output_shape: TVec<usize>,
}

impl RowMaxPool {
    /// For each kernel column that lands in the image: the output columns `lo..hi` where it does, and the input
    /// column it reads for `lo`.
    fn column_spans(&self) -> TVec<(usize, usize, usize)> {
        let (w, ow, sw) = (self.w as isize, self.out_w, self.strides[1]);
        (0..self.kernel[1])
            .filter_map(|kx| {
                let offset = (kx * self.dilations[1]) as isize - self.pad_before[1] as isize;
                let last = w - 1 - offset;
                if last < 0 {
                    return None;
                }
                let lo = if offset >= 0 { 0 } else { (-offset as usize).div_ceil(sw) };
                let hi = (last as usize / sw + 1).min(ow);
                (lo < hi).then(|| (lo, hi, ((lo * sw) as isize + offset) as usize))
            })
            .collect()
    }

    /// Output row `oy` of a plane, from that plane's input `image`; `row` starts at the lowest value.
    fn pool_row(&self, image: &[f32], oy: usize, spans: &[(usize, usize, usize)], row: &mut [f32]) {
        let (px, sw) = (self.pixel, self.strides[1]);
        for ky in 0..self.kernel[0] {
            let iy = (oy * self.strides[0] + ky * self.dilations[0]) as isize - self.pad_before[0] as isize;
            if iy < 0 || iy >= self.h as isize {
                continue;
            }
            let input_row = &image[iy as usize * self.w * px..][..self.w * px];
            for &(lo, hi, start) in spans {
                let (out, taps) = (&mut row[lo * px..hi * px], &input_row[start * px..]);
                if sw == 1 {
                    fold_max(out, taps.iter());
                } else if px == 1 {
                    fold_max(out, taps.iter().step_by(sw));
                } else {
                    for (pixel, taps) in out.chunks_exact_mut(px).zip(taps.chunks(sw * px)) {
                        fold_max(pixel, taps.iter());
                    }
                }
            }
        }
    }
}

/// Each value of `out` the larger of itself and its tap, by tract's comparison (a NaN tap never replaces a value).
fn fold_max<'a>(out: &mut [f32], taps: impl Iterator<Item = &'a f32>) {
    for (o, &v) in out.iter_mut().zip(taps) {
        *o = if *o < v { v } else { *o };
    }
}

impl Op for RowMaxPool {
    fn name(&self) -> StaticName {
        "RowMaxPool".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} kernel at strides {:?} over {} planes of {}×{}×{}, padded {:?} before",
            self.kernel, self.strides, self.planes, self.h, self.w, self.pixel, self.pad_before
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RowMaxPool {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let (plane_in, row_out) = (self.h * self.w * self.pixel, self.out_w * self.pixel);
        ensure!(input.len() == self.planes * plane_in, "RowMaxPool: {} values for {self:?}", input.len());
        let mut output = vec![f32::MIN; self.planes * self.out_h * row_out];
        let spans = self.column_spans();
        if row_out > 0 {
            let work = output.len() * self.kernel[0] * self.kernel[1];
            workers::share_rows(&mut output, row_out, work, &|rows, part| {
                for (r, row) in rows.zip(part.chunks_exact_mut(row_out)) {
                    let (plane, oy) = (r / self.out_h, r % self.out_h);
                    self.pool_row(&input[plane * plane_in..][..plane_in], oy, &spans, row);
                }
            });
        }
        Ok(tvec!(tract_ndarray::ArrayD::from_shape_vec(&*self.output_shape, output)?.into_tensor().into_tvalue()))
    }
}

impl TypedOp for RowMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "RowMaxPool takes f32 values");
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    as_op!();
}

/// Puts [`RowMaxPool`] in place of every tract `OptMaxPool` of a 2D f32 image of known shape without argmax
/// indices. Returns how many were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_each(model, |model, node, pool: &OptMaxPool| {
        let fact = model.outlet_fact(node.inputs[0])?;
        let spec = &pool.pool_spec;
        let Some(shape) = fact.shape.as_concrete() else { return Ok(None) };
        if fact.datum_type != f32::datum_type() || pool.with_index_outputs.is_some() || spec.kernel_shape.len() != 2 {
            return Ok(None);
        }
        let Some(output_shape) = model.outlet_fact(OutletId::new(node.id, 0))?.shape.as_concrete().map(TVec::from)
        else {
            return Ok(None);
        };
        let data = spec.data_format.shape(TVec::from(shape))?;
        let (n, c, hw) = (data.n().copied().unwrap_or(1), *data.c(), data.hw_dims());
        let padding = spec.computed_padding(hw);
        let two = |v: &[usize]| [v[0], v[1]];
        let last = spec.data_format.c_is_last();
        Ok(Some(RowMaxPool {
            planes: if last { n } else { n * c },
            h: hw[0],
            w: hw[1],
            pixel: if last { c } else { 1 },
            out_h: padding[0].convoluted,
            out_w: padding[1].convoluted,
            kernel: two(&spec.kernel_shape),
            strides: two(&spec.strides()),
            dilations: two(&spec.dilations()),
            pad_before: [padding[0].pad_before, padding[1].pad_before],
            output_shape,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{op_names, run, values};
    use super::*;
    use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    /// Pools channel-last and channel-first, 3×3 at stride 1 with SAME padding (CenterNet's), 2×2 at stride 2,
    /// 3×3 at stride 2 with explicit uneven padding, and a dilated one: the optimized graph holds a RowMaxPool and
    /// gives tract's values exactly (rows are shared between threads as `workers::share_rows` shares them).
    #[test]
    fn row_max_pools_equal_tracts() {
        type Case<'a> = (DataFormat, &'a [usize], [usize; 2], [usize; 2], [usize; 2], PaddingSpec);
        let explicit = PaddingSpec::Explicit(tvec![1, 0], tvec![2, 1]);
        let cases: [Case; 5] = [
            (DataFormat::NHWC, &[1, 13, 17, 19], [3, 3], [1, 1], [1, 1], PaddingSpec::SameUpper),
            (DataFormat::NCHW, &[2, 3, 13, 17], [3, 3], [1, 1], [1, 1], PaddingSpec::SameUpper),
            (DataFormat::NHWC, &[1, 12, 10, 5], [2, 2], [2, 2], [1, 1], PaddingSpec::Valid),
            (DataFormat::NCHW, &[1, 4, 11, 9], [3, 3], [2, 2], [1, 1], explicit),
            (DataFormat::NHWC, &[1, 15, 14, 3], [3, 2], [1, 2], [2, 2], PaddingSpec::SameLower),
        ];
        for (format, shape, kernel, strides, dilations, padding) in cases {
            let channels = if format.c_is_last() { shape[3] } else { shape[1] };
            let spec = PoolSpec {
                data_format: format,
                kernel_shape: TVec::from_slice(&kernel),
                padding,
                dilations: Some(TVec::from_slice(&dilations)),
                strides: Some(TVec::from_slice(&strides)),
                input_channels: channels,
                output_channels: channels,
            };
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact(shape)).unwrap();
            let out = model.wire_node("pool", MaxPool { pool_spec: spec, with_index_outputs: None }, &[x]).unwrap()[0];
            model.select_output_outlets(&[out]).unwrap();
            let x = Tensor::from_shape(shape, &values(shape.iter().product(), 6)).unwrap();
            let optimized = model.into_optimized().unwrap();
            let expected = run(&optimized, &x);
            let mut rewritten = optimized.clone();
            assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{format:?} {shape:?} {kernel:?}");
            assert_eq!(op_names(&rewritten), ["Source", "RowMaxPool"]);
            assert_eq!(run(&rewritten, &x), expected, "{format:?} {shape:?} {kernel:?}");
        }
    }
}

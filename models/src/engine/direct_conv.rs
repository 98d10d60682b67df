//! Convolutions (NanoDet's 3×3 convolutions, PP-OCR detection's, CenterNet's first) computed from the input where
//! it lies, on CPUs with AVX-512. tract 0.23.9 pads the input, then copies each tap's shifted rows into panels (a
//! lazy im2col) before it multiplies: NanoDet spent 52 of its 71 ms in those products. With the channels first, the
//! positions of one output row are the kernel's columns, the output channels its rows, and each reduced index (an
//! input channel and a tap) reads the padded input's row at that tap's offset, sixteen positions at a time; a
//! convolution with a stride along the width first splits the padded input's columns into that many phases (even
//! and odd columns for a stride of 2), so that the positions of an output row read contiguous values there too.
//! With the channels last, the positions of an output row are the kernel's rows and the output channels its
//! columns: each reduced index (a tap and an input channel) is one value of the padded input a position
//! broadcasts against sixteen output channels' weights, which lie together in panels. Either way the bias and what
//! follows the convolution alone (activations: see [`super::epilogue`]) are applied before the sums leave the
//! registers, and output rows are shared between threads. Graphs get it at load in place of a tract `Conv` it
//! computes, on CPUs with AVX-512; elsewhere tract's own kernels run.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::epilogue::{self, concrete_shape, Epilogue, Parts};
use super::pointwise::{in_panels, PANEL};
use super::workers;

/// `output[o, y, x] = epilogue(Σ weights[o, c, dy, dx] · padded[c, sy · y + dy, sx · x + dx])` for one image of
/// `c_in` channels (`[1, c_in, h, w]`, or `[1, h, w, c_in]` with the channels last, zero-padded by `padding`),
/// `c_out` output channels and strides `[sy, sx]`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DirectConv {
    pub c_in: usize,
    pub c_out: usize,
    /// The input and the output hold each position's channels together.
    pub channels_last: bool,
    /// The kernel's height and width.
    pub kernel: [usize; 2],
    /// Zeros above, below, left and right of the input.
    pub padding: [usize; 4],
    pub strides: [usize; 2],
    /// The input's height and width.
    pub input_hw: [usize; 2],
    /// `[c_out, c_in, kernel height, kernel width]` with the channels first; with them last, `[kernel height,
    /// kernel width, c_in, c_out]` in panels of [`PANEL`] output channels (each panel's reduced indices together).
    pub weights: Arc<Tensor>,
    pub epilogue: Epilogue,
    pub output_shape: TVec<usize>,
}

/// One evaluation's operands, as raw parts the kernels and threads share.
#[derive(Clone, Copy)]
struct Plan<'a> {
    /// The padded input: in phases, `[stride along the width, c_in, padded height, phase width]`, with the channels
    /// first; `[padded height, padded width, c_in]` with them last.
    padded: *const f32,
    /// Values from one row of the padded input (of one phase and channel) to the next.
    row_len: usize,
    row_stride: usize,
    /// Values from one position of an output row to the next in the padded input, with the channels last.
    position_stride: usize,
    channels_last: bool,
    weights: *const f32,
    /// Where each reduced index (input channel, tap row, tap column) reads, from a position's top-left corner.
    offsets: &'a [usize],
    out: *mut f32,
    out_hw: [usize; 2],
    c_out: usize,
    epilogue: Parts<'a>,
}

// SAFETY: a plan only lives while `DirectConv::eval` holds its buffers, and threads write disjoint rows.
unsafe impl Send for Plan<'_> {}
unsafe impl Sync for Plan<'_> {}

/// A function computing some of a plan's outputs.
type Kernel = unsafe fn(&Plan, std::ops::Range<usize>);

impl DirectConv {
    fn padded_hw(&self) -> [usize; 2] {
        let [top, bottom, left, right] = self.padding;
        [self.input_hw[0] + top + bottom, self.input_hw[1] + left + right]
    }

    /// The width of one phase of the padded input's columns (all of them with the channels last, which has none).
    fn phase_w(&self) -> usize {
        if self.channels_last {
            return self.padded_hw()[1];
        }
        self.padded_hw()[1].div_ceil(self.strides[1])
    }

    fn out_hw(&self) -> TractResult<[usize; 2]> {
        let [ph, pw] = self.padded_hw();
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.strides;
        ensure!(
            kh >= 1 && kw >= 1 && sy >= 1 && sx >= 1 && ph >= kh && pw >= kw,
            "DirectConv: a {kh}×{kw} kernel at strides {sy}×{sx} over {ph}×{pw}"
        );
        Ok([(ph - kh) / sy + 1, (pw - kw) / sx + 1])
    }

    /// The input with its zeros around it and its columns in phases, or the input itself where there are no zeros
    /// and no stride along the width.
    fn pad<'x>(&self, x: &'x [f32]) -> std::borrow::Cow<'x, [f32]> {
        let [top, _, left, _] = self.padding;
        let sx = self.strides[1];
        if self.padding == [0; 4] && (sx == 1 || self.channels_last) {
            return x.into();
        }
        if self.channels_last {
            let [h, w] = self.input_hw;
            let [ph, pw] = self.padded_hw();
            let mut padded = vec![0f32; ph * pw * self.c_in];
            for (r, source) in x.chunks_exact(w * self.c_in).enumerate().take(h) {
                let start = ((top + r) * pw + left) * self.c_in;
                padded[start..start + source.len()].copy_from_slice(source);
            }
            return padded.into();
        }
        let [h, w] = self.input_hw;
        let [ph, _] = self.padded_hw();
        let phase_w = self.phase_w();
        let plane = self.c_in * ph * phase_w;
        let mut padded = vec![0f32; sx * plane];
        for (c, image) in x.chunks_exact(h * w).enumerate() {
            for (r, source) in image.chunks_exact(w).enumerate() {
                let row = c * ph * phase_w + (top + r) * phase_w;
                for phase in 0..sx {
                    // The first value of this row that falls in this phase, and where it goes there.
                    let first = (phase + sx - left % sx) % sx;
                    let start = phase * plane + row + (left + first) / sx;
                    let values = source.iter().skip(first).step_by(sx);
                    for (to, &value) in padded[start..].iter_mut().zip(values) {
                        *to = value;
                    }
                }
            }
        }
        padded.into()
    }

    /// Where each reduced index reads in the padded input, from a position's top-left corner: (input channel, tap
    /// row, tap column) with the channels first, (tap row, tap column, input channel) with them last.
    fn offsets(&self) -> Vec<usize> {
        let [ph, pw] = self.padded_hw();
        let [kh, kw] = self.kernel;
        if self.channels_last {
            let c_in = self.c_in;
            return (0..kh)
                .flat_map(|dy| (0..kw).flat_map(move |dx| (0..c_in).map(move |c| (dy * pw + dx) * c_in + c)))
                .collect();
        }
        let (sx, phase_w) = (self.strides[1], self.phase_w());
        let at = move |c: usize, dy: usize, dx: usize| {
            (dx % sx) * self.c_in * ph * phase_w + c * ph * phase_w + dy * phase_w + dx / sx
        };
        (0..self.c_in).flat_map(|c| (0..kh).flat_map(move |dy| (0..kw).map(move |dx| at(c, dy, dx)))).collect()
    }

    /// Computes `out` from `x` with `kernel` (this CPU's, or the portable one).
    fn convolve(&self, x: &[f32], out: &mut [f32], kernel: Kernel) -> TractResult<()> {
        let [h, w] = self.input_hw;
        let [kh, kw] = self.kernel;
        let out_hw = self.out_hw()?;
        ensure!(x.len() == self.c_in * h * w, "DirectConv: {} input values for {}×{h}×{w}", x.len(), self.c_in);
        ensure!(out.len() == self.c_out * out_hw[0] * out_hw[1], "DirectConv: {} outputs", out.len());
        let weights = self.weights.try_as_plain_ram()?;
        let weights = weights.as_slice::<f32>()?;
        let k = self.c_in * kh * kw;
        let expected = if self.channels_last { self.c_out.div_ceil(PANEL) * k * PANEL } else { self.c_out * k };
        ensure!(weights.len() == expected, "DirectConv: {} weights for {}×{k}", weights.len(), self.c_out);
        let padded = self.pad(x);
        let offsets = self.offsets();
        let row_len = if self.channels_last { self.phase_w() * self.c_in } else { self.phase_w() };
        let plan = Plan {
            padded: padded.as_ptr(),
            row_len,
            row_stride: self.strides[0],
            position_stride: self.strides[1] * self.c_in,
            channels_last: self.channels_last,
            weights: weights.as_ptr(),
            offsets: &offsets,
            out: out.as_mut_ptr(),
            out_hw,
            c_out: self.c_out,
            epilogue: self.epilogue.parts(self.c_out).map_err(|e| e.context("DirectConv"))?,
        };
        // SAFETY: the plan's buffers hold the sizes checked above, and each range writes its own rows.
        workers::share(out_hw[0], out.len() * k, 1, &|range| unsafe { kernel(&plan, range) });
        Ok(())
    }
}

/// Computes the output rows `range` of every output channel.
///
/// # Safety
/// The plan's pointers hold the padded input, `c_out × offsets.len()` weights and the whole output, and no other
/// thread writes these rows.
unsafe fn run(plan: &Plan, range: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512() {
        return avx512::run(plan, range);
    }
    portable_run(plan, range)
}

/// The same sums in plain Rust, for CPUs without AVX-512 (the rewrite leaves tract's convolutions there, so this
/// only runs where an operator is built by hand, as in tests).
///
/// # Safety
/// As [`run`].
unsafe fn portable_run(plan: &Plan, range: std::ops::Range<usize>) {
    let [oh, ow] = plan.out_hw;
    let k = plan.offsets.len();
    if plan.channels_last {
        for y in range {
            for x in 0..ow {
                let corner = plan.padded.add(plan.row_stride * y * plan.row_len + x * plan.position_stride);
                for o in 0..plan.c_out {
                    let panel = plan.weights.add(o / PANEL * k * PANEL + o % PANEL);
                    let sum = (0..k).fold(0f32, |s, kk| s + *panel.add(kk * PANEL) * *corner.add(plan.offsets[kk]));
                    *plan.out.add((y * ow + x) * plan.c_out + o) = plan.epilogue.apply(sum, o);
                }
            }
        }
        return;
    }
    for o in 0..plan.c_out {
        let weights = std::slice::from_raw_parts(plan.weights.add(o * k), k);
        for y in range.clone() {
            for x in 0..ow {
                let corner = plan.padded.add(plan.row_stride * y * plan.row_len + x);
                let sum = weights.iter().zip(plan.offsets).fold(0f32, |s, (w, &off)| s + w * *corner.add(off));
                *plan.out.add(o * oh * ow + y * ow + x) = plan.epilogue.apply(sum, o);
            }
        }
    }
}

/// The kernel's name on this CPU, for kernel reports.
pub fn kernel_name() -> &'static str {
    if super::avx512() {
        "lookout_avx512_direct_conv"
    } else {
        "lookout_direct_conv_portable"
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::avx512_products::{block, Product, Strided, Table, TILE_COLUMNS};
    use super::{Plan, PANEL};

    /// [`super::run`] with AVX-512: for each output row, 32 positions at a time against every output channel with
    /// the channels first; every position against 32 output channels at a time with them last.
    ///
    /// # Safety
    /// As [`super::run`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn run(plan: &Plan, range: std::ops::Range<usize>) {
        let [oh, ow] = plan.out_hw;
        let e = plan.epilogue;
        let k = plan.offsets.len();
        if plan.channels_last {
            for y in range {
                let p = Product {
                    a: plan.padded.add(plan.row_stride * y * plan.row_len),
                    a_row: plan.position_stride,
                    a_k: Table(plan.offsets),
                    k,
                    b_rows: Strided(PANEL),
                    b_tile: k * PANEL,
                    c: plan.out.add(y * ow * plan.c_out),
                    c_row: plan.c_out,
                    c_col: 1,
                    bias: e.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                    bias_per_row: false,
                    steps: e.steps,
                };
                block(&p, plan.weights, 0..ow, 0..plan.c_out);
            }
            return;
        }
        for y in range {
            let p = Product {
                a: plan.weights,
                a_row: plan.offsets.len(),
                a_k: Strided(1),
                k: plan.offsets.len(),
                b_rows: Table(plan.offsets),
                b_tile: TILE_COLUMNS,
                c: plan.out.add(y * ow),
                c_row: oh * ow,
                c_col: 1,
                bias: e.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                bias_per_row: true,
                steps: e.steps,
            };
            let row = plan.padded.add(plan.row_stride * y * plan.row_len);
            let mut x = 0;
            while x < ow {
                let end = (x + 32).min(ow);
                block(&p, row.add(x), 0..plan.c_out, x..end);
                x = end;
            }
        }
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{}→{} channels {}, {:?} kernel over {:?} padded {:?}, {} with {}",
            self.c_in,
            self.c_out,
            if self.channels_last { "last" } else { "first" },
            self.kernel,
            self.input_hw,
            self.padding,
            self.epilogue.describe(),
            kernel_name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        super::eval_into_f32(&inputs, &self.output_shape, |x, out| self.convolve(x, out, run))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "DirectConv takes f32 values");
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let macs = self.output_shape.iter().product::<usize>() * self.c_in * self.kernel[0] * self.kernel[1];
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

/// Puts [`DirectConv`] in place of every tract `Conv` it computes (f32, one image with its channels first or last,
/// one group, 2-D, dilation 1, constant weights as `[out, in, height, width]` and a constant bias), together with
/// the epilogue that follows it alone. Does nothing on CPUs without AVX-512. Returns how many were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    if !super::avx512() {
        return Ok(0);
    }
    super::replace_with_compaction(model, convolution_at)
}

/// If node `id` is a convolution [`DirectConv`] computes: its input, the operator (with what follows it fused) and
/// the last node it replaces.
fn convolution_at(model: &TypedModel, id: usize) -> TractResult<Option<(TVec<OutletId>, DirectConv, usize)>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::NHWC)
        || spec.kernel_shape.len() != 2
        || spec.strides().len() != 2
        || spec.dilations().iter().any(|&d| d != 1)
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let facts = model.node_input_facts(id)?;
    let (Some(x_shape), Some(weights), Some(bias)) = (
        concrete_shape(facts[0]),
        epilogue::constant_through_casts(model, node.inputs[1])?,
        epilogue::constant_through_casts(model, node.inputs[2])?,
    ) else {
        return Ok(None);
    };
    let channels_last = spec.data_format == DataFormat::NHWC;
    let (c_in, h, w) = match *x_shape.as_slice() {
        [1, c, h, w] if !channels_last => (c, h, w),
        [1, h, w, c] if channels_last => (c, h, w),
        _ => return Ok(None),
    };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let c_out = spec.output_channels;
    if facts[0].datum_type != f32::datum_type() || weights.shape() != [c_out, c_in, kh, kw] {
        return Ok(None);
    }
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = match bias.len() {
        1 => vec![bias[0]; c_out],
        n if n == c_out => bias,
        _ => return Ok(None),
    };
    let padding = spec.computed_padding(&[h, w]);
    let op_padding = [padding[0].pad_before, padding[0].pad_after, padding[1].pad_before, padding[1].pad_after];
    let (epilogue, last, output_shape) = epilogue::following(model, id, c_out, channels_last, Some(bias))?;
    let weights = if channels_last {
        // [out, in, height, width] as [height, width, in] rows of `out` columns, in panels.
        let w = weights.try_as_plain_ram()?;
        let w = w.as_slice::<f32>()?;
        // Reduced index `kk` is (dy, dx, c), the channel innermost.
        let weight = |kk: usize, o: usize| {
            let (tap, c) = (kk / c_in, kk % c_in);
            w[((o * c_in + c) * kh + tap / kw) * kw + tap % kw]
        };
        in_panels(c_in * kh * kw, c_out, weight)
    } else {
        weights
    };
    let op = DirectConv {
        c_in,
        c_out,
        channels_last,
        kernel: [kh, kw],
        padding: op_padding,
        strides: [spec.strides()[0], spec.strides()[1]],
        input_hw: [h, w],
        weights,
        epilogue,
        output_shape,
    };
    if op.out_hw()? != [padding[0].convoluted, padding[1].convoluted] {
        return Ok(None);
    }
    Ok(Some((tvec![node.inputs[0]], op, last)))
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{assert_close, op_names, run, ConvCase};
    use super::*;

    /// 3×3, 2×3 and 1×3 kernels, padded and not, at strides 1, 2 and 3, over widths that leave partial tiles and
    /// channel counts that leave partial row blocks, with the channels first and last (CenterNet's first
    /// convolution: 3 channels in, 16 out, stride 2, padded after), each with no activation, a leaky ReLU and a
    /// ReLU6: the rewritten graph holds one DirectConv in place of the convolution and its activation, and gives
    /// tract's results within float rounding, on AVX-512 and in the portable loop.
    #[test]
    fn direct_convolutions_equal_tracts_conv() {
        let (first, last) = (DataFormat::NCHW, DataFormat::NHWC);
        let cases = [
            (first, 5, 13, [9, 37], [3, 3], [1, 1, 1, 1], [1, 1]),
            (first, 3, 20, [6, 18], [1, 3], [0, 0, 1, 1], [1, 1]),
            (first, 4, 7, [5, 8], [3, 3], [0; 4], [1, 1]),
            (first, 6, 17, [11, 67], [3, 3], [1, 1, 1, 1], [2, 2]),
            (first, 3, 9, [8, 21], [3, 3], [0, 1, 0, 1], [2, 2]),
            (first, 2, 5, [7, 40], [2, 3], [0; 4], [1, 3]),
            (last, 3, 16, [16, 30], [3, 3], [0, 1, 0, 1], [2, 2]),
            (last, 5, 37, [9, 13], [3, 3], [1, 1, 1, 1], [1, 1]),
            (last, 4, 8, [7, 11], [2, 3], [0; 4], [1, 2]),
        ];
        for (format, c_in, c_out, hw, kernel, pads, strides) in cases {
            let x_shape = if format == last { [1, hw[0], hw[1], c_in] } else { [1, c_in, hw[0], hw[1]] };
            let case = ConvCase { x_shape, format, c_in, c_out, group: 1, kernel, pads, strides };
            let x = case.input();
            for act in ["none", "leaky", "relu6"] {
                let model = case.graph(act);
                let expected = run(&model, &x);
                let mut rewritten = model.clone();
                let what = format!("{format:?} {c_in}→{c_out} {hw:?} {kernel:?} {pads:?} {strides:?} {act}");
                assert_eq!(super::super::replace_with_compaction(&mut rewritten, convolution_at).unwrap(), 1, "{what}");
                assert_eq!(op_names(&rewritten), ["Source", "DirectConv"], "{what}");
                let conv = rewritten.nodes.iter().find_map(|node| node.op_as::<DirectConv>()).unwrap().clone();
                let xs = x.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
                let mut portable = vec![0f32; expected.len()];
                conv.convolve(&xs, &mut portable, portable_run).unwrap();
                assert_close(&run(&rewritten, &x), &expected, &format!("{what} rewritten"));
                assert_close(&portable, &expected, &format!("{what} portable"));
            }
        }
    }
}

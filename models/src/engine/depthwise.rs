//! Depthwise convolutions (one filter per channel: MobileNet's and PP-OCR's 3×3 and 5×5 layers) on CPUs with
//! AVX-512, channel-last or channel-first. tract 0.23.9 runs them on one thread, through its own routine
//! (channel-first) or Lookout's AVX2 one (`depthwise_x86`, channel-last), and applies the hard swish or ReLU that
//! follows in passes of their own; CenterNet spent 16–17 ms of its 80 there. Here output rows are shared between
//! threads, the taps that fall in the padding are skipped rather than read from a padded copy, and what follows
//! the convolution alone ([`super::epilogue`]) is applied before the sums are stored. Channel-last, sixteen channels
//! of four neighbouring positions are summed together; channel-first (stride 1 along the width), sixteen
//! neighbouring positions of one channel, four such runs together. Graphs get it at load in place of a tract
//! `Conv` it computes, on CPUs with AVX-512; elsewhere tract's own kernels run.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::epilogue::{self, concrete_shape, Epilogue, Parts};
use super::workers;

/// `output[y, x, c] = epilogue(Σ weights[dy · kw + dx, c] · input[sy · y + dy − top, sx · x + dx − left, c])` over
/// the taps that fall inside the input, for one image of `channels` channels, channel-last (`[1, h, w, c]`) or
/// channel-first (`[1, c, h, w]`, stride 1 along the width).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Depthwise {
    pub channels: usize,
    pub channel_last: bool,
    /// The kernel's height and width.
    pub kernel: [usize; 2],
    /// Zeros above, below, left and right of the input.
    pub padding: [usize; 4],
    pub strides: [usize; 2],
    /// The input's height and width.
    pub input_hw: [usize; 2],
    /// `[kernel height × kernel width, channels]`: each tap's weights, channels contiguous.
    pub weights: Arc<Tensor>,
    pub epilogue: Epilogue,
    pub output_shape: TVec<usize>,
}

/// One evaluation's operands, as raw parts the kernels and threads share.
#[derive(Clone, Copy)]
struct Plan<'a> {
    input: *const f32,
    weights: *const f32,
    out: *mut f32,
    channels: usize,
    channel_last: bool,
    kernel: [usize; 2],
    padding: [usize; 4],
    strides: [usize; 2],
    input_hw: [usize; 2],
    out_hw: [usize; 2],
    epilogue: Parts<'a>,
}

// SAFETY: a plan only lives while `Depthwise::eval` holds its buffers, and threads write disjoint rows.
unsafe impl Send for Plan<'_> {}
unsafe impl Sync for Plan<'_> {}

impl Plan<'_> {
    /// The taps along one axis that fall inside the input for output index `at`: `(first, end)`.
    fn taps(&self, axis: usize, at: usize) -> (usize, usize) {
        let start = at * self.strides[axis];
        let before = [self.padding[0], self.padding[2]][axis];
        let first = before.saturating_sub(start);
        let end = (before + self.input_hw[axis]).saturating_sub(start).min(self.kernel[axis]);
        (first, end.max(first))
    }

    /// The input index of tap `d` along `axis` for output index `at` (a tap [`Plan::taps`] keeps).
    fn source(&self, axis: usize, at: usize, d: usize) -> usize {
        at * self.strides[axis] + d - [self.padding[0], self.padding[2]][axis]
    }
}

/// Where value (row, column, channel) of an image lies in its buffer.
type Index = Box<dyn Fn(usize, usize, usize) -> usize>;

/// A function computing some output rows of a plan.
type Kernel = unsafe fn(&Plan, std::ops::Range<usize>);

impl Depthwise {
    fn out_hw(&self) -> TractResult<[usize; 2]> {
        let [top, bottom, left, right] = self.padding;
        let [ph, pw] = [self.input_hw[0] + top + bottom, self.input_hw[1] + left + right];
        let [kh, kw] = self.kernel;
        let [sy, sx] = self.strides;
        ensure!(
            kh >= 1 && kw >= 1 && sy >= 1 && sx >= 1 && ph >= kh && pw >= kw,
            "Depthwise: a {kh}×{kw} kernel at strides {sy}×{sx} over {ph}×{pw}"
        );
        ensure!(self.channel_last || sx == 1, "Depthwise: channel-first with a stride along the width");
        Ok([(ph - kh) / sy + 1, (pw - kw) / sx + 1])
    }

    /// Computes `out` from `x` with `kernel` (this CPU's, or the portable one).
    fn convolve(&self, x: &[f32], out: &mut [f32], kernel: Kernel) -> TractResult<()> {
        let [h, w] = self.input_hw;
        let out_hw = self.out_hw()?;
        let c = self.channels;
        ensure!(x.len() == c * h * w, "Depthwise: {} input values for {c}×{h}×{w}", x.len());
        ensure!(out.len() == c * out_hw[0] * out_hw[1], "Depthwise: {} outputs", out.len());
        let weights = self.weights.try_as_plain_ram()?;
        let weights = weights.as_slice::<f32>()?;
        ensure!(weights.len() == self.kernel[0] * self.kernel[1] * c, "Depthwise: {} weights", weights.len());
        let plan = Plan {
            input: x.as_ptr(),
            weights: weights.as_ptr(),
            out: out.as_mut_ptr(),
            channels: c,
            channel_last: self.channel_last,
            kernel: self.kernel,
            padding: self.padding,
            strides: self.strides,
            input_hw: self.input_hw,
            out_hw,
            epilogue: self.epilogue.parts(c).map_err(|e| e.context("Depthwise"))?,
        };
        let macs = out.len() * self.kernel[0] * self.kernel[1];
        // SAFETY: the plan's buffers hold the sizes checked above, and each range writes its own rows.
        workers::share(out_hw[0], macs, 1, &|range| unsafe { kernel(&plan, range) });
        Ok(())
    }
}

/// Computes the output rows `range` of every channel.
///
/// # Safety
/// The plan's pointers hold the whole input, `kernel height × kernel width × channels` weights and the whole
/// output, and no other thread writes these rows.
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
    let [h, w] = plan.input_hw;
    let [oh, ow] = plan.out_hw;
    let (channels, kw) = (plan.channels, plan.kernel[1]);
    // Where value (row, column, channel) lies in the input and in the output.
    let (input_at, output_at): (Index, Index) = if plan.channel_last {
        (Box::new(move |y, x, c| (y * w + x) * channels + c), Box::new(move |y, x, c| (y * ow + x) * channels + c))
    } else {
        (Box::new(move |y, x, c| (c * h + y) * w + x), Box::new(move |y, x, c| (c * oh + y) * ow + x))
    };
    for y in range {
        let (dy0, dy1) = plan.taps(0, y);
        for x in 0..ow {
            let (dx0, dx1) = plan.taps(1, x);
            for c in 0..channels {
                let mut sum = 0f32;
                for dy in dy0..dy1 {
                    for dx in dx0..dx1 {
                        let value = *plan.input.add(input_at(plan.source(0, y, dy), plan.source(1, x, dx), c));
                        sum += *plan.weights.add((dy * kw + dx) * channels + c) * value;
                    }
                }
                *plan.out.add(output_at(y, x, c)) = plan.epilogue.apply(sum, c);
            }
        }
    }
}

/// The kernel's name on this CPU, for kernel reports.
pub fn kernel_name() -> &'static str {
    if super::avx512() {
        "lookout_avx512_depthwise"
    } else {
        "lookout_depthwise_portable"
    }
}

/// The widest kernel [`Depthwise`] takes channel-first (its per-tap lane masks live on the stack).
const MAX_CHANNEL_FIRST_KERNEL_WIDTH: usize = 16;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::avx512_products::apply_steps;
    use super::Plan;

    /// Lanes `lo..hi` of sixteen, none where `hi <= lo`.
    fn lanes(lo: isize, hi: isize) -> u16 {
        let (lo, hi) = (lo.clamp(0, 16) as u32, hi.clamp(0, 16) as u32);
        if hi <= lo {
            0
        } else {
            (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16
        }
    }

    /// [`super::run`] with AVX-512.
    ///
    /// # Safety
    /// As [`super::run`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn run(plan: &Plan, range: std::ops::Range<usize>) {
        if plan.channel_last {
            let (ow, kw) = (plan.out_hw[1], plan.kernel[1]);
            for y in range {
                let mut x = 0;
                while x < ow {
                    let (dx0, dx1) = plan.taps(1, x);
                    // Taps fall inside the input for every position between two that have all of theirs there.
                    if (dx0, dx1) == (0, kw) && x + 4 <= ow && plan.taps(1, x + 3) == (0, kw) {
                        channel_last_positions::<4>(plan, y, x, 0..kw);
                        x += 4;
                    } else {
                        channel_last_positions::<1>(plan, y, x, dx0..dx1);
                        x += 1;
                    }
                }
            }
        } else {
            for c in 0..plan.channels {
                for y in range.clone() {
                    let mut x = 0;
                    while x < plan.out_hw[1] {
                        channel_first_run(plan, c, y, x);
                        x += 64;
                    }
                }
            }
        }
    }

    /// Channel-last: every channel of the `P` positions from `(y, x)`, sixteen channels at a time, over the taps
    /// `dxs` along the width (which all `P` positions have inside the input).
    #[target_feature(enable = "avx512f")]
    unsafe fn channel_last_positions<const P: usize>(plan: &Plan, y: usize, x: usize, dxs: std::ops::Range<usize>) {
        let (channels, kw, w, ow) = (plan.channels, plan.kernel[1], plan.input_hw[1], plan.out_hw[1]);
        let (dy0, dy1) = plan.taps(0, y);
        let e = plan.epilogue;
        let mut c0 = 0;
        while c0 < channels {
            let mask = lanes(0, (channels - c0) as isize);
            let mut acc = [_mm512_setzero_ps(); P];
            for dy in dy0..dy1 {
                let row = plan.input.add(plan.source(0, y, dy) * w * channels + c0);
                for dx in dxs.clone() {
                    let weights = _mm512_maskz_loadu_ps(mask, plan.weights.add((dy * kw + dx) * channels + c0));
                    for (p, sum) in acc.iter_mut().enumerate() {
                        let value = _mm512_maskz_loadu_ps(mask, row.add(plan.source(1, x + p, dx) * channels));
                        *sum = _mm512_fmadd_ps(value, weights, *sum);
                    }
                }
            }
            let bias = e.bias.map_or(_mm512_setzero_ps(), |b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)));
            for (p, sum) in acc.iter().enumerate() {
                let out = plan.out.add((y * ow + x + p) * channels + c0);
                _mm512_mask_storeu_ps(out, mask, apply_steps(*sum, e.steps, || bias));
            }
            c0 += 16;
        }
    }

    /// Channel-first: channel `c` of output row `y` at the 64 positions from `x` (those inside the row), as four
    /// runs of sixteen; lanes whose tap falls in the padding read nothing and add zero.
    #[target_feature(enable = "avx512f")]
    unsafe fn channel_first_run(plan: &Plan, c: usize, y: usize, x: usize) {
        let (channels, [h, w], [oh, ow], kw) = (plan.channels, plan.input_hw, plan.out_hw, plan.kernel[1]);
        let left = plan.padding[2] as isize;
        let mut masks = [[0u16; 4]; super::MAX_CHANNEL_FIRST_KERNEL_WIDTH];
        for (dx, masks) in masks.iter_mut().enumerate().take(kw) {
            for (v, mask) in masks.iter_mut().enumerate() {
                let first = (x + 16 * v) as isize;
                let start = first + dx as isize - left;
                *mask = lanes(-start, (w as isize - start).min(ow as isize - first));
            }
        }
        let (dy0, dy1) = plan.taps(0, y);
        let mut acc = [_mm512_setzero_ps(); 4];
        for dy in dy0..dy1 {
            let row = plan.input.add((c * h + plan.source(0, y, dy)) * w);
            for (dx, masks) in masks.iter().enumerate().take(kw) {
                let weight = _mm512_set1_ps(*plan.weights.add((dy * kw + dx) * channels + c));
                for (v, sum) in acc.iter_mut().enumerate() {
                    let start = (x + 16 * v + dx) as isize - left;
                    let value = _mm512_maskz_loadu_ps(masks[v], row.wrapping_offset(start));
                    *sum = _mm512_fmadd_ps(value, weight, *sum);
                }
            }
        }
        let e = plan.epilogue;
        let bias = _mm512_set1_ps(e.bias.map_or(0.0, |b| b[c]));
        for (v, sum) in acc.iter().enumerate() {
            let first = x + 16 * v;
            let mask = lanes(0, ow as isize - first as isize);
            let out = plan.out.wrapping_add((c * oh + y) * ow + first);
            _mm512_mask_storeu_ps(out, mask, apply_steps(*sum, e.steps, || bias));
        }
    }
}

impl Op for Depthwise {
    fn name(&self) -> StaticName {
        "Depthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} channels {}, {:?} kernel over {:?} padded {:?} at strides {:?}, {} with {}",
            self.channels,
            if self.channel_last { "last" } else { "first" },
            self.kernel,
            self.input_hw,
            self.padding,
            self.strides,
            self.epilogue.describe(),
            kernel_name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Depthwise {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        super::eval_into_f32(&inputs, &self.output_shape, |x, out| self.convolve(x, out, run))
    }
}

impl TypedOp for Depthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "Depthwise takes f32 values");
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let macs = self.output_shape.iter().product::<usize>() * self.kernel[0] * self.kernel[1];
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

/// Puts [`Depthwise`] in place of every tract `Conv` it computes (f32, one image channel-last or channel-first, as
/// many groups as channels, 2-D, dilation 1, no stride along the width channel-first, constant weights as
/// `[channels, 1, height, width]` and a constant bias), together with the epilogue that follows it alone. Does
/// nothing on CPUs without AVX-512. Returns how many were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    if !super::avx512() {
        return Ok(0);
    }
    super::replace_with_compaction(model, depthwise_at)
}

/// If node `id` is a convolution [`Depthwise`] computes: its input, the operator (with what follows it fused) and
/// the last node it replaces.
fn depthwise_at(model: &TypedModel, id: usize) -> TractResult<Option<(TVec<OutletId>, Depthwise, usize)>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    let channels = conv.group;
    if conv.q_params.is_some()
        || channels < 2
        || spec.input_channels != channels
        || spec.output_channels != channels
        || conv.kernel_fmt != KernelFormat::OIHW
        || !matches!(spec.data_format, DataFormat::NHWC | DataFormat::NCHW)
        || spec.kernel_shape.len() != 2
        || spec.strides().len() != 2
        || spec.dilations().iter().any(|&d| d != 1)
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let channel_last = spec.data_format == DataFormat::NHWC;
    let facts = model.node_input_facts(id)?;
    let (Some(x_shape), Some(weights), Some(bias)) = (
        concrete_shape(facts[0]),
        epilogue::constant_through_casts(model, node.inputs[1])?,
        epilogue::constant_through_casts(model, node.inputs[2])?,
    ) else {
        return Ok(None);
    };
    let [h, w] = match (channel_last, x_shape.as_slice()) {
        (true, &[1, h, w, c]) | (false, &[1, c, h, w]) if c == channels => [h, w],
        _ => return Ok(None),
    };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let strides = [spec.strides()[0], spec.strides()[1]];
    if facts[0].datum_type != f32::datum_type()
        || weights.datum_type() != f32::datum_type()
        || weights.shape() != [channels, 1, kh, kw]
        || (!channel_last && (strides[1] != 1 || kw > MAX_CHANNEL_FIRST_KERNEL_WIDTH))
    {
        return Ok(None);
    }
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = match bias.len() {
        1 => vec![bias[0]; channels],
        n if n == channels => bias,
        _ => return Ok(None),
    };
    // `[channels, 1, kh, kw]` to `[kh · kw, channels]`.
    let taps = weights.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let by_tap: Vec<f32> =
        (0..kh * kw).flat_map(|t| (0..channels).map(move |c| (t, c))).map(|(t, c)| taps[c * kh * kw + t]).collect();
    let padding = spec.computed_padding(&[h, w]);
    let op_padding = [padding[0].pad_before, padding[0].pad_after, padding[1].pad_before, padding[1].pad_after];
    let (epilogue, last, output_shape) = epilogue::following(model, id, channels, channel_last, Some(bias))?;
    let op = Depthwise {
        channels,
        channel_last,
        kernel: [kh, kw],
        padding: op_padding,
        strides,
        input_hw: [h, w],
        weights: Arc::new(Tensor::from_shape(&[kh * kw, channels], &by_tap)?),
        epilogue,
        output_shape,
    };
    if op.out_hw().ok() != Some([padding[0].convoluted, padding[1].convoluted]) {
        return Ok(None);
    }
    Ok(Some((tvec![node.inputs[0]], op, last)))
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{assert_close, op_names, run, ConvCase};
    use super::*;

    fn case(
        channels: usize,
        channel_last: bool,
        hw: [usize; 2],
        kernel: [usize; 2],
        pads: [usize; 4],
        strides: [usize; 2],
    ) -> ConvCase {
        let (x_shape, format) = if channel_last {
            ([1, hw[0], hw[1], channels], DataFormat::NHWC)
        } else {
            ([1, channels, hw[0], hw[1]], DataFormat::NCHW)
        };
        ConvCase { x_shape, format, c_in: channels, c_out: channels, group: channels, kernel, pads, strides }
    }

    /// 3×3 and 5×5 kernels, channel-last and channel-first, padded evenly, unevenly (as TensorFlow's SAME does at a
    /// stride of 2) and not, at strides 1 and 2, over channel counts and widths that leave partial vectors and
    /// partial groups of positions, each with no activation, a leaky ReLU and a ReLU6: the rewritten graph holds one
    /// Depthwise in place of the convolution and its activation, and gives tract's results within float rounding,
    /// on AVX-512 and in the portable loop.
    #[test]
    fn depthwise_convolutions_equal_tracts_conv() {
        let cases = [
            (16, true, [9, 13], [3, 3], [1, 1, 1, 1], [1, 1]),
            (18, true, [7, 10], [5, 5], [2, 2, 2, 2], [1, 1]),
            (72, true, [11, 9], [5, 5], [1, 2, 1, 2], [2, 2]),
            (64, true, [10, 12], [3, 3], [0, 1, 0, 1], [2, 2]),
            (20, true, [6, 30], [3, 3], [1, 1, 1, 1], [2, 1]),
            (130, true, [4, 5], [3, 3], [0; 4], [1, 1]),
            (5, false, [9, 70], [3, 3], [1, 1, 1, 1], [1, 1]),
            (3, false, [8, 37], [5, 5], [2, 2, 2, 2], [2, 1]),
            (4, false, [5, 130], [5, 5], [1, 2, 1, 2], [1, 1]),
        ];
        for (channels, channel_last, hw, kernel, pads, strides) in cases {
            let case = case(channels, channel_last, hw, kernel, pads, strides);
            let x = case.input();
            for act in ["none", "leaky", "relu6"] {
                let model = case.graph(act);
                let expected = run(&model, &x);
                let mut rewritten = model.clone();
                let what = format!("{channels} last {channel_last} {hw:?} {kernel:?} {pads:?} {strides:?} {act}");
                assert_eq!(super::super::replace_with_compaction(&mut rewritten, depthwise_at).unwrap(), 1, "{what}");
                assert_eq!(op_names(&rewritten), ["Source", "Depthwise"], "{what}");
                let conv = rewritten.nodes.iter().find_map(|node| node.op_as::<Depthwise>()).unwrap().clone();
                let xs = x.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
                let mut portable = vec![0f32; expected.len()];
                conv.convolve(&xs, &mut portable, portable_run).unwrap();
                assert_close(&run(&rewritten, &x), &expected, &format!("{what} rewritten"));
                assert_close(&portable, &expected, &format!("{what} portable"));
            }
        }
    }

    /// A channel-first convolution with a stride along the width, and one of two channels per group, are left to
    /// tract.
    #[test]
    fn what_the_operator_does_not_compute_stays_with_tract() {
        let mut model = case(4, false, [8, 20], [3, 3], [1, 1, 1, 1], [2, 2]).graph("none");
        assert_eq!(super::super::replace_with_compaction(&mut model, depthwise_at).unwrap(), 0);
        let grouped = ConvCase { c_in: 8, group: 4, ..case(8, true, [6, 6], [3, 3], [1, 1, 1, 1], [1, 1]) };
        let mut model = grouped.graph("none");
        assert_eq!(super::super::replace_with_compaction(&mut model, depthwise_at).unwrap(), 0);
    }
}

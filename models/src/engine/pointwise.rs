//! Products of an activation with a constant weight matrix (the 1×1 convolutions of the vision graphs) read in
//! place on CPUs with AVX-512. tract 0.23.9 copies the activation of every such product into panels before it
//! multiplies (CenterNet: 14 ms of packing beside 39 ms of products, in a 111 ms run); this operator broadcasts one
//! value of one operand against sixteen contiguous values of the other, straight from where they lie, applies the
//! epilogue that follows the product (bias, activations: see [`super::epilogue`]) before the sums leave the
//! registers, and shares the product's positions between threads. Graphs get it at load, in place of a tract `EinSum` of an f32 activation
//! and an f32 constant, on CPUs with AVX-512; elsewhere tract's own kernels run.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::einsum_matmul::EinSumMatMul;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Mul;

use super::epilogue::{self, concrete_shape, Epilogue, Parts};
use super::workers;

/// `output = epilogue(x · w)` for an activation of `m` positions of `k` channels and `n` output
/// channels, each operand laid out as the graph holds it (axes of length 1 aside).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Pointwise {
    pub k: usize,
    pub n: usize,
    /// The activation holds each position's `k` values together (`[m, k]`), not each channel's `m` (`[k, m]`).
    pub x_k_last: bool,
    /// The output holds each position's `n` values together (`[m, n]`), not each channel's `m` (`[n, m]`).
    pub out_n_last: bool,
    /// The positions are the kernel's rows, each of an activation's values broadcast against sixteen output
    /// channels' weights; else the output channels are its rows, each weight broadcast against sixteen positions
    /// (see [`positions_as_rows`]).
    pub positions_as_rows: bool,
    /// The weights as the kernel reads them: with the positions as rows, `[k, n]` in panels of [`PANEL`] columns
    /// (each panel's `k` rows together, the last panel's missing columns zero), else `[n, k]`.
    pub weights: Arc<Tensor>,
    /// A second input scales each of the activation's `k` channels before the product (a squeeze-and-excite
    /// layer's multiplication, taken in): the weights are scaled instead, `k × n` values a run in place of `m × k`.
    pub scaled_channels: bool,
    pub epilogue: Epilogue,
    pub output_shape: TVec<usize>,
}

/// Output channels of one panel of packed weights: the kernel's tile, so that a tile's weights lie together.
pub(super) const PANEL: usize = 32;

/// Whether the kernel takes the positions as its rows, which an output of each position's channels together
/// (`[m, n]`) stores sixteen channels at a time. With fewer channels than that, sixteen positions fill a vector
/// better where the activation holds each channel's positions together and there are enough of them: the output
/// channels are then the rows, and each position's few channels are scattered (CenterNet's four box values of
/// 16384 positions: 1.9 → 1.0 ms).
fn positions_as_rows(x_k_last: bool, out_n_last: bool, m: usize, n: usize) -> bool {
    out_n_last && (x_k_last || n >= 16 || m < 2 * PANEL)
}

/// `k × n` weights (`weight(kk, j)`) in panels of [`PANEL`] columns: `panels[p][kk][j] = weight(kk, p * PANEL + j)`,
/// zero past `n`. Written straight from the graph's constant, so that loading holds no copy beside the two.
pub(super) fn in_panels(k: usize, n: usize, weight: impl Fn(usize, usize) -> f32) -> Arc<Tensor> {
    let mut panels = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
    for (p, panel) in panels.chunks_exact_mut(k * PANEL).enumerate() {
        let columns = p * PANEL..(p * PANEL + PANEL).min(n);
        for (kk, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (value, j) in row.iter_mut().zip(columns.clone()) {
                *value = weight(kk, j);
            }
        }
    }
    tract_ndarray::Array1::from_vec(panels).into_arc_tensor()
}

thread_local! {
    /// The scaled weights of a product that takes a scale of its channels, kept from one run to the next on the
    /// thread that runs the graph, so that a run writes them into memory already mapped.
    static SCALED_WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One evaluation's operands, as raw parts the kernels and threads share.
#[derive(Clone, Copy)]
struct Plan<'a> {
    x: *const f32,
    w: *const f32,
    out: *mut f32,
    m: usize,
    k: usize,
    n: usize,
    x_k_last: bool,
    out_n_last: bool,
    positions_as_rows: bool,
    epilogue: Parts<'a>,
}

// SAFETY: a plan only lives while `Pointwise::eval` holds its buffers, and threads write disjoint positions.
unsafe impl Send for Plan<'_> {}
unsafe impl Sync for Plan<'_> {}

/// A function computing some of a plan's outputs.
type Kernel = unsafe fn(&Plan, std::ops::Range<usize>);

impl Pointwise {
    /// Computes `out` from `x` (its channels times `scale`, when given) with `kernel` (this CPU's, or the portable
    /// one).
    fn product(&self, x: &[f32], scale: Option<&[f32]>, out: &mut [f32], kernel: Kernel) -> TractResult<()> {
        let weights = self.weights.try_as_plain_ram()?;
        let weights = weights.as_slice::<f32>()?;
        let (k, n) = (self.k, self.n);
        let expected = if self.positions_as_rows { n.div_ceil(PANEL) * k * PANEL } else { k * n };
        ensure!(k > 0 && n > 0 && weights.len() == expected, "Pointwise: {} weights for {k}×{n}", weights.len());
        let Some(scale) = scale else { return self.multiply(x, weights, out, kernel) };
        ensure!(scale.len() == k, "Pointwise: {} scales for {k} channels", scale.len());
        SCALED_WEIGHTS.with_borrow_mut(|scaled| {
            scaled.clear();
            if self.positions_as_rows {
                // Panels of `k` rows: each row times its channel's scale.
                for (row, s) in weights.chunks_exact(PANEL).zip(scale.iter().cycle()) {
                    scaled.extend(row.iter().map(|w| w * s));
                }
            } else {
                // `[n, k]`: each row times every channel's scale.
                for row in weights.chunks_exact(k) {
                    scaled.extend(row.iter().zip(scale).map(|(w, s)| w * s));
                }
            }
            self.multiply(x, scaled, out, kernel)
        })
    }

    /// `out = epilogue(x · weights)`, `weights` laid out as [`Pointwise::weights`].
    fn multiply(&self, x: &[f32], weights: &[f32], out: &mut [f32], kernel: Kernel) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        ensure!(x.len().is_multiple_of(k), "Pointwise: {} input values are not positions of {k}", x.len());
        let m = x.len() / k;
        ensure!(out.len() == m * n, "Pointwise: {} outputs for {m} positions of {n}", out.len());
        let plan = Plan {
            x: x.as_ptr(),
            w: weights.as_ptr(),
            out: out.as_mut_ptr(),
            m,
            k,
            n,
            x_k_last: self.x_k_last,
            out_n_last: self.out_n_last,
            positions_as_rows: self.positions_as_rows,
            epilogue: self.epilogue.parts(n).map_err(|e| e.context("Pointwise"))?,
        };
        // SAFETY: the plan's buffers hold the sizes checked above, and each range writes its own positions (whole
        // tiles of them: 12 rows or 32 columns of the kernel).
        workers::share(m, m * n * k, 96, &|range| unsafe { kernel(&plan, range) });
        Ok(())
    }
}

/// Computes the outputs of the positions `range`.
///
/// # Safety
/// The plan's pointers hold `m × k` inputs, `k × n` weights and `m × n` outputs, and no other thread writes these
/// positions.
unsafe fn run(plan: &Plan, range: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512() {
        return avx512::run(plan, range);
    }
    portable_run(plan, range)
}

/// The same sums in plain Rust, for CPUs without AVX-512 (the rewrite leaves tract's products there, so this only
/// runs where an operator is built by hand, as in tests).
///
/// # Safety
/// As [`run`].
unsafe fn portable_run(plan: &Plan, range: std::ops::Range<usize>) {
    let Plan { m, k, n, .. } = *plan;
    for p in range {
        for o in 0..n {
            let mut sum = 0f32;
            for c in 0..k {
                let x = *plan.x.add(if plan.x_k_last { p * k + c } else { c * m + p });
                let w = *plan.w.add(if plan.positions_as_rows {
                    (o / PANEL * k + c) * PANEL + o % PANEL
                } else {
                    o * k + c
                });
                sum += x * w;
            }
            *plan.out.add(if plan.out_n_last { p * n + o } else { o * m + p }) = plan.epilogue.apply(sum, o);
        }
    }
}

/// The kernel's name on this CPU, for kernel reports.
pub fn kernel_name() -> &'static str {
    if super::avx512() {
        "lookout_avx512_pointwise"
    } else {
        "lookout_pointwise_portable"
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::avx512_products::{block, Product, Strided, TILE_COLUMNS};
    use super::{Plan, PANEL};

    // The kernel finds each tile's weights a panel apart.
    const _: () = assert!(PANEL == TILE_COLUMNS);

    /// Columns of weights a row block passes before the next row block starts.
    const WEIGHT_COLUMNS: usize = 8 * PANEL;

    /// [`super::run`] with AVX-512: the positions as the kernel's rows and the weights' panels as its columns, or
    /// the weights as its rows and the positions as its columns (see [`super::positions_as_rows`]), read in place
    /// where each channel's positions lie together and copied into a panel of 32 positions where they do not.
    ///
    /// # Safety
    /// As [`super::run`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn run(plan: &Plan, range: std::ops::Range<usize>) {
        let Plan { m, k, n, .. } = *plan;
        let e = plan.epilogue;
        let bias = e.bias.map_or(std::ptr::null(), <[f32]>::as_ptr);
        if plan.positions_as_rows {
            let (a_row, a_k) = if plan.x_k_last { (k, Strided(1)) } else { (1, Strided(m)) };
            let p = Product {
                a: plan.x,
                a_row,
                a_k,
                k,
                b_rows: Strided(PANEL),
                b_tile: k * PANEL,
                c: plan.out,
                c_row: n,
                c_col: 1,
                bias,
                bias_per_row: false,
                steps: e.steps,
            };
            // Some panels of weights at a time across all the rows, so that weights read from memory serve every
            // row (the recognizer's 120×6625 output head is larger than the cache).
            let mut j = 0;
            while j < n {
                let end = (j + WEIGHT_COLUMNS).min(n);
                block(&p, plan.w.add(j * k), range.clone(), j..end);
                j = end;
            }
            return;
        }
        // An output of each position's channels together gets the few channels of each position scattered.
        let (c_row, c_col) = if plan.out_n_last { (1, n) } else { (m, 1) };
        let mut p = Product {
            a: plan.w,
            a_row: k,
            a_k: Strided(1),
            k,
            b_rows: Strided(m),
            b_tile: PANEL,
            c: plan.out,
            c_row,
            c_col,
            bias,
            bias_per_row: true,
            steps: e.steps,
        };
        let mut panel = if plan.x_k_last { vec![0f32; k * PANEL] } else { Vec::new() };
        let mut j = range.start;
        while j < range.end {
            let end = (j + PANEL).min(range.end);
            if plan.x_k_last {
                for (jj, position) in (j..end).enumerate() {
                    let x = plan.x.add(position * k);
                    for c in 0..k {
                        panel[c * PANEL + jj] = *x.add(c);
                    }
                }
                p.b_rows = Strided(PANEL);
                block(&p, panel.as_ptr(), 0..n, j..end);
            } else {
                block(&p, plan.x.add(j), 0..n, j..end);
            }
            j = end;
        }
    }
}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "Pointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let layout = |last: bool, inner: &str| if last { format!("[m, {inner}]") } else { format!("[{inner}, m]") };
        Ok(vec![format!(
            "m:{} k:{} n:{} input {}{} output {} {} with {}",
            self.output_shape.iter().product::<usize>() / self.n.max(1),
            self.k,
            self.n,
            layout(self.x_k_last, "k"),
            if self.scaled_channels { " scaled per channel" } else { "" },
            layout(self.out_n_last, "n"),
            self.epilogue.describe(),
            kernel_name()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let scale = if self.scaled_channels { Some(inputs[1].try_as_plain_ram()?) } else { None };
        let scale = scale.as_ref().map(|s| s.as_slice::<f32>()).transpose()?;
        super::eval_into_f32(&inputs, &self.output_shape, |x, out| self.product(x, scale, out, run))
    }
}

impl TypedOp for Pointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "Pointwise takes f32 values");
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let macs: usize = self.output_shape.iter().product::<usize>() * self.k;
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

/// Puts [`Pointwise`] in place of every product of an f32 activation with an f32 constant that it computes (each
/// operand two axes longer than one, and each axis of the product reduced, kept or contributed by one operand only),
/// together with the epilogue that follows it alone. Does nothing on CPUs without AVX-512.
/// Returns how many products were replaced.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    if !super::avx512() {
        return Ok(0);
    }
    rewrite_products(model)
}

fn rewrite_products(model: &mut TypedModel) -> TractResult<usize> {
    super::replace_with_compaction(model, product_at)
}

/// If node `id` is a product [`Pointwise`] computes: its activation (and the scale of each of its channels, where a
/// multiplication by one feeds the product alone), the operator (with what follows it fused) and the last node it
/// replaces.
fn product_at(model: &TypedModel, id: usize) -> TractResult<Option<(TVec<OutletId>, Pointwise, usize)>> {
    let node = model.node(id);
    // A decluttered graph holds tract's products as EinSumMatMul (an EinSum with its axes picked); one read back
    // from an archive holds the EinSum.
    let einsum = match (node.op_as::<EinSum>(), node.op_as::<EinSumMatMul>()) {
        (Some(einsum), _) => einsum,
        (_, Some(product)) => &product.op,
        _ => return Ok(None),
    };
    if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts = model.node_input_facts(id)?;
    let (xi, wi) = match (&facts[0].konst, &facts[1].konst) {
        (None, Some(_)) => (0, 1),
        (Some(_), None) => (1, 0),
        _ => return Ok(None),
    };
    let Some(weights) = facts[wi].konst.clone() else { return Ok(None) };
    let (Some(x_shape), Some(out_shape)) =
        (concrete_shape(facts[xi]), concrete_shape(model.outlet_fact(OutletId::new(id, 0))?))
    else {
        return Ok(None);
    };
    if facts[xi].datum_type != f32::datum_type() || weights.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let w_shape = weights.shape();
    // The position of the reduced axis (k), the positions' axis (m) and the output channels' axis (n) in the
    // activation, the weights and the output; every other axis has length 1.
    // The reduced axis (k) and the output channels' axis (n), with their positions in the activation, the weights
    // and the output, and the positions' axes (m: one, or several kept together in the same order, as the height
    // and width of an image); every other axis has length 1.
    let (mut k, mut n, mut m) = (None, None, Vec::new());
    for axis in einsum.axes.iter_all_axes() {
        let (xp, wp, op) = (&axis.inputs[xi], &axis.inputs[wi], &axis.outputs[0]);
        if xp.len() > 1 || wp.len() > 1 || op.len() > 1 {
            return Ok(None);
        }
        let (xp, wp, op) = (xp.first().copied(), wp.first().copied(), op.first().copied());
        let lengths: TVec<usize> =
            [xp.map(|p| x_shape[p]), wp.map(|p| w_shape[p]), op.map(|p| out_shape[p])].into_iter().flatten().collect();
        if lengths.iter().all(|&l| l == 1) {
            continue;
        }
        if lengths.iter().any(|&l| l != lengths[0]) {
            return Ok(None);
        }
        let slot = match (xp, wp, op) {
            (Some(x), Some(w), None) => (&mut k, [x, w]),
            (None, Some(w), Some(o)) => (&mut n, [w, o]),
            (Some(x), None, Some(o)) => {
                m.push([x, o]);
                continue;
            }
            _ => return Ok(None),
        };
        if slot.0.replace((slot.1, lengths[0])).is_some() {
            return Ok(None);
        }
    }
    let (Some(([xk, wk], k_len)), Some(([wn, on], n_len))) = (k, n) else { return Ok(None) };
    m.sort();
    let together = m.windows(2).all(|pair| pair[1][1] > pair[0][1]);
    let (Some(first), Some(last)) = (m.first(), m.last()) else { return Ok(None) };
    let (x_k_last, out_n_last, w_n_first) = (xk > last[0], on > last[1], wn < wk);
    // The positions' axes must be neither split by k in the activation nor by n in the output.
    if !together || (!x_k_last && xk > first[0]) || (!out_n_last && on > first[1]) {
        return Ok(None);
    }
    let m_len = out_shape.iter().product::<usize>() / n_len;
    let by_positions = positions_as_rows(x_k_last, out_n_last, m_len, n_len);
    // The kernel reads the weights as [k, n] in panels with the positions as its rows, else as [n, k]: as stored,
    // or transposed.
    let weights = if !by_positions && w_n_first {
        weights
    } else {
        let w = weights.try_as_plain_ram()?;
        let w = w.as_slice::<f32>()?;
        // The stored weight of reduced index `kk` and output channel `j`.
        let weight = |kk: usize, j: usize| if w_n_first { w[j * k_len + kk] } else { w[kk * n_len + j] };
        if by_positions {
            in_panels(k_len, n_len, weight)
        } else {
            let rows: Vec<f32> = (0..n_len).flat_map(|j| (0..k_len).map(move |kk| weight(kk, j))).collect();
            tract_ndarray::Array2::from_shape_vec((n_len, k_len), rows)?.into_arc_tensor()
        }
    };
    let (epilogue, last, output_shape) = epilogue::following(model, id, n_len, out_n_last, None)?;
    let scaled = channel_scale_before(model, node.inputs[xi], x_k_last, k_len)?;
    let inputs = scaled.map_or_else(|| tvec![node.inputs[xi]], |(x, scale)| tvec![x, scale]);
    let op = Pointwise {
        k: k_len,
        n: n_len,
        x_k_last,
        out_n_last,
        positions_as_rows: by_positions,
        weights,
        scaled_channels: scaled.is_some(),
        epilogue,
        output_shape,
    };
    Ok(Some((inputs, op, last)))
}

/// If `activation` (its `k` channels innermost, where `k_last`, else outermost) is, through reshapes that keep the
/// values in place, an f32 multiplication that feeds nothing else, of a tensor by one value per channel: the tensor
/// and the values.
fn channel_scale_before(
    model: &TypedModel,
    activation: OutletId,
    k_last: bool,
    k: usize,
) -> TractResult<Option<(OutletId, OutletId)>> {
    let mut outlet = activation;
    let node = loop {
        if model.outlet_successors(outlet).len() != 1 || model.outputs.contains(&outlet) {
            return Ok(None);
        }
        let node = model.node(outlet.node);
        if !epilogue::in_place(node) {
            break node;
        }
        outlet = node.inputs[0];
    };
    let is_mul = node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<Mul>());
    let Some(shape) = concrete_shape(model.outlet_fact(outlet)?) else { return Ok(None) };
    if !is_mul || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    let channel_axis = if k_last { shape.len().checked_sub(1) } else { shape.iter().position(|&len| len > 1) };
    let Some(channel_axis) = channel_axis.filter(|&axis| shape[axis] == k) else { return Ok(None) };
    let whole = |fact: &TypedFact| concrete_shape(fact).is_some_and(|s| s == shape);
    let per_channel = |fact: &TypedFact| {
        concrete_shape(fact).is_some_and(|s| {
            s.len() == shape.len()
                && s.iter().enumerate().all(|(axis, &len)| len == if axis == channel_axis { k } else { 1 })
        })
    };
    if facts.iter().any(|fact| fact.datum_type != f32::datum_type()) {
        return Ok(None);
    }
    Ok(match (whole(facts[0]), per_channel(facts[1]), whole(facts[1]), per_channel(facts[0])) {
        (true, true, _, _) => Some((node.inputs[0], node.inputs[1])),
        (_, _, true, true) => Some((node.inputs[1], node.inputs[0])),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_graphs::{assert_close, op_names, relu6_after, run, run_inputs, values};
    use super::*;
    use tract_onnx::tract_core::ops::math;

    /// A graph of one product of an activation `x` with constant weights, in the given einsum expression, then
    /// the given epilogue (bias add and clamps), as the vision graphs hold their 1×1 convolutions.
    fn graph(
        expr: &str,
        x_shape: &[usize],
        w_shape: &[usize],
        bias_shape: Option<&[usize]>,
        clamp: bool,
    ) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(x_shape)).unwrap();
        let w =
            model.add_const("w", Tensor::from_shape(w_shape, &values(w_shape.iter().product(), 1)).unwrap()).unwrap();
        let axes: AxesMapping = expr.parse().unwrap();
        let mut wire = model.wire_node("product", EinSum::new(axes, f32::datum_type()), &[x, w]).unwrap()[0];
        if let Some(bias_shape) = bias_shape {
            let bias = Tensor::from_shape(bias_shape, &values(bias_shape.iter().product(), 2)).unwrap();
            let bias = model.add_const("bias", bias).unwrap();
            wire = model.wire_node("bias_add", math::add(), &[wire, bias]).unwrap()[0];
        }
        if clamp {
            wire = relu6_after(&mut model, wire);
        }
        model.select_output_outlets(&[wire]).unwrap();
        model
    }

    /// Every layout of activation, weights and output the rewrite takes, with lengths that leave partial tiles of
    /// rows and columns, many positions and few, many output channels and few, with and without a bias and a clamp:
    /// the rewritten graph holds one Pointwise operator in place of the product and its epilogue, and gives tract's
    /// results within float rounding, on AVX-512 and in the portable loop, with the positions as the kernel's rows,
    /// the channels as its rows, and the channels as its rows scattered into an output of positions' channels.
    #[test]
    fn pointwise_products_equal_tracts_einsum_in_every_layout() {
        let k = 37;
        let mut tilings = std::collections::BTreeSet::new();
        for (m, [h, w], n) in [(203, [7, 29], 45), (40, [5, 8], 45), (203, [7, 29], 5)] {
            type Case<'a> = (&'a str, &'a [usize], &'a [usize], &'a [usize]);
            let cases: [Case; 5] = [
                ("amk,ank->amn", &[1, m, k], &[1, n, k], &[1, 1, n]),
                ("ahwk,nk->hwn", &[1, h, w, k], &[n, k], &[1, 1, n]),
                ("km,nk->nm", &[k, m], &[n, k], &[n, 1]),
                ("mk,kn->nm", &[m, k], &[k, n], &[n, 1]),
                ("km,kn->mn", &[k, m], &[k, n], &[1, n]),
            ];
            for (expr, x_shape, w_shape, bias_shape) in cases {
                let x = Tensor::from_shape(x_shape, &values(m * k, 3)).unwrap();
                for (bias, clamp) in [(false, false), (true, false), (true, true)] {
                    let what = format!("{expr} m {m} n {n} bias {bias} clamp {clamp}");
                    let model = graph(expr, x_shape, w_shape, bias.then_some(bias_shape), clamp);
                    let expected = run(&model, &x);
                    let mut rewritten = model.clone();
                    let replaced = rewrite_products(&mut rewritten).unwrap();
                    assert_eq!(replaced, 1, "{what}");
                    let rewritten = rewritten.into_decluttered().unwrap();
                    assert_eq!(op_names(&rewritten), ["Source", "Pointwise"], "{what}");
                    let pointwise = rewritten.nodes.iter().find_map(|node| node.op_as::<Pointwise>()).unwrap().clone();
                    tilings.insert((pointwise.positions_as_rows, pointwise.out_n_last));
                    for portable in [false, true] {
                        let got = if portable {
                            let mut out = vec![0f32; m * n];
                            let xs = x.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
                            pointwise.product(&xs, None, &mut out, portable_run).unwrap();
                            out
                        } else {
                            run(&rewritten, &x)
                        };
                        assert_close(&got, &expected, &format!("{what} portable {portable}"));
                    }
                }
            }
        }
        assert_eq!(tilings.len(), 3, "{tilings:?}");
    }

    /// The hard swish after a product, as TensorFlow's converter writes it (the value times a sixth, times its
    /// clamped shift) and as Paddle's does (the value times its clamped shift, then scaled and shifted), and an
    /// affine scale and shift before it: all of it goes into the product's epilogue, with tract's results.
    #[test]
    fn a_hard_swish_after_a_product_goes_into_its_epilogue() {
        let (m, k, n) = (50, 12, 20);
        for tensorflow in [true, false] {
            let mut model = graph("mk,kn->mn", &[m, k], &[k, n], Some(&[1, n]), false);
            let mut wire = model.output_outlets().unwrap()[0];
            let scalar = |model: &mut TypedModel, name: &str, v: f32| {
                model.add_const(name, Tensor::from_shape(&[1, 1], &[v]).unwrap()).unwrap()
            };
            let (c, d) = (scalar(&mut model, "c", 1.9), scalar(&mut model, "d", 0.8));
            wire = model.wire_node("affine_mul", math::mul(), &[wire, c]).unwrap()[0];
            wire = model.wire_node("affine_add", math::add(), &[wire, d]).unwrap()[0];
            let (three, zero, six) =
                (scalar(&mut model, "three", 3.0), scalar(&mut model, "zero", 0.0), scalar(&mut model, "six", 6.0));
            let shifted = model.wire_node("plus3", math::add(), &[wire, three]).unwrap()[0];
            let low = model.wire_node("relu6_low", math::max(), &[shifted, zero]).unwrap()[0];
            let gate = model.wire_node("relu6_high", math::min(), &[low, six]).unwrap()[0];
            let sixth = scalar(&mut model, "sixth", 1.0 / 6.0);
            let out = if tensorflow {
                let scaled = model.wire_node("scaled", math::mul(), &[wire, sixth]).unwrap()[0];
                model.wire_node("swish", math::mul(), &[scaled, gate]).unwrap()[0]
            } else {
                let swish = model.wire_node("swish", math::mul(), &[wire, gate]).unwrap()[0];
                model.wire_node("scaled", math::mul(), &[swish, sixth]).unwrap()[0]
            };
            model.select_output_outlets(&[out]).unwrap();
            let mut rewritten = model.clone();
            assert_eq!(rewrite_products(&mut rewritten).unwrap(), 1);
            let rewritten = rewritten.into_decluttered().unwrap();
            assert_eq!(op_names(&rewritten), ["Source", "Pointwise"], "TensorFlow's form: {tensorflow}");
            let x = Tensor::from_shape(&[m, k], &values(m * k, 7)).unwrap();
            let expected = run(&model, &x);
            assert_close(&run(&rewritten, &x), &expected, &format!("TensorFlow's form: {tensorflow}"));
            assert!(expected.contains(&0.0) && expected.iter().any(|v| *v > 1.0), "the gate both closes and opens");
        }
    }

    /// A multiplication of the activation by one value per channel (a squeeze-and-excite layer's) that feeds the
    /// product alone, directly or through a reshape, goes into it, the scale a second input, with the channels
    /// innermost or outermost and in both layouts of the weights; one that also feeds another node stays in the
    /// graph.
    #[test]
    fn a_per_channel_scale_before_a_product_goes_into_it() {
        use tract_onnx::tract_core::ops::change_axes::AxisOp;
        let (m, k, n) = (70, 24, 40);
        type Case<'a> = (&'a str, [usize; 3], [usize; 3], &'a [usize]);
        let cases: [Case; 3] = [
            ("mk,kn->mn", [1, m, k], [1, 1, k], &[k, n]),
            ("mk,nk->nm", [1, m, k], [1, 1, k], &[n, k]),
            ("km,kn->mn", [1, k, m], [1, k, 1], &[k, n]),
        ];
        for (expr, x_shape, scale_shape, w_shape) in cases {
            for shared in [false, true] {
                let mut model = TypedModel::default();
                let x = model.add_source("x", f32::fact(x_shape)).unwrap();
                let scale = model.add_source("scale", f32::fact(scale_shape)).unwrap();
                let scaled = model.wire_node("se_mul", math::mul(), &[x, scale]).unwrap()[0];
                let flat = model.wire_node("flat", AxisOp::Rm(0), &[scaled]).unwrap()[0];
                let w = Tensor::from_shape(w_shape, &values(k * n, 1)).unwrap();
                let w = model.add_const("w", w).unwrap();
                let axes: AxesMapping = expr.parse().unwrap();
                let product = model.wire_node("product", EinSum::new(axes, f32::datum_type()), &[flat, w]).unwrap();
                let mut outputs = vec![product[0]];
                if shared {
                    outputs.push(scaled);
                }
                model.select_output_outlets(&outputs).unwrap();
                let inputs = [
                    Tensor::from_shape(&x_shape, &values(m * k, 3)).unwrap(),
                    Tensor::from_shape(&scale_shape, &values(k, 4)).unwrap(),
                ];
                let expected = run_inputs(&model, &inputs);
                let mut rewritten = model.clone();
                assert_eq!(rewrite_products(&mut rewritten).unwrap(), 1, "{expr}");
                let pointwise = rewritten.nodes.iter().find_map(|node| node.op_as::<Pointwise>()).unwrap();
                assert_eq!(pointwise.scaled_channels, !shared, "{expr} shared {shared}");
                let ops = op_names(&rewritten);
                assert_eq!(ops.iter().any(|op| op == "Mul"), shared, "{expr}: {ops:?}");
                assert_close(&run_inputs(&rewritten, &inputs), &expected, &format!("{expr} shared {shared}"));
            }
        }
    }

    /// Positions split by the reduced axis are not a product this operator computes: the graph is left as it is.
    #[test]
    fn positions_split_by_the_reduced_axis_are_left_to_tract() {
        let mut model = graph("hkw,nk->hwn", &[3, 4, 5], &[6, 4], None, false);
        assert_eq!(rewrite_products(&mut model).unwrap(), 0);
        assert!(model.nodes.iter().any(|node| node.op_is::<EinSum>()));
    }

    /// A product whose output also feeds another node keeps its epilogue in the graph; a bias that varies along
    /// positions, not channels, is not fused.
    #[test]
    fn only_an_epilogue_of_the_product_alone_and_per_channel_is_fused() {
        let (m, k, n) = (40, 8, 24);
        let model = graph("mk,kn->mn", &[m, k], &[k, n], Some(&[m, 1]), true);
        let mut rewritten = model.clone();
        assert_eq!(rewrite_products(&mut rewritten).unwrap(), 1);
        let rewritten = rewritten.into_decluttered().unwrap();
        let pointwise = rewritten.nodes.iter().find_map(|node| node.op_as::<Pointwise>()).unwrap();
        assert!(pointwise.epilogue.bias.is_none());
        let x = Tensor::from_shape(&[m, k], &values(m * k, 5)).unwrap();
        assert_close(&run(&rewritten, &x), &run(&model, &x), "a bias along positions");
    }
}

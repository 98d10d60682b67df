//! Products and row lookups over constant f32 weights rewritten as Lookout's block operators in their F32 format
//! ([`super::block_quant`]): the weights are stored as rows that the operators read in place, so loading leaves
//! nothing for tract to pack, and a token table shared by an embedding and a tied output head is stored once.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::konst::Const;

use super::block_quant::{BlockFormat, BlockGather, BlockMatMul, BLOCK};

/// Rewrites every product `x · W` with `W` a constant f32 tensor (an einsum of two inputs, whatever the axes'
/// order: moves and reshapes of `x` and of the result bring it to rows) and every row lookup in a constant f32 table
/// along its first axis, where the summed width is a multiple of 32. Identical weight rows become one constant.
/// Returns how many nodes were rewritten.
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    let mut rewritten = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let replaced = if let Some(product) = node.op_as::<EinSum>() {
            match product_plan(model, node, product)? {
                Some(plan) => rewrite_product(model, id, plan)?,
                None => false,
            }
        } else if let Some(gather) = node.op_as::<Gather>() {
            rewrite_lookup(model, id, gather.clone())?
        } else {
            false
        };
        rewritten += replaced as usize;
    }
    model.compact()?;
    Ok(rewritten)
}

/// The weight rows as a constant of the model: `add_const` shares an identical one already there (a tied output
/// head and its embedding's table).
fn add_rows(model: &mut TypedModel, id: usize, rows: Tensor) -> TractResult<OutletId> {
    model.add_const(format!("{}.rows", model.node(id).name), rows)
}

/// The constant f32 tensor behind `outlet`, if it is one.
fn constant_f32(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    let value = model.node(outlet.node).op_as::<Const>()?.val().clone();
    (value.datum_type() == f32::datum_type()).then_some(value)
}

/// How a product becomes a row product: `x` reshaped to `[m axes…, k]`, `W` as rows `[n, k]`, and the result
/// `[m axes…, n]` brought to the einsum's output.
struct ProductPlan {
    weights: Arc<Tensor>,
    /// W's axes that make a row: n's position, then the summed axes' positions in W's order.
    row_axes: Vec<usize>,
    to_rows: Vec<AxisOp>,
    from_rows: Vec<AxisOp>,
    k: usize,
    n: usize,
}

/// The plan for an einsum `x, W -> y` whose axes each are: summed (in x and W, not y), kept from x (in x and y; in
/// W too only with size 1), the one kept from W (in W and y), or of size 1 where they appear alone.
fn product_plan(model: &TypedModel, node: &TypedNode, product: &EinSum) -> TractResult<Option<ProductPlan>> {
    if node.inputs.len() != 2 || product.q_params.is_some() || product.operating_dt != f32::datum_type() {
        return Ok(None);
    }
    let Some(weights) = constant_f32(model, node.inputs[1]) else { return Ok(None) };
    let x = model.outlet_fact(node.inputs[0])?;
    let y = &node.outputs[0].fact;
    if x.datum_type != f32::datum_type() || y.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let w_shape = weights.shape();
    let one = TDim::from(1);
    // (position in x, position in y) of the kept axes; positions in W of the summed ones and of n.
    let (mut kept, mut summed, mut n_at) = (vec![], vec![], None);
    let (mut x_units, mut y_units) = (vec![], vec![]);
    for axis in product.axes.iter_all_axes() {
        let fits = match (&*axis.inputs[0], &*axis.inputs[1], &*axis.outputs[0]) {
            (&[x_at], &[w_at], &[]) => {
                summed.push(w_at);
                x.shape[x_at] == w_shape[w_at].to_dim()
            }
            (&[x_at], &[], &[y_at]) => {
                kept.push((x_at, y_at));
                true
            }
            (&[x_at], &[w_at], &[y_at]) => {
                kept.push((x_at, y_at));
                w_shape[w_at] == 1
            }
            (&[], &[w_at], &[y_at]) if n_at.is_none() => {
                n_at = Some((w_at, y_at));
                true
            }
            (&[x_at], &[], &[]) => {
                x_units.push(x_at);
                x.shape[x_at] == one
            }
            (&[], &[w_at], &[]) => w_shape[w_at] == 1,
            (&[], &[], &[y_at]) => {
                y_units.push(y_at);
                y.shape[y_at] == one
            }
            _ => false,
        };
        if !fits {
            return Ok(None);
        }
    }
    let Some((n_w_at, n_y_at)) = n_at else { return Ok(None) };
    summed.sort_unstable();
    let k: usize = summed.iter().map(|&at| w_shape[at]).product();
    if summed.is_empty() || !k.is_multiple_of(BLOCK) {
        return Ok(None);
    }
    // x: drop its lone unit axes, order the kept axes as y has them and the summed ones as W has them, then merge
    // the summed ones.
    let mut to_rows = vec![];
    let mut x_axes: Vec<usize> = (0..x.rank()).collect();
    x_units.sort_unstable();
    for &at in x_units.iter().rev() {
        to_rows.push(AxisOp::Rm(at));
        x_axes.remove(at);
    }
    kept.sort_unstable_by_key(|&(_, y_at)| y_at);
    let x_at_of_summed = |w_at: usize| {
        product
            .axes
            .iter_all_axes()
            .find(|a| a.inputs[1].first() == Some(&w_at))
            .and_then(|a| a.inputs[0].first())
            .copied()
    };
    let target: Vec<usize> =
        kept.iter().map(|&(x_at, _)| x_at).chain(summed.iter().filter_map(|&w| x_at_of_summed(w))).collect();
    for (to, &axis) in target.iter().enumerate() {
        let from = x_axes.iter().position(|&a| a == axis).expect("every remaining axis of x is kept or summed");
        if from != to {
            to_rows.push(AxisOp::Move(from, to));
            let moved = x_axes.remove(from);
            x_axes.insert(to, moved);
        }
    }
    if summed.len() > 1 {
        let dims = summed.iter().map(|&at| w_shape[at].to_dim()).collect();
        to_rows.push(AxisOp::Reshape(kept.len(), dims, tvec!(k.to_dim())));
    }
    // y: n goes from last among the kept axes to its place, then y's lone unit axes are added.
    let mut from_rows = vec![];
    let n_place = kept.iter().filter(|&&(_, y_at)| y_at < n_y_at).count();
    if n_place != kept.len() {
        from_rows.push(AxisOp::Move(kept.len(), n_place));
    }
    y_units.sort_unstable();
    from_rows.extend(y_units.iter().map(|&at| AxisOp::Add(at)));
    let row_axes = std::iter::once(n_w_at).chain(summed).collect();
    Ok(Some(ProductPlan { n: w_shape[n_w_at], weights, row_axes, to_rows, from_rows, k }))
}

/// Wires a planned row product in place of node `id`, unless the result would differ in shape.
fn rewrite_product(model: &mut TypedModel, id: usize, plan: ProductPlan) -> TractResult<bool> {
    let rows = rows_of(&plan.weights, &plan.row_axes, plan.n, plan.k)?;
    let rows = add_rows(model, id, rows)?;
    let node = model.node(id);
    let name = node.name.clone();
    let mut patch = TypedModelPatch::default();
    let mut wire = patch.tap_model(model, node.inputs[0])?;
    let rows = patch.tap_model(model, rows)?;
    for (ix, op) in plan.to_rows.into_iter().enumerate() {
        wire = patch.wire_node(format!("{name}.to_rows.{ix}"), op, &[wire])?[0];
    }
    wire = patch.wire_node(&name, BlockMatMul { format: BlockFormat::F32, k: plan.k, n: plan.n }, &[wire, rows])?[0];
    for (ix, op) in plan.from_rows.into_iter().enumerate() {
        wire = patch.wire_node(format!("{name}.from_rows.{ix}"), op, &[wire])?[0];
    }
    if patch.outlet_fact(wire)?.shape != node.outputs[0].fact.shape {
        return Ok(false);
    }
    patch.shunt_outside(model, id.into(), wire)?;
    patch.obliterate(id)?;
    patch.apply(model)?;
    Ok(true)
}

/// A row lookup in a constant f32 table `[rows, k]` along its first axis, in place of node `id`. Unlike `Gather`,
/// the lookup refuses a negative index (token ids never are) instead of counting it from the end.
fn rewrite_lookup(model: &mut TypedModel, id: usize, gather: Gather) -> TractResult<bool> {
    let node = model.node(id);
    if gather.axis != 0 || gather.output_type.is_some_and(|dt| dt != f32::datum_type()) {
        return Ok(false);
    }
    let Some(table) = constant_f32(model, node.inputs[0]) else { return Ok(false) };
    let &[count, k] = table.shape() else { return Ok(false) };
    if k == 0 || !k.is_multiple_of(BLOCK) {
        return Ok(false);
    }
    let indices = node.inputs[1];
    let rows = add_rows(model, id, rows_of(&table, &[0, 1], count, k)?)?;
    let op = BlockGather { format: BlockFormat::F32, k };
    TypedModelPatch::replace_single_op(model, model.node(id), &[rows, indices], op)?.apply(model)?;
    Ok(true)
}

/// `n` rows of `k` little-endian f32 values from `weights`: its axes `row_axes` (the row's axis, then the axes of a
/// row's values, outermost first) in that order, its other axes being of size 1.
fn rows_of(weights: &Tensor, row_axes: &[usize], n: usize, k: usize) -> TractResult<Tensor> {
    let plain = weights.try_as_plain_ram()?;
    let mut view = plain.to_array_view::<f32>()?;
    for at in (0..view.ndim()).rev().filter(|at| !row_axes.contains(at)) {
        view = view.index_axis_move(tract_ndarray::Axis(at), 0);
    }
    // After dropping the others, axis i of the view is the i-th smallest of row_axes.
    let mut kept: Vec<usize> = row_axes.to_vec();
    kept.sort_unstable();
    let order: Vec<usize> = row_axes.iter().map(|at| kept.iter().position(|k| k == at).unwrap()).collect();
    let view = view.permuted_axes(order);
    let mut bytes = Vec::with_capacity(n * k * 4);
    bytes.extend(view.iter().flat_map(|v| v.to_le_bytes()));
    ensure!(bytes.len() == n * k * 4, "weights of {:?} are not {n} rows of {k}", weights.shape());
    Tensor::from_shape(&[n, 4 * k], &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::konst::Const;

    fn values(shape: &[usize], seed: usize) -> Tensor {
        let count: usize = shape.iter().product();
        let data: Vec<f32> = (0..count).map(|i| ((i * 7919 + seed * 104729) % 2001) as f32 / 1000.0 - 1.0).collect();
        Tensor::from_shape(shape, &data).unwrap()
    }

    /// A graph of one product `x · W` as the einsum `expr` declares it.
    fn product(expr: &str, x_shape: &[usize], w_shape: &[usize]) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(x_shape)).unwrap();
        let w = model.add_const("w", values(w_shape, 1)).unwrap();
        let y = model.wire_node("product", EinSum::new(expr.parse().unwrap(), f32::datum_type()), &[x, w]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    fn run(model: &TypedModel, inputs: TVec<TValue>) -> Vec<Tensor> {
        let plan = model.clone().into_runnable().unwrap();
        plan.run(inputs).unwrap().into_iter().map(|v| v.into_tensor()).collect()
    }

    fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) {
        assert_eq!(ours.shape(), theirs.shape(), "{what}");
        let (ours, theirs) = (ours.try_as_plain_ram().unwrap(), theirs.try_as_plain_ram().unwrap());
        for (a, b) in ours.as_slice::<f32>().unwrap().iter().zip(theirs.as_slice::<f32>().unwrap()) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} vs {b}");
        }
    }

    #[test]
    fn products_in_every_axis_order_give_the_same_result_from_rows() {
        let cases: [(&str, &[usize], &[usize]); 6] = [
            ("amk,kn->amn", &[1, 3, 64], &[64, 40]),
            ("amk,kn->mn", &[1, 3, 64], &[64, 40]),
            ("mk,kn->amn", &[3, 64], &[64, 40]),
            ("bmk,bkn->amn", &[2, 3, 32], &[2, 32, 40]),
            ("mk,nk->mn", &[3, 64], &[40, 64]),
            ("amk,ank->amn", &[1, 3, 96], &[1, 24, 96]),
        ];
        for (expr, x_shape, w_shape) in cases {
            let model = product(expr, x_shape, w_shape);
            let x = values(x_shape, 2).into_tvalue();
            let expected = run(&model, tvec!(x.clone()));
            let mut rewritten = model.clone();
            assert_eq!(rewrite(&mut rewritten).unwrap(), 1, "{expr}");
            assert!(rewritten.nodes.iter().any(|n| n.op_is::<BlockMatMul>()), "{expr}");
            assert!(!rewritten.nodes.iter().any(|n| n.op_is::<EinSum>()), "{expr}");
            assert_close(&run(&rewritten, tvec!(x))[0], &expected[0], expr);
        }
    }

    #[test]
    fn products_that_are_not_row_products_are_left_alone() {
        // Summed over x alone, a W axis of size 2 kept apart from n, and a width that is not a multiple of 32.
        for (expr, x_shape, w_shape) in [
            ("mk,kn->mn", &[3, 48][..], &[48, 8][..]),
            ("mk,kbn->mbn", &[3, 64], &[64, 2, 8]),
            ("mkj,kn->mn", &[3, 64, 2], &[64, 8]),
        ] {
            let mut model = product(expr, x_shape, w_shape);
            assert_eq!(rewrite(&mut model).unwrap(), 0, "{expr}");
            assert!(model.nodes.iter().any(|n| n.op_is::<EinSum>()), "{expr}");
        }
    }

    #[test]
    fn a_tied_output_head_shares_its_embedding_table() {
        let mut model = TypedModel::default();
        let ids = model.add_source("ids", i64::fact([3])).unwrap();
        let table = values(&[10, 64], 3);
        let embedding = model.add_const("table", table.clone()).unwrap();
        let rows = model.wire_node("embed", Gather { axis: 0, output_type: None }, &[embedding, ids]).unwrap();
        // The head reads its own copy of the table, as a graph with a transposed head holds it.
        let head = model.add_const("head_weights", table.permute_axes(&[1, 0]).unwrap().into_arc_tensor()).unwrap();
        let logits = model
            .wire_node("head", EinSum::new("mk,kn->mn".parse().unwrap(), f32::datum_type()), &[rows[0], head])
            .unwrap();
        model.select_output_outlets(&logits).unwrap();
        let input = tvec!(tensor1(&[9i64, 0, 4]).into_tvalue());
        let expected = run(&model, input.clone());
        let mut rewritten = model.clone();
        assert_eq!(rewrite(&mut rewritten).unwrap(), 2);
        let constants: Vec<_> = rewritten.nodes.iter().filter_map(|n| n.op_as::<Const>()).collect();
        assert_eq!(constants.len(), 1, "one table for the lookup and the head");
        assert_eq!(constants[0].val().datum_type(), u8::datum_type());
        assert_close(&run(&rewritten, input)[0], &expected[0], "tied head");
    }
}

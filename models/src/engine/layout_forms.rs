//! NNEF forms that keep a prepared graph's convolutions and max pools as they are. tract's own forms change them on
//! the way through an archive: a channel-last convolution is written channel-first between two transposes, and a
//! max pool comes back computing the argmax indices nothing reads (NNEF's `max_pool` is `max_pool_with_index`).
//! A compiled graph loads without decluttering, so nothing undid either: CenterNet ran its heatmap pool in 21 ms
//! instead of 3.4, and its depthwise convolutions channel-first, where x86 has no channel-last kernel to win.

use tract_nnef::internal::*;
use tract_nnef::ser::{ints, invocation, logical, numeric, string, IntoAst};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::nnef_ops::size_arg;

/// Puts a channel-last max pool in place of a channel-first one between two transposes that take a channel-last
/// tensor to channel-first and back (what tf2onnx writes around a TensorFlow pool, as before CenterNet's heatmap
/// peaks: two transposes of a 128×128×80 tensor, 4 ms of its run). Returns how many were replaced.
pub fn rewrite_transposed_pools(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(pool) = node.op_as::<MaxPool>() else { continue };
        if pool.pool_spec.data_format != DataFormat::NCHW || pool.with_index_outputs.is_some() {
            continue;
        }
        let before = model.node(node.inputs[0].node);
        let rank = model.outlet_fact(node.inputs[0])?.rank();
        let outlet = OutletId::new(id, 0);
        let successors = model.outlet_successors(outlet);
        let [after] = successors else { continue };
        let after = model.node(after.node);
        let moves = |n: &TypedNode, from: usize, to: usize| n.op_as::<AxisOp>() == Some(&AxisOp::Move(from, to));
        if rank != 4 || !moves(before, 3, 1) || !moves(after, 1, 3) || model.outputs.contains(&outlet) {
            continue;
        }
        let mut channel_last = pool.clone();
        channel_last.pool_spec.data_format = DataFormat::NHWC;
        let mut patch = TypedModelPatch::new(format!("channel-last {}", node.name));
        let input = patch.tap_model(model, before.inputs[0])?;
        let wire = patch.wire_node(&node.name, channel_last, &[input])?[0];
        patch.shunt_outside(model, OutletId::new(after.id, 0), wire)?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// Registers both forms. Their writers must run before tract's (the registry goes first in the framework), and
/// they decline what tract's forms keep as it is: channel-first, quantized convolutions, pools with indices.
pub fn register(registry: &mut Registry) {
    registry.register_dumper(dump_conv);
    registry.register_dumper(dump_max_pool);
    let pool_spec = || {
        vec![
            TypeName::String.named("data_format"),
            TypeName::Integer.array().named("kernel_shape"),
            TypeName::String.named("padding"),
            TypeName::Integer.array().named("padding_before"),
            TypeName::Integer.array().named("padding_after"),
            TypeName::Logical.named("count_include_pad"),
            TypeName::Integer.array().named("dilations"),
            TypeName::Integer.array().named("strides"),
            TypeName::Integer.named("input_channels"),
            TypeName::Integer.named("output_channels"),
        ]
    };
    let mut conv = vec![
        TypeName::Scalar.tensor().named("input"),
        TypeName::Scalar.tensor().named("kernel"),
        TypeName::Scalar.tensor().named("bias"),
        TypeName::String.named("kernel_format"),
        TypeName::Integer.named("group"),
    ];
    conv.extend(pool_spec());
    registry.register_primitive("lookout_conv", &conv, &[("output", TypeName::Scalar.tensor())], load_conv);
    let mut max_pool = vec![TypeName::Scalar.tensor().named("input")];
    max_pool.extend(pool_spec());
    registry.register_primitive("lookout_max_pool", &max_pool, &[("output", TypeName::Scalar.tensor())], load_max_pool);
}

fn dump_conv(ast: &mut IntoAst, node: &TypedNode, op: &Conv) -> TractResult<Option<Arc<RValue>>> {
    if !op.pool_spec.data_format.c_is_last() || op.q_params.is_some() || node.inputs.len() != 3 {
        return Ok(None);
    }
    let inputs: Vec<_> = node.inputs.iter().map(|input| ast.mapping[input].clone()).collect();
    let mut attributes = vec![("kernel_format", string(format!("{:?}", op.kernel_fmt))), ("group", numeric(op.group))];
    attributes.extend(pool_spec_attributes(&op.pool_spec));
    Ok(Some(invocation("lookout_conv", &inputs, &attributes)))
}

fn load_conv(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let kernel = invocation.named_arg_as(builder, "kernel")?;
    let bias = invocation.named_arg_as(builder, "bias")?;
    let kernel_fmt = match &*invocation.named_arg_as::<String>(builder, "kernel_format")? {
        "OIHW" => KernelFormat::OIHW,
        "HWIO" => KernelFormat::HWIO,
        "OHWI" => KernelFormat::OHWI,
        other => bail!("unknown kernel format {other}"),
    };
    let group = size_arg(builder, invocation, "group")?;
    ensure!(group > 0, "a convolution in 0 groups");
    let op = Conv { pool_spec: read_pool_spec(builder, invocation)?, kernel_fmt, group, q_params: None };
    builder.wire(op, &[input, kernel, bias])
}

fn dump_max_pool(ast: &mut IntoAst, node: &TypedNode, op: &MaxPool) -> TractResult<Option<Arc<RValue>>> {
    if op.with_index_outputs.is_some() {
        return Ok(None);
    }
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation("lookout_max_pool", &[input], &pool_spec_attributes(&op.pool_spec))))
}

fn load_max_pool(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let pool_spec = read_pool_spec(builder, invocation)?;
    builder.wire(MaxPool { pool_spec, with_index_outputs: None }, &[input])
}

fn pool_spec_attributes(spec: &PoolSpec) -> Vec<(&'static str, RValue)> {
    let none = TVec::new();
    let (padding, before, after, count_include_pad) = match &spec.padding {
        PaddingSpec::Explicit(before, after) => ("explicit", before, after, false),
        PaddingSpec::ExplicitOnnxPool(before, after, count) => ("explicit_onnx_pool", before, after, *count),
        PaddingSpec::Valid => ("valid", &none, &none, false),
        PaddingSpec::SameUpper => ("same_upper", &none, &none, false),
        PaddingSpec::SameLower => ("same_lower", &none, &none, false),
    };
    vec![
        ("data_format", string(format!("{:?}", spec.data_format))),
        ("kernel_shape", ints(&spec.kernel_shape)),
        ("padding", string(padding)),
        ("padding_before", ints(before)),
        ("padding_after", ints(after)),
        ("count_include_pad", logical(count_include_pad)),
        ("dilations", ints(spec.dilations.as_deref().unwrap_or(&[]))),
        ("strides", ints(spec.strides.as_deref().unwrap_or(&[]))),
        ("input_channels", numeric(spec.input_channels)),
        ("output_channels", numeric(spec.output_channels)),
    ]
}

fn read_pool_spec(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<PoolSpec> {
    let data_format = match &*invocation.named_arg_as::<String>(builder, "data_format")? {
        "NCHW" => DataFormat::NCHW,
        "NHWC" => DataFormat::NHWC,
        "CHW" => DataFormat::CHW,
        "HWC" => DataFormat::HWC,
        other => bail!("unknown data format {other}"),
    };
    let kernel_shape: TVec<usize> = invocation.named_arg_as(builder, "kernel_shape")?;
    let spatial = kernel_shape.len();
    let per_axis = |name: &str, values: TVec<usize>| -> TractResult<Option<TVec<usize>>> {
        match values.len() {
            0 => Ok(None),
            n if n == spatial => Ok(Some(values)),
            n => bail!("{name} has {n} values for a {spatial}-d kernel"),
        }
    };
    let before = per_axis("padding_before", invocation.named_arg_as(builder, "padding_before")?)?;
    let after = per_axis("padding_after", invocation.named_arg_as(builder, "padding_after")?)?;
    let padding = match (&*invocation.named_arg_as::<String>(builder, "padding")?, before, after) {
        ("explicit", Some(before), Some(after)) => PaddingSpec::Explicit(before, after),
        ("explicit_onnx_pool", Some(before), Some(after)) => {
            PaddingSpec::ExplicitOnnxPool(before, after, invocation.named_arg_as(builder, "count_include_pad")?)
        }
        ("valid", None, None) => PaddingSpec::Valid,
        ("same_upper", None, None) => PaddingSpec::SameUpper,
        ("same_lower", None, None) => PaddingSpec::SameLower,
        (other, ..) => bail!("padding {other} with the wrong number of sizes"),
    };
    Ok(PoolSpec {
        data_format,
        kernel_shape,
        padding,
        dilations: per_axis("dilations", invocation.named_arg_as(builder, "dilations")?)?,
        strides: per_axis("strides", invocation.named_arg_as(builder, "strides")?)?,
        input_channels: size_arg(builder, invocation, "input_channels")?,
        output_channels: size_arg(builder, invocation, "output_channels")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel-last graph as decluttering leaves the detectors: a depthwise and a full convolution (explicit and
    /// same padding, a stride) and a max pool without indices.
    fn channel_last_graph() -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let value = |i: usize| ((i * 7919) % 41) as f32 / 13.0 - 1.5;
        let mut wire = model.add_source("input", f32::fact([1, 9, 9, 4]))?;
        let spec = |kernel_shape: TVec<usize>, padding, strides, input_channels, output_channels| PoolSpec {
            data_format: DataFormat::NHWC,
            kernel_shape,
            padding,
            dilations: None,
            strides,
            input_channels,
            output_channels,
        };
        let layers = [
            (4, 4, 4, PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)), None),
            (1, 4, 6, PaddingSpec::SameUpper, Some(tvec!(2, 2))),
        ];
        for (ix, (group, input_channels, output_channels, padding, strides)) in layers.into_iter().enumerate() {
            let kernel_shape = [output_channels, input_channels / group, 3, 3];
            let kernel: Vec<f32> = (0..kernel_shape.iter().product()).map(|i| value(i + ix)).collect();
            let kernel = model.add_const(format!("kernel{ix}"), Tensor::from_shape(&kernel_shape, &kernel)?)?;
            let bias: Vec<f32> = (0..output_channels).map(|i| value(i + 100)).collect();
            let bias = model.add_const(format!("bias{ix}"), tensor1(&bias))?;
            let op = Conv {
                pool_spec: spec(tvec!(3, 3), padding, strides, input_channels, output_channels),
                kernel_fmt: KernelFormat::OIHW,
                group,
                q_params: None,
            };
            wire = model.wire_node(format!("conv{ix}"), op, &[wire, kernel, bias])?[0];
        }
        let pool =
            MaxPool { pool_spec: spec(tvec!(3, 3), PaddingSpec::SameUpper, None, 6, 6), with_index_outputs: None };
        wire = model.wire_node("pool", pool, &[wire])?[0];
        model.select_output_outlets(&[wire])?;
        Ok(model)
    }

    #[test]
    fn channel_last_convolutions_and_pools_come_back_from_an_archive_as_written() -> TractResult<()> {
        let model = channel_last_graph()?;
        let mut archive = Vec::new();
        super::super::nnef_framework().write_to_tar(&model, &mut archive)?;
        let loaded = super::super::nnef_framework().model_for_read(&mut &archive[..])?;
        let ops = |model: &TypedModel| -> Vec<String> {
            model
                .nodes
                .iter()
                .filter(|n| n.op_is::<Conv>() || n.op_is::<MaxPool>())
                .map(|n| format!("{:?}", n.op))
                .collect()
        };
        assert_eq!(ops(&loaded), ops(&model));
        assert!(!loaded.nodes.iter().any(|n| n.op.name() == "MoveAxis"), "no transposes: {loaded}");
        let input: Vec<f32> = (0..9 * 9 * 4).map(|i| (i % 17) as f32 / 5.0 - 1.0).collect();
        let input = Tensor::from_shape(&[1, 9, 9, 4], &input)?;
        let expected = model.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
        let got = loaded.into_optimized()?.into_runnable()?.run(tvec!(input.into_tvalue()))?;
        expected[0].close_enough(&got[0], true)
    }

    /// A channel-first pool between the two transposes tf2onnx writes around a channel-last one becomes a channel-last
    /// pool with the same values, and nothing else is left of the three.
    #[test]
    fn a_transposed_pool_becomes_a_channel_last_one() -> TractResult<()> {
        let mut model = TypedModel::default();
        let input = model.add_source("input", f32::fact([1, 7, 9, 5]))?;
        let to_first = model.wire_node("to_first", AxisOp::Move(3, 1), &[input])?[0];
        let spec = PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(3, 3),
            padding: PaddingSpec::SameUpper,
            dilations: None,
            strides: None,
            input_channels: 5,
            output_channels: 5,
        };
        let pooled = model.wire_node("pool", MaxPool { pool_spec: spec, with_index_outputs: None }, &[to_first])?[0];
        let back = model.wire_node("to_last", AxisOp::Move(1, 3), &[pooled])?[0];
        model.select_output_outlets(&[back])?;
        let mut rewritten = model.clone();
        assert_eq!(rewrite_transposed_pools(&mut rewritten)?, 1);
        let rewritten = rewritten.into_decluttered()?;
        let ops: Vec<String> =
            rewritten.eval_order()?.iter().map(|&id| rewritten.node(id).op.name().to_string()).collect();
        assert_eq!(ops, ["Source", "MaxPool"]);
        let pool = rewritten.nodes.iter().find_map(|n| n.op_as::<MaxPool>()).unwrap();
        assert_eq!(pool.pool_spec.data_format, DataFormat::NHWC);
        let input: Vec<f32> = (0..7 * 9 * 5).map(|i| ((i * 31) % 23) as f32 / 7.0 - 1.0).collect();
        let input = Tensor::from_shape(&[1, 7, 9, 5], &input)?;
        let expected = model.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
        let got = rewritten.into_runnable()?.run(tvec!(input.into_tvalue()))?;
        expected[0].close_enough(&got[0], false)
    }
}

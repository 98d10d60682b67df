//! NNEF forms for the operators that decluttering leaves in Lookout's graphs and that tract's own registries cannot
//! write, so that every graph of a bundle can be compiled: the exact GELU, and the ONNX importer's dynamic u8
//! quantization (replaced by an operator of the same arithmetic that this crate can name), and the GGUF block
//! products and lookups of [`super::block_quant`] and the cached attention of [`super::attention`].

use tract_nnef::internal::*;
use tract_nnef::ser::{invocation, IntoAst};
use tract_onnx::tract_core::ops::nn::GeluExact;

/// The registry the compiled archives declare (`extension tract_registry lookout`).
pub fn registry() -> Registry {
    let mut registry = Registry::new("lookout");
    registry.register_unit_element_wise("lookout_gelu_exact", &GeluExact {});
    registry.register_dumper(dump_dynamic_quantize);
    registry.register_primitive(
        "lookout_dynamic_quantize_u8",
        &[TypeName::Scalar.tensor().named("input")],
        &[("output", TypeName::Integer.tensor()), ("scale", TypeName::Scalar.tensor()), ("zero_point", TypeName::Integer.tensor())],
        load_dynamic_quantize,
    );
    super::block_quant::register_nnef(&mut registry);
    super::attention::register_nnef(&mut registry);
    registry
}

/// An integer attribute of an NNEF invocation as a size: a negative one (a damaged archive) is an error, not a wrap.
pub(super) fn size_arg(builder: &mut ModelBuilder, invocation: &ResolvedInvocation, name: &str) -> TractResult<usize> {
    let value = invocation.named_arg_as::<i64>(builder, name)?;
    usize::try_from(value).map_err(|_| anyhow::anyhow!("{name} = {value} is not a size"))
}

/// Makes a prepared model writable as NNEF: drops the ONNX metadata properties (nothing reads them, and text such as
/// PP-OCR's embedded dictionary does not survive NNEF's string syntax), and replaces the ONNX importer's
/// `DynamicQuantizeLinearU8` (a type private to tract-onnx, so without an NNEF form) with [`DynamicQuantizeU8`],
/// which computes the same outputs.
pub fn make_writable(model: &mut TypedModel) {
    model.properties.clear();
    for node in model.nodes.iter_mut() {
        if node.op.name() == "DynamicQuantizeLinearU8" && node.inputs.len() == 1 && node.outputs.len() == 3 {
            node.op = Box::new(DynamicQuantizeU8);
        }
    }
}

/// ONNX `DynamicQuantizeLinear` to u8: the range of the input widened to hold 0, mapped onto 0..=255 with the zero
/// point rounded half to even; outputs the quantized tensor, the scale and the zero point.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DynamicQuantizeU8;

impl Op for DynamicQuantizeU8 {
    fn name(&self) -> StaticName {
        "DynamicQuantizeU8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DynamicQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].cast_to::<f32>()?;
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let (min, max) = xs.iter().fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let scale = (max - min) / u8::MAX as f32;
        let zero_point = (-min / scale).round_ties_even().clamp(0.0, u8::MAX as f32) as u8;
        let mut quantized = Tensor::zero::<u8>(input.shape())?;
        // x / scale, not x * (1 / scale): the reciprocal rounds some values to the neighbouring integer.
        let quantize = |x: f32| ((x / scale).round_ties_even() as i32 + zero_point as i32).clamp(0, u8::MAX as i32) as u8;
        let mut out = quantized.try_as_plain_ram_mut()?;
        out.as_slice_mut::<u8>()?.iter_mut().zip(xs).for_each(|(y, x)| *y = quantize(*x));
        Ok(tvec!(quantized.into_tvalue(), tensor0(scale).into_tvalue(), tensor0(zero_point).into_tvalue()))
    }
}

impl TypedOp for DynamicQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut quantized = inputs[0].clone();
        quantized.datum_type = u8::datum_type();
        Ok(tvec!(quantized, f32::fact([0usize; 0]), u8::fact([0usize; 0])))
    }

    as_op!();
}

fn dump_dynamic_quantize(ast: &mut IntoAst, node: &TypedNode, _op: &DynamicQuantizeU8) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation("lookout_dynamic_quantize_u8", &[input], &[])))
}

fn load_dynamic_quantize(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    builder.wire(DynamicQuantizeU8, &[input])
}

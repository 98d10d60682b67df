//! NNEF forms for the operators that decluttering leaves in Lookout's graphs and that tract's own registries cannot
//! write, so that every graph of a bundle can be compiled: the exact GELU, the block products and lookups of
//! [`super::block_quant`] and the cached attention of [`super::attention`].

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::nn::GeluExact;

/// The registry the compiled archives declare (`extension tract_registry lookout`).
pub fn registry() -> Registry {
    let mut registry = Registry::new("lookout");
    registry.register_unit_element_wise("lookout_gelu_exact", &GeluExact {});
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
/// PP-OCR's embedded dictionary does not survive NNEF's string syntax).
pub fn make_writable(model: &mut TypedModel) {
    model.properties.clear();
}

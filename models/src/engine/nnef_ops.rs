//! What compiling Lookout's graphs to NNEF needs beyond tract's own registries: the NNEF form of the exact GELU that
//! decluttering leaves in them, the clean-up that makes a prepared model writable, and reading sizes from NNEF
//! attributes (for the operators of [`super::block_quant`] and [`super::attention`], which register their own forms).

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::nn::GeluExact;

/// Registers the NNEF forms of tract's own operators that its registries lack: the exact GELU.
pub fn register(registry: &mut Registry) {
    registry.register_unit_element_wise("lookout_gelu_exact", &GeluExact {});
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

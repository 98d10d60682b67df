//! What the tests of Lookout's own operators share: deterministic values, small graphs of one tract convolution
//! and the activation after it, running a graph, and comparing results within float rounding.

use tract_nnef::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::{leaky_relu, DataFormat};

/// `len` values between -2 and 2 in no simple order, different for each `seed`.
pub fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919 + seed * 104729) % 211) as f32 / 53.0 - 2.0).collect()
}

/// `wire` clamped to `[0, 6]` (a ReLU6) by two constants of its rank.
pub fn relu6_after(model: &mut TypedModel, wire: OutletId) -> OutletId {
    let rank = model.outlet_fact(wire).unwrap().rank();
    let scalar = |v: f32| Tensor::from_shape(&vec![1; rank], &[v]).unwrap();
    let lo = model.add_const("lo", scalar(0.0)).unwrap();
    let wire = model.wire_node("relu", math::max(), &[wire, lo]).unwrap()[0];
    let hi = model.add_const("hi", scalar(6.0)).unwrap();
    model.wire_node("relu6", math::min(), &[wire, hi]).unwrap()[0]
}

/// One tract convolution of an image of `x_shape` (in `format`) with deterministic weights `[c_out, c_in / group,
/// kernel height, kernel width]` and bias, then `act`: `leaky` (a leaky ReLU), `relu6`, or nothing.
pub struct ConvCase {
    pub x_shape: [usize; 4],
    pub format: DataFormat,
    pub c_in: usize,
    pub c_out: usize,
    pub group: usize,
    pub kernel: [usize; 2],
    /// Zeros above, below, left and right.
    pub pads: [usize; 4],
    pub strides: [usize; 2],
}

impl ConvCase {
    pub fn graph(&self, act: &str) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(self.x_shape)).unwrap();
        let shape = [self.c_out, self.c_in / self.group, self.kernel[0], self.kernel[1]];
        let w = model.add_const("w", Tensor::from_shape(&shape, &values(shape.iter().product(), 1)).unwrap()).unwrap();
        let b = model.add_const("b", Tensor::from_shape(&[self.c_out], &values(self.c_out, 2)).unwrap()).unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: self.format,
                kernel_shape: self.kernel.iter().copied().collect(),
                padding: PaddingSpec::Explicit(tvec!(self.pads[0], self.pads[2]), tvec!(self.pads[1], self.pads[3])),
                dilations: None,
                strides: Some(self.strides.iter().copied().collect()),
                input_channels: self.c_in,
                output_channels: self.c_out,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: self.group,
            q_params: None,
        };
        let mut wire = model.wire_node("conv", conv, &[x, w, b]).unwrap()[0];
        match act {
            "leaky" => wire = model.wire_node("leaky", leaky_relu(0.1), &[wire]).unwrap()[0],
            "relu6" => wire = relu6_after(&mut model, wire),
            _ => {}
        }
        model.select_output_outlets(&[wire]).unwrap();
        model
    }

    /// The input, deterministic values of `x_shape`.
    pub fn input(&self) -> Tensor {
        Tensor::from_shape(&self.x_shape, &values(self.x_shape.iter().product(), 3)).unwrap()
    }
}

/// The graph's first output on `x`.
pub fn run(model: &TypedModel, x: &Tensor) -> Vec<f32> {
    run_inputs(model, std::slice::from_ref(x))
}

/// The graph's first output on `inputs`.
pub fn run_inputs(model: &TypedModel, inputs: &[Tensor]) -> Vec<f32> {
    let inputs = inputs.iter().map(|x| x.clone().into_tvalue()).collect();
    let out = model.clone().into_runnable().unwrap().run(inputs).unwrap();
    out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
}

/// The graph's operators by name, in evaluation order.
pub fn op_names(model: &TypedModel) -> Vec<String> {
    model.eval_order().unwrap().iter().map(|&id| model.node(id).op.name().to_string()).collect()
}

/// Asserts `got` equals `expected` within float rounding (a relative 1e-4).
pub fn assert_close(got: &[f32], expected: &[f32], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(expected).enumerate() {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what} at {i}: {a} vs {b}");
    }
}

"""Small ONNX graph builder (numpy + onnx.helper) with an optional int8 dynamic-quantization path for matmuls."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 23  # for Attention (the decoder's cross-attention)
IR_VERSION = 8
# Largest int8 matmul weight (elements) kept in one block; see GraphBuilder.int8_matmul.
MAX_INT8_WEIGHT = 1 << 20

_ELEM_TYPES = {
    "f32": TensorProto.FLOAT,
    "i64": TensorProto.INT64,
    "i8": TensorProto.INT8,
    "u8": TensorProto.UINT8,
}


def quantize_symmetric(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization with one scale per slice along `axis` (values in [-127, 127]).

    Returns the int8 tensor and the f32 scales (1-D, one per slice) such that w ~= q * scale.
    """
    w = np.asarray(w, dtype=np.float32)
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    amax = np.abs(w).max(axis=reduce_axes, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1)


class GraphBuilder:
    """Collects nodes and initializers; `int8=True` makes `linear` emit the dynamic int8 pattern.

    No value_info is written: tract derives intermediate types itself and rejects conflicting hints.
    """

    def __init__(self, name: str, int8: bool = False):
        self.name = name
        self.int8 = int8
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._scope: list[str] = []
        self._consts: dict[tuple, str] = {}
        self._quantized: dict[str, list[str]] = {}
        self.domains: set[str] = set()

    # --- naming -------------------------------------------------------------------------------

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefixes the names of nodes and initializers created inside the block."""
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _unique(self, base: str) -> str:
        full = "/".join([*self._scope, base])
        name, n = full, 1
        while name in self._names:
            name = f"{full}_{n}"
            n += 1
        self._names.add(name)
        return name

    # --- graph I/O and constants --------------------------------------------------------------

    def input(self, name: str, dtype: str, shape: Sequence[int | str]) -> str:
        self._names.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, _ELEM_TYPES[dtype], list(shape)))
        return name

    def output(self, value: str, name: str, dtype: str, shape: Sequence[int | str | None]) -> None:
        """Declares `value` as a graph output called `name` (renaming the producing node's output)."""
        if value != name:
            self._rename(value, name)
        self.outputs.append(helper.make_tensor_value_info(name, _ELEM_TYPES[dtype], list(shape)))

    def _rename(self, old: str, new: str) -> None:
        producers = [n for n in self.nodes if old in n.output]
        if len(producers) != 1:
            raise ValueError(f"cannot rename {old}: not produced by exactly one node")
        self._names.add(new)
        for node in self.nodes:
            for field in (node.input, node.output):
                for i, v in enumerate(field):
                    if v == old:
                        field[i] = new

    def const(self, value: np.ndarray | int | float | Sequence, name: str = "const", dtype=None) -> str:
        """Adds an initializer; small integer constants are shared. Rank-0 arrays stay rank 0."""
        array = np.asarray(value, dtype=dtype)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        if array.dtype == np.int32:
            array = array.astype(np.int64)
        key = None
        if array.size <= 8 and array.dtype in (np.int64, np.float32):
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        unique = self._unique(name)
        self.initializers.append(numpy_helper.from_array(array, unique))
        if key is not None:
            self._consts[key] = unique
        return unique

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (axes, starts, shapes)."""
        return self.const(np.array(values, dtype=np.int64), "ints")

    # --- nodes --------------------------------------------------------------------------------

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, domain: str = "", **attrs):
        node_name = self._unique(name or op_type)
        outs = [f"{node_name}:{i}" if outputs > 1 else node_name for i in range(outputs)]
        self._names.update(outs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain, **attrs))
        if domain:
            self.domains.add(domain)
        return outs if outputs > 1 else outs[0]

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str, float_only: bool = False) -> str:
        """x @ weight + bias with weight [in, out]; int8 mode quantizes weight per output column
        unless `float_only` (for inputs whose outliers one per-tensor activation scale cannot hold)."""
        with self.scope(name):
            if self.int8 and not float_only:
                y = self.int8_matmul(x, *quantize_symmetric(weight, axis=1))
            else:
                y = self.op("MatMul", x, self.const(weight.astype(np.float32), "weight"))
            if bias is not None:
                y = self.op("Add", y, self.const(bias.astype(np.float32), "bias"))
        return y

    def int8_matmul(self, x: str, weight_i8: np.ndarray, weight_scale: np.ndarray) -> str:
        """DynamicQuantizeLinear(x) -> MatMulInteger(x_u8, W_i8, x_zp) -> Cast -> Mul(x_scale * w_scale).

        Weights over MAX_INT8_WEIGHT elements are split into column blocks whose results are
        concatenated: tract folds a MatMulInteger's weight-side terms at load time only up to
        that size and otherwise recomputes them on every run. One quantization of `x` is shared
        by every matmul that reads it.
        """
        if x not in self._quantized:
            self._quantized[x] = self.op("DynamicQuantizeLinear", x, outputs=3)
        xq, xs, xzp = self._quantized[x]
        k, n = weight_i8.shape
        step = max(1, MAX_INT8_WEIGHT // k)
        blocks = []
        for i in range(0, n, step):
            block = self.const(np.ascontiguousarray(weight_i8[:, i : i + step]), "weight_i8")
            blocks.append(self.op("MatMulInteger", xq, block, xzp))
        acc = blocks[0] if len(blocks) == 1 else self.op("Concat", *blocks, axis=-1)
        acc = self.op("Cast", acc, to=TensorProto.FLOAT)
        scale = self.op("Mul", xs, self.const(weight_scale, "weight_scale"), name="scale")
        return self.op("Mul", acc, scale, name="dequantize")

    def layer_norm(self, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> str:
        last = self.ints(-1)
        mean = self.op("ReduceMean", x, last, keepdims=1)
        centered = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Mul", centered, centered), last, keepdims=1)
        std = self.op("Sqrt", self.op("Add", var, self.const(np.float32(eps), "eps")))
        y = self.op("Div", centered, std)
        y = self.op("Mul", y, self.const(gamma.astype(np.float32), "gamma"))
        return self.op("Add", y, self.const(beta.astype(np.float32), "beta"))

    def gelu(self, x: str) -> str:
        """Exact GELU: 0.5 * x * (1 + erf(x / sqrt(2)))."""
        erf = self.op("Erf", self.op("Div", x, self.const(np.float32(np.sqrt(2.0)), "sqrt2")))
        y = self.op("Mul", x, self.op("Add", erf, self.const(np.float32(1.0), "one")))
        return self.op("Mul", y, self.const(np.float32(0.5), "half"))

    # --- model --------------------------------------------------------------------------------

    def model(self, doc: str, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, 1) for d in sorted(self.domains))],
            producer_name="lookout-prepare",
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        for key, value in (metadata or {}).items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model, full_check=True)
        return model

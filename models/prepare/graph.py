"""Small ONNX graph builder (numpy + onnx.helper) whose matmuls take one of three weight forms (`WEIGHTS`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 23  # for Attention (the decoder's cross-attention)
IR_VERSION = 8
# Values per block of ggml's Q8_0 format (an f16 scale, then 32 int8 codes).
BLOCK = 32
# The forms a GraphBuilder gives its matmul weights:
#   f32         plain MatMul;
#   q8_0        Lookout's LookoutBlockMatMul / LookoutBlockGather over Q8_0 blocks, computed from them as stored
#               (activations stay f32, or for one row are rounded to 16 bits per block of 32);
#   q8_0-exact  plain MatMul over exactly the values those blocks hold: the reference onnxruntime runs for q8_0,
#               whose operators it lacks.
WEIGHTS = ("f32", "q8_0", "q8_0-exact")

_ELEM_TYPES = {
    "f32": TensorProto.FLOAT,
    "i64": TensorProto.INT64,
    "i8": TensorProto.INT8,
    "u8": TensorProto.UINT8,
}


def quantize_q8_0(w_out_in: np.ndarray) -> np.ndarray:
    """ggml's Q8_0 blocks of 32 along the input axis (scale = max |w| / 127, stored as f16; codes rounded):
    u8 [n, k/32 * 34]."""
    n, k = w_out_in.shape
    blocks = w_out_in.reshape(n, k // BLOCK, BLOCK).astype(np.float32)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / 127.0
    inverse = np.where(scale != 0, 1.0 / np.where(scale != 0, scale, 1.0), 0.0)
    codes = np.clip(np.round(blocks * inverse), -127, 127).astype(np.int8)
    header = scale.astype(np.float16).view(np.uint8)  # [n, k/32, 2]
    return np.ascontiguousarray(np.concatenate([header, codes.view(np.uint8)], axis=-1).reshape(n, -1))


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """The f32 values [n, k] that Q8_0 blocks u8 [n, k/32 * 34] hold."""
    n = blocks.shape[0]
    raw = np.ascontiguousarray(blocks).reshape(n, -1, 2 + BLOCK)
    scale = raw[..., :2].copy().view(np.float16).astype(np.float32)  # [n, k/32, 1]
    codes = raw[..., 2:].copy().view(np.int8).astype(np.float32)
    return (codes * scale).reshape(n, -1)


class GraphBuilder:
    """Collects nodes and initializers; `weights` (one of `WEIGHTS`) is the form `linear` gives its weights.

    No value_info is written: tract derives intermediate types itself and rejects conflicting hints.
    """

    def __init__(self, name: str, weights: str = "f32"):
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
        self.name = name
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._scope: list[str] = []
        self._consts: dict[tuple, str] = {}
        self._tables: dict[str, np.ndarray | str] = {}
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

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
        """x @ weight + bias with weight [in, out], in the builder's weight form."""
        with self.scope(name):
            if self.weights == "q8_0":
                y = self.block_matmul(x, self.const(quantize_q8_0(np.ascontiguousarray(weight.T)), "weight_blocks"))
            elif self.weights == "q8_0-exact":
                y = self.op("MatMul", x, self.const(dequantize_q8_0(quantize_q8_0(np.ascontiguousarray(weight.T))).T,
                                                    "weight"))
            else:
                y = self.op("MatMul", x, self.const(weight.astype(np.float32), "weight"))
            if bias is not None:
                y = self.op("Add", y, self.const(bias.astype(np.float32), "bias"))
        return y

    def block_matmul(self, x: str, blocks: str) -> str:
        """x [..., K] times the transposed Q8_0 weight whose blocks (u8 [N, K/32 * 34]) are the initializer `blocks`."""
        n, width = self._initializer_shape(blocks)
        return self.op("LookoutBlockMatMul", x, blocks, domain="ai.lookout", format="Q8_0", K=width // (2 + BLOCK) * BLOCK,
                       N=n)

    def _initializer_shape(self, name: str) -> tuple[int, ...]:
        return next(tuple(t.dims) for t in self.initializers if t.name == name)

    def _table(self, table: np.ndarray, name: str) -> np.ndarray | str:
        """A token table [n, d] in the builder's weight form, made once per name: the q8_0 form's one initializer
        of blocks, read by the embedding and a tied projection alike; else the f32 values (exact to those blocks for
        q8_0-exact)."""
        if name not in self._tables:
            if self.weights == "q8_0":
                self._tables[name] = self.const(quantize_q8_0(table), f"{name}_blocks")
            elif self.weights == "q8_0-exact":
                self._tables[name] = dequantize_q8_0(quantize_q8_0(table))
            else:
                self._tables[name] = np.asarray(table, np.float32)
        return self._tables[name]

    def embedding(self, ids: str, table: np.ndarray, name: str) -> str:
        """Rows of `table` [n, d] for the int64 `ids`: [..., d]."""
        form = self._table(table, name)
        if isinstance(form, str):
            return self.op("LookoutBlockGather", form, ids, domain="ai.lookout", format="Q8_0", K=table.shape[1])
        return self.op("Gather", self.const(form, name), ids, axis=0)

    def tied_projection(self, x: str, table: np.ndarray, name: str) -> str:
        """x [..., d] @ table.T: an output head tied to the embedding `table` [n, d]. The f32 forms store it as its
        own transposed copy: a constant shared by a Gather and a MatMul would be repacked by tract on every run."""
        form = self._table(table, name)
        if isinstance(form, str):
            return self.block_matmul(x, form)
        return self.op("MatMul", x, self.const(np.ascontiguousarray(form.T), "projection"))

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

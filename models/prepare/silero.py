"""Silero VAD v6 for 16 kHz: the If-free export with its 16 kHz branch inlined and fixed shapes for tract."""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

SAMPLE_RATE = 16000
CHUNK = 512  # new samples per call at 16 kHz
CONTEXT = 64  # samples of the previous chunk prepended to each call
STATE_SHAPE = (2, 1, 128)

INPUTS = [
    {"name": "input", "dtype": "f32", "shape": [1, CONTEXT + CHUNK]},
    {"name": "state", "dtype": "f32", "shape": list(STATE_SHAPE)},
]
OUTPUTS = [
    {"name": "output", "dtype": "f32", "shape": [1, 1]},
    {"name": "stateN", "dtype": "f32", "shape": list(STATE_SHAPE)},
]


def vad_16k(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inlines the sample-rate If of `silero_vad_op18_ifless.onnx` for 16 kHz.

    The export selects its 16 kHz or 8 kHz network with `If(sr == 16000)`; tract needs `sr` fixed,
    and with the branch inlined the graph has no `sr` input and no If at all.
    """
    graph = model.graph
    if_nodes = [n for n in graph.node if n.op_type == "If"]
    if len(if_nodes) != 1:
        raise ValueError(f"expected one If node, found {len(if_nodes)}")
    if_node = if_nodes[0]
    init = {t.name: t for t in graph.initializer}
    equal = next(n for n in graph.node if if_node.input[0] in n.output)
    if equal.op_type != "Equal" or numpy_helper.to_array(init[equal.input[1]]).item() != SAMPLE_RATE:
        raise ValueError("the If condition is not `sr == 16000`")
    branch = next(a.g for a in if_node.attribute if a.name == "then_branch")

    renames = dict(zip((o.name for o in branch.output), if_node.output))  # -> output, stateN
    nodes = []
    for node in branch.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                field[i] = renames.get(name, name)
        nodes.append(node)

    used = {name for n in nodes for name in n.input}
    initializers = [t for t in graph.initializer if t.name in used] + list(branch.initializer)
    dtype = onnx.TensorProto.FLOAT
    new_graph = helper.make_graph(
        nodes,
        "silero_vad_16k",
        [helper.make_tensor_value_info(i["name"], dtype, i["shape"]) for i in INPUTS],
        [helper.make_tensor_value_info(o["name"], dtype, o["shape"]) for o in OUTPUTS],
        initializer=initializers,
    )
    out = helper.make_model(
        new_graph,
        opset_imports=list(model.opset_import),
        producer_name="lookout-prepare",
        doc_string="Silero VAD v6, 16 kHz: input = 64 context samples + 512 new samples; "
        "output = speech probability; state carried between calls (zeros at start)",
    )
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out

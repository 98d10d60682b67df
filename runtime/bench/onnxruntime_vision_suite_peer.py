"""Runs a vision suite's images through onnxruntime on Lookout's own vision ONNX files, for `lookout bench`.

The pipeline is the reference one the bundle's tests are checked against (models/prepare/vision.py: letterbox,
detector, class-agnostic NMS; DB text boxes and CTC greedy reading), with the detector's score threshold given
here. Prints one JSON object: load time, per image its object counts, the text lines read and the milliseconds
the image took, and this process's peak RSS and cold start (from this script's first line, imports included).
`lookout bench` runs it with models/prepare on PYTHONPATH, where the reference pipeline lives.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

import vision  # noqa: E402


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="JPEG or PNG files")
    parser.add_argument("--detector", required=True, help="the bundle's detector ONNX file")
    parser.add_argument("--detector-variant", required=True, choices=sorted(vision.DETECTOR_PARAMS),
                        help="which of the bundle's detectors it is (its input size, layout and scale)")
    parser.add_argument("--labels", required=True, help="its class names, one per line")
    parser.add_argument("--ocr-det", required=True, help="the bundle's text detector ONNX file")
    parser.add_argument("--ocr-rec", required=True, help="the bundle's text recognizer ONNX file")
    parser.add_argument("--dictionary", required=True, help="the recognizer's classes, one per line, blank first")
    parser.add_argument("--score-threshold", type=float, required=True)
    args = parser.parse_args()
    if not 0.0 <= args.score_threshold <= 1.0:
        parser.error("--score-threshold must lie between 0 and 1")
    params = {**vision.DETECTOR_PARAMS[args.detector_variant], "score_threshold": args.score_threshold}

    start = time.perf_counter()
    detector, det, rec = (vision.session(path) for path in (args.detector, args.ocr_det, args.ocr_rec))
    load_ms = ms(start)
    cold_start_ms = ms(STARTED)
    labels = Path(args.labels).read_text(encoding="utf-8").splitlines()
    # Split on newlines only: one of the classes is a space, and str.splitlines breaks on more than "\n".
    dictionary = Path(args.dictionary).read_text(encoding="utf-8").split("\n")[:-1]

    results = []
    for path in args.images:
        image = Image.open(path).convert("RGB")
        start = time.perf_counter()
        counts: dict[str, int] = {}
        for found in vision.detect_objects(detector, image, labels, params):
            counts[found["label"]] = counts.get(found["label"], 0) + 1
        boxes = vision.read_text(det, rec, image, dictionary)
        elapsed = ms(start)
        lines = vision.joined_text(boxes).splitlines() if boxes else []
        results.append({"file": path, "counts": counts, "text": lines, "ms": elapsed})

    print(json.dumps({
        "engine": f"onnxruntime {vision.ort.__version__}",
        "load_ms": load_ms,
        "cold_start_ms": cold_start_ms,
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "results": results,
    }))


if __name__ == "__main__":
    main()

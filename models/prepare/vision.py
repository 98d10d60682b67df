"""Vision components of the bundle (NanoDet and CenterNet detectors, PP-OCRv4 det + rec, EfficientNet-Lite0 scene
classifier) and their exact pre/post-processing.

Preprocessing, as the runtime must reproduce it:
  resize      bilinear with half-pixel centres and no antialiasing (cv2 INTER_LINEAR, TF half_pixel_centers):
              source coordinate = (dst + 0.5) * src_size / dst_size - 0.5, clamped to [0, src_size - 1];
              computed in f32 from the 8-bit pixels, never rounded back to integers
  letterbox   scale = size / max(width, height); new size = (round(width * scale), round(height * scale))
              (Python round: half to even); image at the top-left, bottom/right padded with pixel value 0
  nanodet     letterbox to 416, RGB, values 0..1, NCHW [1, 3, 416, 416]; boxes are in the 416 space, divide by
              scale for image pixels
  centernet   letterbox to 512, RGB, values 0..255, NHWC [1, 512, 512, 3]; boxes are in the 512 space
  ocr det     letterbox to 640, BGR, (x / 255 - 0.5) / 0.5 (the padding becomes -1.0), NCHW [1, 3, 640, 640];
              the output is a text probability per input pixel [1, 1, 640, 640]
  ocr rec     crop, resize to height 48 and width min(320, ceil(48 * w / h)), BGR, (x / 255 - 0.5) / 0.5,
              NCHW, right-padded with 0.0 (after normalization) to [1, 3, 48, 320] (as rapidocr does)
  classifier  letterbox to 224 padded with pixel 127 (the whole frame, not a centre crop: a scene label is about
              everything the camera sees), RGB, (x - 127) / 128, NCHW [1, 3, 224, 224]
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

import classifier
import manifest
import tfjs_detectors
from sources import Source, SourceError

VISION_DIR = "vision"
LABELS_TS = "package/src/object/labels.ts"
PPOCR_DET = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
PPOCR_REC = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
DARKNET_DATA = "usr/share/darknet/data"

OCR_DET_SIZE = 640
OCR_REC_SHAPE = (48, 320)
BLANK = "<blank>"

# Every image input is built as (pixel / pixel_scale - mean) / std per channel, pixels being 0..255.
_DETECTOR_COMMON = {
    "channel_order": "rgb", "resize": "letterbox", "pad_pixel": 0.0, "score_threshold": 0.3, "iou_threshold": 0.5,
    "nms": "class-agnostic", "max_detections": 100, "output": "x1,y1,x2,y2,score,class", "box_space": "input",
    "class_base": 0, "labels": f"{VISION_DIR}/coco_labels.txt",
}
# The detectors of the bundle by variant, the default first. CenterNet is the more accurate on photos; NanoDet runs
# in half its time with a third of its working memory, for the slow boards. NanoDet's far people and parked cars
# score 0.25-0.32 on camera frames, so it keeps candidates from 0.25 and leaves the rest to the per-label filters.
DETECTOR_PARAMS = {
    "centernet": {"input_size": 512, "layout": "nhwc", "pixel_scale": 1.0, **_DETECTOR_COMMON},
    "nanodet": {"input_size": 416, "layout": "nchw", "pixel_scale": 255.0, **_DETECTOR_COMMON, "score_threshold": 0.25,
                # [min_score, threshold] for vehicles: its parked car's median score over frames is 0.28 (the
                # runtime's default of 0.35 is CenterNet's); chosen on the camera suite's in-domain frames.
                "filter_vehicle": [0.0, 0.25]},
}
OCR_NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "pixel_scale": 255.0, "channel_order": "bgr",
            "layout": "nchw"}
OCR_DET_PARAMS = {
    "input_size": OCR_DET_SIZE, **OCR_NORM, "resize": "letterbox", "pad_pixel": 0.0, "db_threshold": 0.3,
    "box_threshold": 0.5, "unclip_ratio": 1.5, "dilate": 2, "min_box_side": 3, "max_candidates": 1000,
    "merge_line_overlaps": True,
}
CLASSIFIER_PARAMS = {
    "input_size": classifier.INPUT_SIZE, "layout": "nchw", "channel_order": "rgb", "pixel_scale": 1.0,
    "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0], "resize": "letterbox", "pad_pixel": 127,
    "top_k": 3, "min_score": 0.15, "labels": f"{VISION_DIR}/imagenet_labels.txt",
}
OCR_REC_PARAMS = {
    "height": OCR_REC_SHAPE[0], "width": OCR_REC_SHAPE[1], **OCR_NORM, "pad": "right", "pad_normalized": 0.0,
    "dictionary": f"{VISION_DIR}/ppocr_keys.txt", "blank": 0, "decode": "ctc-greedy",
}


def session(model, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data if isinstance(data, bytes) else str(data), options,
                                providers=["CPUExecutionProvider"])


# Labels and dictionary.

def coco_labels(source: Source) -> list[str]:
    """The 80 COCO names of labels.ts in class order (the detector's class c is entry c, 0-based)."""
    text = source.read(LABELS_TS).decode()
    pairs = [(int(c), name) for c, name in re.findall(r"class:\s*(\d+),\s*label:\s*'([^']+)'", text)]
    if [c for c, _ in pairs] != list(range(1, 81)):
        raise SourceError(f"{LABELS_TS}: expected classes 1..80, found {len(pairs)} entries")
    return [name for _, name in pairs]


def ctc_dictionary(rec: onnx.ModelProto) -> list[str]:
    """rapidocr's CTCLabelDecode table: blank, the `character` metadata split by str.splitlines, a space."""
    meta = {p.key: p.value for p in rec.metadata_props}
    characters = meta["character"].splitlines()
    if characters != meta["character"].split("\n"):
        raise SourceError("the rec dictionary holds line separators other than \\n")
    return [BLANK, *characters, " "]


# Fixed shapes.

def fix_shapes(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Gives the single input concrete dims and the outputs the dims onnxruntime computes for them."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    (value,) = graph.input

    def set_dims(v, shape):
        dims = v.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)

    set_dims(value, input_shape)
    del graph.value_info[:]
    outputs = session(model).run(None, {value.name: np.zeros(input_shape, np.float32)})
    for v, out in zip(graph.output, outputs):
        set_dims(v, out.shape)
    onnx.checker.check_model(model)
    return model


# The NanoDet graph.

def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its constant subgraphs computed (onnxruntime's basic level: plain ONNX operators only).

    tf2onnx leaves the TF.js padding arithmetic (Where, SparseToDense) as ScatterND and Expand over constants.
    """
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        folded = onnx.load(options.optimized_model_filepath)
    left = {n.op_type for n in folded.graph.node} & {"ScatterND", "Expand", "Where", "Cast"}
    if left or any(n.domain not in ("", "ai.onnx") for n in folded.graph.node):
        raise ValueError(f"constant folding left {sorted(left)} or non-ONNX operators")
    return folded


def fold_pool_padding(model: onnx.ModelProto) -> int:
    """Moves a Pad of -inf in front of a MaxPool into the MaxPool's own padding (which ignores the padded cells, the
    same result); tract copies the whole feature map for the Pad (6 ms of NanoDet's 100). Returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    folded = 0
    for pool in [n for n in graph.node if n.op_type == "MaxPool"]:
        pad = producers.get(pool.input[0])
        if pad is None or pad.op_type != "Pad" or any(a.name == "pads" for a in pool.attribute):
            continue
        pads = constants.get(pad.input[1])
        value = constants.get(pad.input[2]) if len(pad.input) > 2 else None
        if pads is None or value is None or not np.isneginf(value) or len(pads) != 8 or pads[[0, 1, 4, 5]].any():
            continue
        pool.input[0] = pad.input[0]
        pool.attribute.append(helper.make_attribute("pads", [int(p) for p in pads[[2, 3, 6, 7]]]))
        graph.node.remove(pad)
        folded += 1
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for initializer in unused:
        graph.initializer.remove(initializer)
    return folded


def nanodet_graph(raw: bytes) -> bytes:
    """NanoDet-m with its boxes decoded in the graph: `detections` f32[1, N, 6] over all N cells of the three strides
    (x1, y1, x2, y2 in input pixels, the best class's score, that class), the rows the runtime reads.

    Each cell's box edges are the expected values of its four 11-bin distributions in strides from the cell's centre
    ((column + 0.5, row + 0.5) × stride), as NanoDet's generalized focal loss head defines them. The expectation is
    written as Σ exp(l)·i / Σ exp(l) with the logits clipped to ±60 (no overflow), not with a Softmax: the same value
    (within 1e-4 of a stride), and tract's Softmax over rows of 11 took 8 ms of NanoDet's 100.
    """
    from onnx import helper, numpy_helper

    model = fold_constants(onnx.load_from_string(raw))
    if fold_pool_padding(model) != 1:
        raise ValueError("NanoDet's max-pool padding was not where it is expected")
    graph = model.graph
    size, bins = tfjs_detectors.NANODET_SIZE, tfjs_detectors.NANODET_BINS
    centres, strides = [], []
    for stride in tfjs_detectors.NANODET_STRIDES:
        side = size // stride
        row, column = np.divmod(np.arange(side * side, dtype=np.float32), side)
        x, y = (column + 0.5) * stride, (row + 0.5) * stride
        centres.append(np.stack([x, y, x, y], 1))
        strides.append(np.full((side * side, 1), stride, np.float32))
    cells = sum(len(c) for c in centres)
    constants = {
        "head_centres": np.concatenate(centres)[None],  # [1, N, 4]
        "head_strides": np.concatenate(strides)[None],  # [1, N, 1]
        "head_sides": np.array([[[-1, -1, 1, 1]]], np.float32),
        "head_bins": np.arange(bins, dtype=np.float32).reshape(bins, 1),
        "head_shape_bins": np.array([1, cells, 4, bins], np.int64),
        "head_shape_edges": np.array([1, cells, 4], np.int64),
        "head_low": np.array(-60, np.float32),
        "head_high": np.array(60, np.float32),
        "head_last_axis": np.array([-1], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    levels = tfjs_detectors.NANODET_STRIDES
    node = helper.make_node
    graph.node.extend([
        node("Concat", [f"scores_{s}" for s in levels], ["head_scores"], axis=1),
        node("Concat", [f"distances_{s}" for s in levels], ["head_logits"], axis=1),
        node("Reshape", ["head_logits", "head_shape_bins"], ["head_logits_4"]),
        node("Clip", ["head_logits_4", "head_low", "head_high"], ["head_clipped"]),
        node("Exp", ["head_clipped"], ["head_weights"]),
        node("MatMul", ["head_weights", "head_bins"], ["head_weighted"]),
        node("ReduceSum", ["head_weights", "head_last_axis"], ["head_total"], keepdims=1),
        node("Div", ["head_weighted", "head_total"], ["head_expected"]),
        node("Reshape", ["head_expected", "head_shape_edges"], ["head_edges"]),
        node("Mul", ["head_edges", "head_strides"], ["head_distances"]),
        node("Mul", ["head_distances", "head_sides"], ["head_offsets"]),
        node("Add", ["head_centres", "head_offsets"], ["head_boxes"]),
        node("ReduceMax", ["head_scores"], ["head_best"], axes=[2], keepdims=1),
        node("ArgMax", ["head_scores"], ["head_class_id"], axis=2, keepdims=1),
        node("Cast", ["head_class_id"], ["head_class"], to=onnx.TensorProto.FLOAT),
        node("Concat", ["head_boxes", "head_best", "head_class"], ["detections"], axis=2),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("detections", onnx.TensorProto.FLOAT, [1, cells, 6]))
    del graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


# Preprocessing.

def resize_bilinear(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWxC u8/f32 -> height x width x C f32, half-pixel-centre bilinear without antialiasing."""
    src = pixels.astype(np.float32)
    h, w = src.shape[:2]

    def axis(dst: int, size: int):
        pos = (np.arange(dst, dtype=np.float32) + 0.5) * np.float32(size / dst) - 0.5
        pos = np.clip(pos, 0, size - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(height, h)
    x0, x1, fx = axis(width, w)
    fx = fx[None, :, None]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return (top * (1 - fy[:, None, None]) + bottom * fy[:, None, None]).astype(np.float32)


def letterbox(image: Image.Image, size: int, pad: float = 0.0) -> tuple[np.ndarray, float]:
    """RGB image -> size x size x 3 f32 (0..255) at the top-left, padded with `pad`; returns it and the scale."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = size / max(w, h)
    nw, nh = min(size, round(w * scale)), min(size, round(h * scale))
    out = np.full((size, size, 3), pad, np.float32)
    out[:nh, :nw] = resize_bilinear(rgb, nw, nh)
    return out, scale


def detector_input(image: Image.Image, params: dict) -> tuple[np.ndarray, float]:
    pixels, scale = letterbox(image, params["input_size"], pad=params["pad_pixel"])
    pixels = pixels / np.float32(params["pixel_scale"])
    if params["layout"] == "nchw":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None], np.float32), scale


def classifier_input(image: Image.Image) -> np.ndarray:
    pixels, _ = letterbox(image, classifier.INPUT_SIZE, pad=CLASSIFIER_PARAMS["pad_pixel"])
    return np.ascontiguousarray(((pixels - np.float32(127.0)) / np.float32(128.0)).transpose(2, 0, 1)[None], np.float32)


def classify(sess: ort.InferenceSession, image: Image.Image, names: list[str]) -> list[dict]:
    """The classifier's top labels as the runtime reports them: the top_k classes at or above min_score."""
    probabilities = sess.run(None, {"input": classifier_input(image)})[0][0]
    top = np.argsort(-probabilities, kind="stable")[:CLASSIFIER_PARAMS["top_k"]]
    return [{"label": names[i], "class": int(i), "score": float(probabilities[i])}
            for i in top if probabilities[i] >= CLASSIFIER_PARAMS["min_score"]]


def _normalize_bgr(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 RGB 0..255 -> 3xHxW BGR (x / 255 - 0.5) / 0.5."""
    return ((pixels[:, :, ::-1] / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1)


def ocr_det_input(image: Image.Image) -> tuple[np.ndarray, float]:
    pixels, scale = letterbox(image, OCR_DET_SIZE)
    return np.ascontiguousarray(_normalize_bgr(pixels)[None], np.float32), scale


def ocr_rec_input(crop: Image.Image) -> np.ndarray:
    rgb = np.asarray(crop.convert("RGB"))
    h, w = rgb.shape[:2]
    height, width = OCR_REC_SHAPE
    resized_w = min(width, math.ceil(height * w / h))
    out = np.zeros((1, 3, height, width), np.float32)
    out[0, :, :, :resized_w] = _normalize_bgr(resize_bilinear(rgb, resized_w, height))
    return out


# Postprocessing.

def nms(detections: np.ndarray, score_threshold: float, iou_threshold: float) -> list[int]:
    """Greedy NMS over [N, 6] rows (x1, y1, x2, y2, score, class), class-agnostic like human's
    tf.image.nonMaxSuppression; returns the kept row indices by descending score (ties: lower index)."""
    order = sorted((i for i in range(len(detections)) if detections[i, 4] > score_threshold),
                   key=lambda i: (-detections[i, 4], i))
    keep: list[int] = []
    for i in order:
        box = detections[i, :4]
        if all(_iou(box, detections[j, :4]) <= iou_threshold for j in keep):
            keep.append(i)
    return keep


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def detect_objects(sess: ort.InferenceSession, image: Image.Image, labels: list[str], p: dict) -> list[dict]:
    """Full pipeline with the detector of params `p`: letterbox, detector, NMS; boxes in original image pixels."""
    tensor, scale = detector_input(image, p)
    raw = sess.run(None, {"images": tensor})[0][0]
    results = []
    for i in nms(raw, p["score_threshold"], p["iou_threshold"])[:p["max_detections"]]:
        x1, y1, x2, y2 = (float(v) / scale for v in raw[i, :4])
        cls = int(raw[i, 5])
        results.append({"label": labels[cls], "class": cls, "score": round(float(raw[i, 4]), 4),
                        "box": [round(v, 1) for v in (x1, y1, x2, y2)]})
    return results


def db_boxes(prob: np.ndarray, scale: float, image_size: tuple[int, int]) -> list[dict]:
    """A simple DB post-process with axis-aligned boxes (rapidocr fits rotated rectangles and unclips
    with pyclipper; for upright text both give the same boxes up to a pixel or two).

    prob [H, W]: threshold at db_threshold, dilate with a 2x2 kernel, take 8-connected components;
    per component: its bounding box, score = mean probability inside the box (skip below box_threshold
    or with a side under min_box_side), expand every side by area * unclip_ratio / perimeter, map to
    image pixels (divide by scale, round, clip). In reading order: a box whose vertical centre lies
    within the first box of the current line joins that line; lines top to bottom, boxes left to right.
    Boxes of one line that overlap after the expansion are merged (union box, lowest score), so that
    a short word is not cut out together with a stroke of its neighbour.
    """
    p = OCR_DET_PARAMS
    mask = prob > p["db_threshold"]
    dilated = mask.copy()
    dilated[1:, :] |= mask[:-1, :]
    dilated[:, 1:] |= mask[:, :-1]
    dilated[1:, 1:] |= mask[:-1, :-1]
    width, height = image_size
    boxes = []
    for x0, y0, x1, y1 in _components(dilated)[:p["max_candidates"]]:
        w, h = x1 - x0 + 1, y1 - y0 + 1
        if min(w, h) < p["min_box_side"]:
            continue
        score = float(prob[y0:y1 + 1, x0:x1 + 1].mean())
        if score < p["box_threshold"]:
            continue
        d = w * h * p["unclip_ratio"] / (2 * (w + h))
        box = [x0 - d, y0 - d, x1 + 1 + d, y1 + 1 + d]
        box = [int(np.clip(round(v / scale), 0, limit)) for v, limit in zip(box, (width, height, width, height))]
        boxes.append({"box": box, "score": round(score, 4)})
    return _reading_order(boxes)


def _reading_order(boxes: list[dict]) -> list[dict]:
    lines: list[list[dict]] = []
    for b in sorted(boxes, key=lambda b: (b["box"][1] + b["box"][3], b["box"][0])):
        first = lines[-1][0]["box"] if lines else None
        if first and first[1] <= (b["box"][1] + b["box"][3]) / 2 <= first[3]:
            lines[-1].append(b)
        else:
            lines.append([b])
    ordered = []
    for number, line in enumerate(lines):
        merged: list[dict] = []
        for b in sorted(line, key=lambda b: b["box"][0]):
            if merged and b["box"][0] < merged[-1]["box"][2]:
                last = merged[-1]["box"]
                union = [min(last[0], b["box"][0]), min(last[1], b["box"][1]),
                         max(last[2], b["box"][2]), max(last[3], b["box"][3])]
                merged[-1] = {"box": union, "score": min(merged[-1]["score"], b["score"])}
            else:
                merged.append(b)
        ordered += [{**b, "line": number} for b in merged]
    return ordered


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1 inclusive) of the 8-connected components of a boolean mask."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    boxes = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, ys, xs = [start], [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        boxes.append((min(xs), min(ys), max(xs), max(ys)))
    return boxes


def ctc_greedy(probs: np.ndarray, dictionary: list[str]) -> tuple[str, float]:
    """[T, C] -> text: argmax per step, merge repeats, drop blanks (index 0); score = mean max prob kept."""
    best = probs.argmax(axis=1)
    keep = np.ones(len(best), bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != 0
    text = "".join(dictionary[i] for i in best[keep])
    score = float(probs.max(axis=1)[keep].mean()) if keep.any() else 0.0
    return text, score


def joined_text(boxes: list[dict]) -> str:
    """Boxes of one line joined by a space, lines by a newline."""
    lines: dict[int, list[str]] = {}
    for b in boxes:
        lines.setdefault(b["line"], []).append(b["text"])
    return "\n".join(" ".join(words) for _, words in sorted(lines.items()))


def read_text(det: ort.InferenceSession, rec: ort.InferenceSession, image: Image.Image,
              dictionary: list[str]) -> list[dict]:
    """Full OCR pipeline: DB boxes on the letterboxed image, then each crop through the recognizer."""
    tensor, scale = ocr_det_input(image)
    prob = det.run(None, {"x": tensor})[0][0, 0]
    lines = []
    for box in db_boxes(prob, scale, image.size):
        crop = image.crop(tuple(box["box"]))
        text, score = ctc_greedy(rec.run(None, {"x": ocr_rec_input(crop)})[0][0], dictionary)
        lines.append({**box, "text": text, "text_score": round(score, 4)})
    return lines


# Bundle components.

def check_detector(sess: ort.InferenceSession, labels: list[str], params: dict, darknet: Source) -> list[dict]:
    """dog.jpg must give a dog, a bicycle and a car or truck above the score threshold."""
    with Image.open(darknet.unpacked / DARKNET_DATA / "dog.jpg") as image:
        found = detect_objects(sess, image, labels, params)
    names = {d["label"] for d in found}
    if not ({"dog", "bicycle"} <= names and names & {"car", "truck"}):
        raise AssertionError(f"detector sanity check failed on dog.jpg: {found}")
    return found


def build(sources: dict[str, Source], emit) -> None:
    """Writes the vision files through `emit` (prepare.py's writer) after checking them in onnxruntime."""
    stale = [d.output.name for d in tfjs_detectors.DETECTORS.values() if not d.up_to_date()]
    if stale:
        raise SourceError(f"{', '.join(stale)} missing or stale in .cache/build; run prepare.sh (it converts them)")
    human, rapidocr = sources["human"], sources["rapidocr"]
    labels = coco_labels(human)
    license_detector = "MIT (package); weights: no license file upstream"
    detectors = {
        "centernet": ("centernet-mobilenetv3-coco", tfjs_detectors.DETECTORS["centernet"].output.read_bytes(),
                      human, license_detector),
        "nanodet": ("nanodet-m-coco", nanodet_graph(tfjs_detectors.DETECTORS["nanodet"].output.read_bytes()),
                    sources["human-models"], "MIT (package); NanoDet: Apache-2.0 upstream"),
    }
    for variant, (name, graph, source, license) in detectors.items():
        params = DETECTOR_PARAMS[variant]
        found = check_detector(session(graph), labels, params, sources["darknet"])
        print(f"  {variant} on dog.jpg: " + ", ".join(f"{d['label']} {d['score']:.2f}" for d in found), flush=True)
        size = params["input_size"]
        shape = [1, 3, size, size] if params["layout"] == "nchw" else [1, size, size, 3]
        rows = onnx.load_from_string(graph).graph.output[0].type.tensor_type.shape.dim[1].dim_value
        emit(graph, name=name, role="object-detector", variant=variant, file=f"{VISION_DIR}/{variant}.onnx",
             sources=[source.spec], license=license, inputs=[manifest.tensor("images", "f32", shape)],
             outputs=[manifest.tensor("detections", "f32", [1, rows, 6])], params=params)
    emit(("\n".join(labels) + "\n").encode(), name="coco-labels", role="object-labels", variant="any",
         file=_DETECTOR_COMMON["labels"], sources=[human.spec], license=license_detector, inputs=[], outputs=[],
         params={"count": len(labels), "format": "one name per line, line i = class i (0-based)"})

    det = fix_shapes(onnx.load_from_string(rapidocr.read(PPOCR_DET)), (1, 3, OCR_DET_SIZE, OCR_DET_SIZE))
    rec_source = onnx.load_from_string(rapidocr.read(PPOCR_REC))
    rec = fix_shapes(rec_source, (1, 3, *OCR_REC_SHAPE))
    dictionary = ctc_dictionary(rec_source)
    det_out = [d.dim_value for d in det.graph.output[0].type.tensor_type.shape.dim]
    rec_out = [d.dim_value for d in rec.graph.output[0].type.tensor_type.shape.dim]
    if rec_out[2] != len(dictionary) or det_out != [1, 1, OCR_DET_SIZE, OCR_DET_SIZE]:
        raise AssertionError(f"unexpected PP-OCR outputs: det {det_out}, rec {rec_out}, dictionary {len(dictionary)}")

    emit(det.SerializeToString(), name="ppocr-v4-det", role="ocr-detector", variant="f32",
         file=f"{VISION_DIR}/ppocr_det.onnx", sources=[rapidocr.spec], license="Apache-2.0",
         inputs=[manifest.tensor("x", "f32", [1, 3, OCR_DET_SIZE, OCR_DET_SIZE])],
         outputs=[manifest.tensor(det.graph.output[0].name, "f32", det_out)],
         params={**OCR_DET_PARAMS, "output": "text probability per input pixel"})
    emit(rec.SerializeToString(), name="ppocr-v4-rec", role="ocr-recognizer", variant="f32",
         file=f"{VISION_DIR}/ppocr_rec.onnx", sources=[rapidocr.spec], license="Apache-2.0",
         inputs=[manifest.tensor("x", "f32", [1, 3, *OCR_REC_SHAPE])],
         outputs=[manifest.tensor(rec.graph.output[0].name, "f32", rec_out)],
         params={**OCR_REC_PARAMS, "timesteps": rec_out[1], "classes": rec_out[2],
                 "output": "softmax over the dictionary per time step"})
    mobilenet, lite0 = sources["tfjs-mobilenet"], sources["efficientnet-lite0"]
    names = classifier.class_names(mobilenet)
    scene = classifier.build_onnx(classifier.load_legacy_state_dict(lite0.read(classifier.WEIGHTS))).SerializeToString()
    top = classify(session(scene), Image.open(darknet_photo(sources["darknet"], "dog.jpg")), names)
    print("  scene classifier on dog.jpg: " + ", ".join(f"{t['label']} {t['score']:.2f}" for t in top), flush=True)
    if not top or not 151 <= top[0]["class"] <= 268:
        raise AssertionError(f"the scene classifier does not see a dog breed in dog.jpg: {top}")
    emit(scene, name="efficientnet-lite0-imagenet", role="scene-classifier", variant="f32",
         file=f"{VISION_DIR}/efficientnet_lite0.onnx", sources=[lite0.spec], license="Apache-2.0",
         inputs=[manifest.tensor("input", "f32", [1, 3, classifier.INPUT_SIZE, classifier.INPUT_SIZE])],
         outputs=[manifest.tensor("probabilities", "f32", [1, 1000])], params=CLASSIFIER_PARAMS)
    emit(("\n".join(names) + "\n").encode(), name="imagenet-labels", role="scene-labels", variant="any",
         file=CLASSIFIER_PARAMS["labels"], sources=[mobilenet.spec], license="Apache-2.0", inputs=[], outputs=[],
         params={"count": len(names), "format": "one name per line, line i = class i (0-based)"})

    emit(("\n".join(dictionary) + "\n").encode(), name="ppocr-keys", role="ocr-dictionary", variant="any",
         file=OCR_REC_PARAMS["dictionary"], sources=[rapidocr.spec], license="Apache-2.0", inputs=[], outputs=[],
         params={"count": len(dictionary), "blank": 0, "blank_token": BLANK,
                 "format": "UTF-8, split on \\n only, no trimming: line i = class i; line 0 is the CTC blank, "
                           "the last line is a single space"})


def darknet_photo(darknet: Source, name: str) -> Path:
    return darknet.unpacked / DARKNET_DATA / name

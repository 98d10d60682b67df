"""Test references for the vision bundle: photos, rendered text, raw onnxruntime I/O tensors and expected results.

Writes $REPO/.cache/testdata/vision/ (preprocessing as documented in vision.py and the manifest params):
  photos/*.jpg|png     darknet's dog, horses, person, giraffe, eagle, kite; scikit-image's astronaut, coffee, chelsea
  text/*.png           known strings rendered dark on light (Pillow, DejaVu and Liberation fonts)
  text/index.json      [{file, text, font, font_file, size}]
  lines/*.png          long single lines (12, 28 and 40 px, about 250 to 1700 px wide) in sans, serif, bold, mono
                       and condensed fonts, clean and at 28 px degraded (blur, JPEG quality 40, noise, a 1.5 degree
                       rotation) and light on dark; dense paragraphs of six lines
  lines/index.json     [{file, text, font, size, condition, onnxruntime: what rapidocr's dynamic-width recognizer
                       reads in onnxruntime at each box's own width}]
  tensors/*.npy        exact model inputs (f32, after preprocessing) and onnxruntime's raw outputs
  index.json           {tensors: [{role, model, source, crop (recognizer only: x0, y0, x1, y1 of the source
                        image, x1 and y1 exclusive), input, input_name, outputs: [{name, file}]}],
                        detections: {photo: {size: [w, h], scale (letterbox), objects: [{label, class, score,
                        box: [x1, y1, x2, y2] in image pixels}]}},
                        scene_labels: {photo: [{label, class, score}]} (the classifier's top 3 at or above 0.15),
                        ocr: [{file, text, read, exact, without_spaces, boxes: [{box, score, line, text,
                        text_score}]}], timings_ms: {role: {"1": median, "2": median}}}
The detections are the full pipeline (letterbox, detector, class-agnostic NMS at IoU 0.5, score > 0.3);
the OCR results come from the simple DB + CTC pipeline in vision.py, not from rapidocr itself.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

import manifest
import vision
from common import (SOURCES_DIR, VISION_TESTDATA_DIR, digest_of, mark_references, reference_setup,
                    references_current, report_problems, scripts_digest, sha256_file, write_atomic)
from sources import SourceError, ensure_sources

OUT = VISION_TESTDATA_DIR
DARKNET_PHOTOS = ["dog.jpg", "horses.jpg", "person.jpg", "giraffe.jpg", "eagle.jpg", "kite.jpg"]
SKIMAGE_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png"]
FONTS = {
    "DejaVuSans": "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "DejaVuSerif": "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "DejaVuSans-Bold": "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "LiberationSans": "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "LiberationSerif": "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "LiberationMono": "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
}
# Fonts only the long lines use (the short renders keep the six above).
LINE_ONLY_FONTS = {"LiberationSansNarrow": "/usr/share/fonts/truetype/liberation/LiberationSansNarrow-Regular.ttf"}
ALL_FONTS = {**FONTS, **LINE_ONLY_FONTS}
SIZES = [24, 32, 40]
TEXTS = ["EXIT 42", "Lookout 2026", "PUSH TO OPEN", "Platform 9"]
INK, PAPER = (20, 20, 30), (245, 245, 240)
# Multi-line sign for the OCR raw-tensor references (two lines, two fonts).
SIGN = ("sign.png", [("EXIT 42", "LiberationSans", 40), ("Platform 9", "DejaVuSerif", 32)])
# Long lines: wider than 6.7 times their height, which the recognizer's 48x320 input would squeeze.
LONG_LINES = ["The quick brown fox jumps over the lazy dog near the station",
              "Trains to Leeds leave platform 9 every 15 minutes",
              "KEEP THIS DOOR CLOSED AT ALL TIMES"]
# Sans, serif, bold, mono and condensed; the degraded copies are made at the middle size.
LINE_FONTS = ["DejaVuSans", "DejaVuSerif", "DejaVuSans-Bold", "LiberationSans", "LiberationMono", "LiberationSansNarrow"]
LINE_SIZES = [12, 28, 40]
# A dense paragraph (Dickens, public domain): adjacent lines must stay apart.
PARAGRAPH = ["It was the best of times, it was the worst of times,",
             "it was the age of wisdom, it was the age of foolishness,",
             "it was the epoch of belief, it was the epoch of incredulity,",
             "it was the season of Light, it was the season of Darkness,",
             "it was the spring of hope, it was the winter of despair,",
             "we had everything before us, we had nothing before us,"]
PARAGRAPH_FONTS = [("DejaVuSerif", 16), ("LiberationSans", 20), ("LiberationMono", 14)]
DETECTOR_TENSORS = ["dog.jpg", "kite.jpg", "astronaut.png"]
OCR_TENSORS = ["sign.png", "push_to_open.LiberationSans.32.png"]
TIMING_RUNS = 10


def save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    write_atomic(path, buffer.getvalue())


def slug(text: str) -> str:
    return "_".join(text.lower().split())


def render(lines: list[tuple[str, str, int]]) -> Image.Image:
    """Lines of (text, font, size) dark on light, left-aligned, with a margin of half the largest size."""
    fonts = [ImageFont.truetype(ALL_FONTS[font], size) for _, font, size in lines]
    boxes = [f.getbbox(text) for (text, _, _), f in zip(lines, fonts)]
    margin = max(size for _, _, size in lines) // 2
    width = max(r - l for l, _, r, _ in boxes) + 2 * margin
    height = sum(b - t for _, t, _, b in boxes) + margin * (len(lines) + 1)
    image = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(image)
    y = margin
    for (text, _, _), font, (l, t, _, b) in zip(lines, fonts, boxes):
        draw.text((margin - l, y - t), text, font=font, fill=INK)
        y += b - t + margin
    return image


def paragraph(lines: list[str], font: str, size: int) -> Image.Image:
    """Lines set solid as in a book (baseline to baseline 1.2 times the size), dark on light, margin one size."""
    face = ImageFont.truetype(ALL_FONTS[font], size)
    pitch = round(1.2 * size)
    width = max(face.getbbox(line)[2] for line in lines) + 2 * size
    image = Image.new("RGB", (width, pitch * len(lines) + 2 * size), PAPER)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((size, size + i * pitch), line, font=face, fill=INK)
    return image


def degraded(image: Image.Image, condition: str) -> Image.Image:
    """`image` as a camera might give it: blurred, JPEG-compressed at quality 40, noisy, slightly rotated, or
    light on dark; unchanged when `condition` is "clean"."""
    from PIL import ImageFilter, ImageOps
    if condition == "blur":
        return image.filter(ImageFilter.GaussianBlur(1.0))
    if condition == "jpeg40":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=40)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if condition == "noise":
        pixels = np.asarray(image).astype(np.float32)
        noise = np.random.default_rng(7).normal(0.0, 12.0, pixels.shape)
        return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    if condition == "rotated":
        return image.rotate(1.5, resample=Image.BICUBIC, expand=True, fillcolor=PAPER)
    if condition == "inverted":
        return ImageOps.invert(image)
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def median_ms(run, feed: dict) -> float:
    run(feed)
    times = []
    for _ in range(TIMING_RUNS):
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 1)


def main() -> int:
    start = time.perf_counter()
    setup = reference_setup(__doc__)
    if setup is None:
        return 0
    args, manifest_path = setup
    missing = [path for path in ALL_FONTS.values() if not Path(path).is_file()]
    if missing:
        print(f"error: missing fonts {missing} (Debian: fonts-dejavu-core fonts-liberation)", file=sys.stderr)
        return 1
    try:
        sources = ensure_sources(SOURCES_DIR, {"darknet", "scikit-image", "rapidocr"})
    except (SourceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    listed = manifest.load(manifest_path)["component"]
    # The first component of a role is the one the runtime loads by default; every detector variant is checked.
    components = {}
    for c in listed:
        components.setdefault(c["role"], c)
    detectors = {c["variant"]: c for c in listed if c["role"] == "object-detector"}
    roles = ("object-detector", "object-labels", "ocr-detector", "ocr-recognizer", "ocr-dictionary", "scene-classifier",
             "scene-labels")
    if any(role not in components for role in roles) or not set(detectors) <= set(vision.DETECTOR_PARAMS):
        print(f"error: {manifest_path} lacks the vision components or has a detector not in vision.py",
              file=sys.stderr)
        return 1
    digest = digest_of((scripts_digest(), *(components[r]["sha256"] for r in roles),
                        *(d["sha256"] for d in detectors.values()),
                        *sorted(s.sha256 for s in sources.values()), *(sha256_file(Path(f)) for f in ALL_FONTS.values())))
    if references_current(OUT, digest, args.force):
        print(f"vision test references up to date: {OUT} ({time.perf_counter() - start:.1f} s)")
        return 0
    print(f"writing vision test references to {OUT}", flush=True)

    # Photos.
    for name in DARKNET_PHOTOS:
        write_atomic(OUT / "photos" / name, vision.darknet_photo(sources["darknet"], name).read_bytes())
    for name in SKIMAGE_PHOTOS:
        write_atomic(OUT / "photos" / name, sources["scikit-image"].read(f"skimage/data/{name}"))

    # Rendered text.
    rendered = []
    for text in TEXTS:
        for font in FONTS:
            for size in SIZES:
                name = f"{slug(text)}.{font}.{size}.png"
                write_atomic(OUT / "text" / name, png(render([(text, font, size)])))
                rendered.append({"file": name, "text": text, "font": font, "font_file": FONTS[font], "size": size})
    write_atomic(OUT / "text" / SIGN[0], png(render(SIGN[1])))
    rendered.append({"file": SIGN[0], "text": "\n".join(t for t, _, _ in SIGN[1]),
                     "font": ",".join(f for _, f, _ in SIGN[1]), "font_file": "",
                     "size": max(s for _, _, s in SIGN[1])})
    write_atomic(OUT / "text" / "index.json", (json.dumps(rendered, indent=2) + "\n").encode())
    lines = []
    for text in LONG_LINES:
        for font in LINE_FONTS:
            for size in LINE_SIZES:
                conditions = ["clean", "blur", "jpeg40", "noise", "rotated", "inverted"] if size == LINE_SIZES[1] else ["clean"]
                for condition in conditions:
                    name = f"{slug(text)[:24]}.{font}.{size}.{condition}.png"
                    write_atomic(OUT / "lines" / name, png(degraded(render([(text, font, size)]), condition)))
                    lines.append({"file": name, "text": text, "font": font, "size": size, "condition": condition})
    for font, size in PARAGRAPH_FONTS:
        name = f"paragraph.{font}.{size}.clean.png"
        write_atomic(OUT / "lines" / name, png(paragraph(PARAGRAPH, font, size)))
        lines.append({"file": name, "text": "\n".join(PARAGRAPH), "font": font, "size": size, "condition": "clean"})

    path = {role: args.bundle / components[role]["file"] for role in roles}
    labels = path["object-labels"].read_text().splitlines()
    dictionary = path["ocr-dictionary"].read_text(encoding="utf-8").split("\n")[:-1]
    scene_names = path["scene-labels"].read_text().splitlines()
    sessions = {threads: {role: vision.session(path[role], threads)
                          for role in ("ocr-detector", "ocr-recognizer", "scene-classifier")}
                for threads in (1, 2)}
    for threads in (1, 2):
        sessions[threads].update({f"object-detector:{variant}": vision.session(args.bundle / c["file"], threads)
                                  for variant, c in detectors.items()})
    one = sessions[1]
    problems: list[str] = []
    tensors = []

    def reference(role: str, source: str, stem: str, tensor: np.ndarray, crop=None, variant=None) -> list[np.ndarray]:
        key = f"{role}:{variant}" if variant else role
        sess = one[key]
        input_name = sess.get_inputs()[0].name
        outputs = sess.run(None, {input_name: tensor})
        save_npy(OUT / "tensors" / f"{stem}.input.npy", tensor)
        component = detectors[variant] if variant else components[role]
        entry = {"role": role, "variant": component["variant"], "session": key, "model": component["file"],
                 "source": source, "input": f"tensors/{stem}.input.npy", "input_name": input_name, "outputs": []}
        if crop is not None:
            entry["crop"] = crop
        for meta, value in zip(sess.get_outputs(), outputs):
            save_npy(OUT / "tensors" / f"{stem}.output.npy", value)
            entry["outputs"].append({"name": meta.name, "file": f"tensors/{stem}.output.npy"})
        tensors.append(entry)
        return outputs

    # Detectors and scene classifier: full pipeline on every photo, raw tensors for a few.
    detections, scene_labels = {variant: {} for variant in detectors}, {}
    photos = {}
    for name in DARKNET_PHOTOS + SKIMAGE_PHOTOS:
        with Image.open(OUT / "photos" / name) as image:
            image.load()
        photos[name] = image
        if name in DETECTOR_TENSORS:
            reference("scene-classifier", f"photos/{name}", f"classifier.{Path(name).stem}", vision.classifier_input(image))
        scene_labels[name] = vision.classify(one["scene-classifier"], image, scene_names)
    for variant in detectors:
        params = vision.DETECTOR_PARAMS[variant]
        print(f"\nobject detection, {variant} (letterbox {params['input_size']}, NMS IoU {params['iou_threshold']}, "
              f"score > {params['score_threshold']}) | scene labels (letterbox 224):")
        for name, image in photos.items():
            tensor, scale = vision.detector_input(image, params)
            if name in DETECTOR_TENSORS:
                reference("object-detector", f"photos/{name}", f"detector.{variant}.{Path(name).stem}", tensor,
                          variant=variant)
            objects = vision.detect_objects(one[f"object-detector:{variant}"], image, labels, params)
            detections[variant][name] = {"size": list(image.size), "scale": scale, "objects": objects}
            counts: dict[str, int] = {}
            for o in objects:
                counts[o["label"]] = counts.get(o["label"], 0) + 1
            print(f"  {name:<14} " + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items())
                  + " | " + ", ".join(f"{t['label']} {t['score']:.2f}" for t in scene_labels[name]))
        dog = {o["label"] for o in detections[variant]["dog.jpg"]["objects"]}
        if not ({"dog", "bicycle"} <= dog and dog & {"car", "truck"}):
            problems.append(f"{variant} on dog.jpg: expected dog, bicycle and car or truck, got {sorted(dog)}")
        kite = [o["label"] for o in detections[variant]["kite.jpg"]["objects"]]
        if kite.count("kite") < 2 or kite.count("person") < 2:
            problems.append(f"{variant} on kite.jpg: expected several kites and persons, got {kite}")
    if [t["label"] for t in scene_labels["coffee.png"][:1]] != ["espresso"]:
        problems.append(f"coffee.png: expected the scene label espresso, got {scene_labels['coffee.png']}")

    # OCR: full pipeline on every rendered image, raw tensors for a few.
    ocr = []
    print("\nOCR (DB boxes + CTC, exact / ignoring spaces):")
    for item in rendered:
        with Image.open(OUT / "text" / item["file"]) as image:
            image.load()
        stem = Path(item["file"]).stem.replace(".", "_")
        if item["file"] in OCR_TENSORS:
            tensor, scale = vision.ocr_det_input(image)
            prob = reference("ocr-detector", f"text/{item['file']}", f"ocr_det.{stem}", tensor)[0][0, 0]
            for i, box in enumerate(vision.db_boxes(prob, scale, image.size)):
                crop = vision.ocr_rec_input(image.crop(tuple(box["box"])))
                reference("ocr-recognizer", f"text/{item['file']}", f"ocr_rec.{stem}.{i}", crop, box["box"])
        boxes = vision.read_text(one["ocr-detector"], one["ocr-recognizer"], image, dictionary)
        read = vision.joined_text(boxes)
        exact = read == item["text"]
        loose = read.replace(" ", "") == item["text"].replace(" ", "")
        ocr.append({"file": item["file"], "text": item["text"], "read": read, "exact": exact,
                    "without_spaces": loose, "boxes": boxes})
        if not exact:
            mark = "spaces" if loose else "WRONG"
            print(f"  {mark:<6} {item['file']:<40} read {read!r}")
    exact_count = sum(o["exact"] for o in ocr)
    loose_count = sum(o["without_spaces"] for o in ocr)
    print(f"  {exact_count}/{len(ocr)} exact, {loose_count}/{len(ocr)} equal ignoring spaces")
    wrong = [o["file"] for o in ocr if not o["without_spaces"]]
    if wrong:
        problems.append(f"OCR misread (beyond spaces): {', '.join(wrong)}")

    # Long lines and paragraphs: onnxruntime runs rapidocr's own recognizer, whose width is dynamic, on each box
    # of the same DB pipeline at the box's own width (as rapidocr batches lines), for comparison.
    native = vision.session(onnx.load_from_string(sources["rapidocr"].read(vision.PPOCR_REC)))
    for item in lines:
        image = Image.open(OUT / "lines" / item["file"]).convert("RGB")
        tensor, scale = vision.ocr_det_input(image)
        boxes = vision.db_boxes(one["ocr-detector"].run(None, {"x": tensor})[0][0, 0], scale, image.size)
        for box in boxes:
            crop = np.asarray(image.crop(tuple(box["box"])))
            width = math.ceil(48 * crop.shape[1] / crop.shape[0])
            pixels = vision._normalize_bgr(vision.resize_bilinear(crop, width, 48))[None].astype(np.float32)
            box["text"] = vision.ctc_greedy(native.run(None, {"x": pixels})[0][0], dictionary)[0]
        item["onnxruntime"] = vision.joined_text(boxes)
    write_atomic(OUT / "lines" / "index.json", (json.dumps(lines, indent=2) + "\n").encode())

    # onnxruntime timings.
    timings = {}
    print(f"\nonnxruntime inference, median of {TIMING_RUNS} (ms):")
    for entry in {t["session"]: t for t in tensors}.values():
        feed = {entry["input_name"]: np.load(OUT / entry["input"])}
        timings[entry["session"]] = {str(n): median_ms(lambda f, s=sessions[n][entry["session"]]: s.run(None, f), feed)
                                     for n in (1, 2)}
        t = timings[entry["session"]]
        print(f"  {entry['session']:<26} 1 thread {t['1']:7.1f}   2 threads {t['2']:7.1f}")

    index = {"tensors": tensors, "detections": detections, "scene_labels": scene_labels, "ocr": ocr, "timings_ms": timings,
             "dictionary_size": len(dictionary)}
    write_atomic(OUT / "index.json", (json.dumps(index, indent=1, ensure_ascii=False) + "\n").encode())
    report_problems(problems)
    mark_references(OUT, digest)
    print(f"vision test references done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

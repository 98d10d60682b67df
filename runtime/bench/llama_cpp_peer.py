"""Times llama.cpp (llama-cpp-python) on the same SmolLM2 GGUF as Lookout's bundle, for `lookout bench --suite llm`.

Prints one JSON object: load time, median prefill and decode times and rates, time to first token, the greedy
tokens, and this process's peak RSS. The prompt arrives as token ids (Lookout's tokenizer output) so both engines
see the same sequence; decoding is greedy for a fixed number of tokens unless the end token comes first.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--eos", type=int, default=2)
    args = parser.parse_args()
    prompt = [int(t) for t in args.prompt_ids.split(",")]

    start = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=args.context, n_threads=args.threads, n_threads_batch=args.threads,
                n_batch=512, verbose=False, logits_all=False)
    load_ms = (time.perf_counter() - start) * 1e3

    runs = []
    tokens: list[int] = []
    for _ in range(args.repeats):
        llm.reset()
        tokens = []
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - start
        first_token = None
        steps = 0
        while len(tokens) < args.max_tokens:
            token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))
            first_token = first_token or time.perf_counter() - start
            if token == args.eos:
                break
            tokens.append(token)
            if len(tokens) == args.max_tokens:
                break
            llm.eval([token])
            steps += 1
        total = time.perf_counter() - start
        runs.append((prefill, total - prefill, first_token or total, steps))

    def med(i: int) -> float:
        return statistics.median(r[i] for r in runs)

    print(json.dumps({
        "engine": "llama.cpp",
        "load_ms": load_ms,
        "prompt_tokens": len(prompt),
        "tokens": tokens,
        "prefill_ms": med(0) * 1e3,
        "decode_ms": med(1) * 1e3,
        "first_token_ms": med(2) * 1e3,
        "prefill_tokens_per_s": len(prompt) / med(0),
        "decode_tokens_per_s": statistics.median(r[3] / r[1] for r in runs if r[1] > 0) if any(r[1] > 0 for r in runs) else 0.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()

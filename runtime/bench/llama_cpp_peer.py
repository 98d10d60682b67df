"""Runs llama.cpp (llama-cpp-python) on the same SmolLM2 GGUF as Lookout's bundle, for `lookout bench`.

Timing (`--suite llm`): prints one JSON object: load time, median prefill and decode times and rates, time to
first token, the greedy tokens, and this process's peak RSS. The prompt arrives as token ids (Lookout's tokenizer
output) so both engines see the same sequence; decoding is greedy for a fixed number of tokens unless the end
token comes first.

Serving (`--serve`, the decoder of an end-to-end suite's llama.cpp variant): prints {"load_ms": ...} once loaded,
then answers each JSON line on stdin, {"prompt": [ids], "max_tokens": n, "stop": [ids]}, with one JSON line:
the greedy tokens (a stop token ends them and is not included), "finish" ("stop" or "length") and the timings.
A line {"stats": true} gets {"peak_rss_mib": ...}. Ends at the end of its input.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama


def greedy(llm: Llama, prompt: list[int], max_tokens: int, stop: set[int]) -> dict:
    """Prefill, then the most likely token until a stop token or `max_tokens`; seconds for each phase."""
    llm.reset()
    tokens: list[int] = []
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    first_token = None
    steps = 0
    finish = "length"
    while len(tokens) < max_tokens:
        token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))
        first_token = first_token or time.perf_counter() - start
        if token in stop:
            finish = "stop"
            break
        tokens.append(token)
        if len(tokens) == max_tokens:
            break
        llm.eval([token])
        steps += 1
    total = time.perf_counter() - start
    return {"tokens": tokens, "finish": finish, "prefill_s": prefill, "decode_s": total - prefill,
            "first_token_s": first_token or total, "steps": steps}


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def serve(llm: Llama, load_ms: float) -> None:
    print(json.dumps({"load_ms": load_ms}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("stats"):
            print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)
            continue
        run = greedy(llm, [int(t) for t in request["prompt"]], int(request["max_tokens"]),
                     {int(t) for t in request["stop"]})
        print(json.dumps({"tokens": run["tokens"], "finish": run["finish"], "prefill_ms": run["prefill_s"] * 1e3,
                          "decode_ms": run["decode_s"] * 1e3, "first_token_ms": run["first_token_s"] * 1e3,
                          "decode_steps": run["steps"]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--serve", action="store_true", help="answer generation requests on stdin")
    parser.add_argument("--prompt-ids", help="comma-separated token ids (timing)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--eos", type=int, default=2)
    args = parser.parse_args()
    if not args.serve and not args.prompt_ids:
        parser.error("give --prompt-ids, or --serve")

    start = time.perf_counter()
    llm = Llama(model_path=args.gguf, n_ctx=args.context, n_threads=args.threads, n_threads_batch=args.threads,
                n_batch=512, verbose=False, logits_all=False)
    load_ms = (time.perf_counter() - start) * 1e3
    if args.serve:
        serve(llm, load_ms)
        return

    prompt = [int(t) for t in args.prompt_ids.split(",")]
    runs = [greedy(llm, prompt, args.max_tokens, {args.eos}) for _ in range(args.repeats)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    decoding = [r for r in runs if r["decode_s"] > 0]
    print(json.dumps({
        "engine": "llama.cpp",
        "load_ms": load_ms,
        "prompt_tokens": len(prompt),
        "tokens": runs[-1]["tokens"],
        "prefill_ms": med("prefill_s") * 1e3,
        "decode_ms": med("decode_s") * 1e3,
        "first_token_ms": med("first_token_s") * 1e3,
        "prefill_tokens_per_s": len(prompt) / med("prefill_s"),
        "decode_tokens_per_s": statistics.median(r["steps"] / r["decode_s"] for r in decoding) if decoding else 0.0,
        "peak_rss_mib": peak_rss_mib(),
    }))


if __name__ == "__main__":
    main()

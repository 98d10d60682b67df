"""Test references for the language decoder: tokenizer ids and greedy generations from independent implementations.

Writes $REPO/.cache/testdata/llm/index.json:
  tokenizer: [{text, ids}]   ids from Hugging Face `tokenizers` built from the GGUF's vocabulary and merges
                              (byte-level BPE, digits split one by one, control tokens special)
  chat: {messages, prompt}   the GGUF's chat template rendered by Jinja2
  generations: [{variant, question, prompt_ids, tokens, text, first_logits: {ids, values}}]
                              greedy decoding by onnxruntime on the bundle's f32 decoder graph, the GGUF's weights
                              dequantized exactly (KV cache fed back), with the 20 largest logits after the prompt;
                              every variant the runtime loads is held to these
"""

from __future__ import annotations

import json
import sys
import time

import jinja2
import numpy as np
import onnxruntime as ort
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

import manifest
from common import (CACHE, digest_of, mark_references, reference_setup, references_current,
                    scripts_digest, write_atomic)

OUT = CACHE / "testdata" / "llm"
TOKENIZER_TEXTS = [
    "Hello world",
    "What do you see?",
    "How many people are there?",
    "There are 12 people and 3 dogs in room 101.",
    "it's  two\n\nlines, isn't it? ",
    "Café naïve – “quotes” and emoji 🙂 ok",
    "<|im_start|>user\nIs the door open?<|im_end|>\n",
    "   leading spaces and trailing tabs\t\t",
    "x=3.14159; y=-2e10 (approx.)",
]
QUESTIONS = [
    "What is the capital of France?",
    "Objects in the photo: 1 person, 1 dog, 1 horse. Describe the photo in one sentence.",
]
MAX_NEW = 24


def hf_tokenizer(reader: GGUFReader) -> Tokenizer:
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                     merges=[tuple(m.split(" ", 1)) for m in merges]))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                  for i, kind in enumerate(types) if kind == 3])
    return tokenizer


def greedy(path, prompt_ids: list[int], params: dict, eos: int) -> tuple[list[int], np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    empty = np.zeros((1, params["n_kv_heads"], 0, params["head_dim"]), np.float32)
    past = {f"past_key_values.{n}.{kv}": empty for n in range(params["n_layers"]) for kv in ("key", "value")}
    ids, position, generated, first = prompt_ids, 0, [], None
    while len(generated) < MAX_NEW:
        feed = {"input_ids": np.array([ids], np.int64),
                "attention_mask": np.ones((1, position + len(ids)), np.int64),
                "position_ids": np.arange(position, position + len(ids), dtype=np.int64)[None], **past}
        out = dict(zip(names, session.run(None, feed)))
        past = {name.replace("present", "past_key_values"): v for name, v in out.items() if name != "logits"}
        logits = out["logits"].reshape(-1)
        first = logits if first is None else first
        position += len(ids)
        token = int(logits.argmax())
        if token == eos:
            break
        generated.append(token)
        ids = [token]
    return generated, first


def main() -> int:
    start = time.perf_counter()
    setup = reference_setup(__doc__)
    if setup is None:
        return 0
    args, manifest_path = setup
    components = manifest.load(manifest_path)["component"]
    decoders_ = [c for c in components if c["role"] == "llm-decoder" and c["variant"] == "f32"]
    gguf = next((c for c in components if c["role"] == "llm-gguf"), None)
    if not decoders_ or gguf is None:
        print(f"error: {manifest_path} lacks the language decoder", file=sys.stderr)
        return 1
    digest = digest_of((scripts_digest(), gguf["sha256"], *(c["sha256"] for c in decoders_)))
    if references_current(OUT, digest, args.force):
        print(f"language test references up to date: {OUT} ({time.perf_counter() - start:.1f} s)")
        return 0
    print(f"writing language test references to {OUT}", flush=True)

    reader = GGUFReader(args.bundle / gguf["file"])
    tokenizer = hf_tokenizer(reader)
    eos = int(reader.fields["tokenizer.ggml.eos_token_id"].contents())
    template = jinja2.Environment().from_string(reader.fields["tokenizer.chat_template"].contents())
    cases = [{"text": text, "ids": tokenizer.encode(text).ids} for text in TOKENIZER_TEXTS]
    for case in cases:
        if tokenizer.decode(case["ids"], skip_special_tokens=False) != case["text"]:
            raise AssertionError(f"tokenizer does not round-trip {case['text']!r}")

    def chat(question: str) -> str:
        return template.render(messages=[{"role": "user", "content": question}], add_generation_prompt=True)

    generations = []
    for question in QUESTIONS:
        prompt = chat(question)
        prompt_ids = tokenizer.encode(prompt).ids
        for component in decoders_:
            t0 = time.perf_counter()
            tokens, first = greedy(args.bundle / component["file"], prompt_ids, component["params"], eos)
            top = np.argsort(-first)[:20]
            text = tokenizer.decode(tokens)
            logits_file = f"logits-{len(generations)}.f32"
            write_atomic(OUT / logits_file, first.astype("<f4").tobytes())
            generations.append({"variant": component["variant"], "question": question, "prompt_ids": prompt_ids,
                                "tokens": tokens, "text": text, "logits_file": logits_file,
                                "first_logits": {"ids": top.tolist(), "values": first[top].tolist()}})
            print(f"  {component['variant']:<4} {time.perf_counter() - t0:5.1f} s  {question[:40]!r} -> {text!r}")
    index = {"tokenizer": cases,
             "chat": {"messages": [{"role": "user", "content": QUESTIONS[0]}], "prompt": chat(QUESTIONS[0])},
             "generations": generations}
    write_atomic(OUT / "index.json", (json.dumps(index, indent=1, ensure_ascii=False) + "\n").encode())
    mark_references(OUT, digest)
    print(f"language test references done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

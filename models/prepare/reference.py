"""Test references for the speech bundle: clips, log-mels and onnxruntime greedy Whisper transcripts.

Writes $REPO/.cache/testdata/speech/:
  *.wav            16 kHz mono 16-bit clips (espeak-ng + sox, and beckett.wav)
  index.json       [{file, text, duration_s, sample_rate, decode}], where decode is null for clips
                   over 30 s and otherwise maps each variant (f32, int8) to {prompt, tokens (generated,
                   without prompt and <|endoftext|>), eot (stopped on <|endoftext|>), text,
                   first_logits (logits[0:8] of the first step), first_argmax, matches_text,
                   uncached_tokens_equal, encoder_sha256, decoder_sha256, weights}. The prompt goes
                   in as one decoder call (T=4, empty cache), then one token per call. A graph whose
                   operators onnxruntime lacks (int8's Q8_0 blocks) is replaced by its exact
                   reference: the same graph with plain f32 MatMuls over exactly the values its
                   blocks hold (`weights` names the forms run).
  vad.json         {clip: [speech probability per 512-sample chunk]} from Silero VAD in onnxruntime
  clip_30s.wav     the first 30 s of the long clip (for `lookout bench`; not in index.json)
  beckett.mel.npy  f32 [80, 3000] log-mel of beckett.wav (openai-whisper's recipe)
  mel_80.npy       f32 [80, 201] mel filterbank from openai-whisper's mel_filters.npz
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import audio
import manifest
import whisper_onnx
from common import (SOURCES_DIR, TESTDATA_DIR, digest_of, mark_references, reference_setup, references_current,
                    report_problems, scripts_digest, write_atomic)
from sources import SourceError, ensure_sources
from tokenizer import Tokenizer

PROMPT = [50258, 50259, 50359, 50363]  # <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>
EOT = 50257
MAX_TOKENS = 224
VARIANTS = ("f32", "int8")

UTTERANCES = [
    ("what_do_you_see.wav", "what do you see"),
    ("is_the_door_open.wav", "is the door open"),
    ("how_many_people.wav", "how many people are outside"),
    ("kitchen_light_weather.wav", "turn on the kitchen light and tell me the weather for tomorrow"),
]
LONG_CLIP = "long_sentences.wav"
BENCH_CLIP = "clip_30s.wav"  # the first 30 s of LONG_CLIP: one full window, for `lookout bench`
LONG_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please remind me to water the plants on Sunday morning.",
    "There is a red car parked in front of the garage.",
    "The children are playing football in the garden.",
    "Can you tell me what time the bakery opens tomorrow?",
    "It looks like it is going to rain this afternoon.",
    "Somebody left the back door of the house open.",
    "Turn off all the lights when everyone has gone to bed.",
    "The package was delivered to the neighbor across the street.",
]
BECKETT = ("beckett.wav", "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def tool_versions() -> str:
    return run("espeak-ng", "--version").strip() + " / " + run("sox", "--version").strip()


def synthesize(text: str, out: Path, tmp: Path) -> None:
    """espeak-ng (en-us, 150 wpm) resampled by sox to 16 kHz mono 16-bit, without dither."""
    raw = tmp / (out.stem + ".espeak.wav")
    run("espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text)
    run("sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out))


def long_clip(sentences: list[str], out: Path, tmp: Path) -> None:
    """The sentences one after another, separated by 1 s of digital silence (no dither, so every run writes the
    same file)."""
    silence = tmp / "silence.wav"
    run("sox", "-D", "-n", "-r", "16000", "-c", "1", "-b", "16", str(silence), "trim", "0", "1")
    parts = []
    for i, sentence in enumerate(sentences):
        part = tmp / f"sentence_{i}.wav"
        synthesize(sentence, part, tmp)
        parts += [str(part), str(silence)]
    run("sox", *parts[:-1], str(out))


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


class Whisper:
    """Greedy Whisper decoding with ONNX graphs in onnxruntime (one thread)."""

    def __init__(self, encoder: Path | bytes, decoder: Path | bytes, params: dict, cross_names: list[str]):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.encoder, self.decoder = (
            ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                 providers=["CPUExecutionProvider"])
            for graph in (encoder, decoder))
        self.cross_names = cross_names
        cache = self.decoder.get_inputs()[1].shape  # [L, 1, H, past, D]
        self.empty = np.zeros((cache[0], 1, cache[2], 0, cache[4]), np.float32)
        self.suppress = np.array(params.get("suppress_ids", []), np.int64)
        self.suppress_begin = np.array(params.get("suppress_ids_begin", []), np.int64)

    def pick(self, logits: np.ndarray, first: bool) -> tuple[int, int, float]:
        """The runtime's greedy rule: no suppressed ids (and no blank or end first), no special tokens but the end.

        Returns the pick, the runner-up and the logit gap between them: where the gap is a rounding error wide,
        another CPU's summation order may pick the runner-up."""
        logits = logits.copy()
        logits[self.suppress] = -np.inf
        if first:
            logits[self.suppress_begin] = -np.inf
        logits[EOT + 1:] = -np.inf
        runner_up, best = np.argpartition(logits, -2)[-2:]
        if logits[runner_up] > logits[best]:
            best, runner_up = runner_up, best
        return int(best), int(runner_up), float(logits[best] - logits[runner_up])

    def encode(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.cross_names, self.encoder.run(None, {"mel": mel[None]})))

    def _step(self, tokens, self_k, self_v, cross):
        return self.decoder.run(None, {"tokens": np.array([tokens], np.int64), "self_k": self_k, "self_v": self_v,
                                       **cross})

    def greedy(self, cross) -> tuple[list[int], bool, np.ndarray, list[tuple[int, float]], list[float]]:
        """KV-cache decoding: the prompt first, then one token per call.

        Returns generated tokens, whether <|endoftext|> ended them, the first step's logits, each step's
        runner-up and gap (see `pick`; one more than the tokens where the end was picked) and the time of each
        single-token step.
        """
        tokens, runners_up, step_times = [], [], []
        logits, self_k, self_v = self._step(PROMPT, self.empty, self.empty, cross)
        first = logits[0]
        while len(tokens) < MAX_TOKENS:
            token, runner_up, gap = self.pick(logits[0], not tokens)
            runners_up.append((runner_up, gap))
            if token == EOT:
                return tokens, True, first, runners_up, step_times
            tokens.append(token)
            start = time.perf_counter()
            logits, self_k, self_v = self._step([token], self_k, self_v, cross)
            step_times.append(time.perf_counter() - start)
        return tokens, False, first, runners_up, step_times

    def greedy_uncached(self, cross, limit: int) -> list[int]:
        """The same greedy search recomputing the whole prefix (empty cache) at every step."""
        tokens = []
        while len(tokens) < limit:
            logits, _, _ = self._step(PROMPT + tokens, self.empty, self.empty, cross)
            token = self.pick(logits[0], not tokens)[0]
            if token == EOT:
                break
            tokens.append(token)
        return tokens


def vad_probabilities(model: Path, params: dict, clip: Path) -> list[float]:
    """Silero's speech probability per chunk in onnxruntime: each call sees the previous call's last
    `context` samples before its `chunk` new ones (zeros at the start, the last chunk zero-padded)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    chunk, context = params["chunk"], params["context"]
    samples, _ = audio.read_wav(clip)
    state = np.zeros((2, 1, params["state_size"]), np.float32)
    window = np.zeros(context + chunk, np.float32)
    probs = []
    for start in range(0, len(samples), chunk):
        piece = samples[start:start + chunk]
        window[:context] = window[chunk:]
        window[context:] = 0.0
        window[context:context + len(piece)] = piece
        out, state = session.run(None, {"input": window[None], "state": state})
        probs.append(round(float(out.reshape(-1)[0]), 6))
    return probs


def save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


def main() -> int:
    start = time.perf_counter()
    setup = reference_setup(__doc__)
    if setup is None:
        return 0
    args, manifest_path = setup
    try:
        sources = ensure_sources(SOURCES_DIR)
    except (SourceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    # Only the speech components count: a vision-only change to the bundle leaves these references valid.
    components = {(c["role"], c["variant"]): c for c in manifest.load(manifest_path)["component"]}
    speech = sorted(c["sha256"] for (role, _), c in components.items() if role.startswith("asr-") or role == "vad")
    digest = digest_of((scripts_digest(), tool_versions(), *speech, *sorted(s.sha256 for s in sources.values())))
    if references_current(TESTDATA_DIR, digest, args.force):
        print(f"test references up to date: {TESTDATA_DIR} ({time.perf_counter() - start:.1f} s)")
        return 0
    TESTDATA_DIR.mkdir(parents=True, exist_ok=True)
    print(f"writing test references to {TESTDATA_DIR}", flush=True)

    # Clips.
    clips = [*UTTERANCES, BECKETT, (LONG_CLIP, " ".join(LONG_SENTENCES))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, text in UTTERANCES:
            synthesize(text, tmp / name, tmp)
        long_clip(LONG_SENTENCES, tmp / LONG_CLIP, tmp)
        run("sox", str(tmp / LONG_CLIP), str(tmp / BENCH_CLIP), "trim", "0", "30")
        for name, _ in [*UTTERANCES, (LONG_CLIP, ""), (BENCH_CLIP, "")]:
            write_atomic(TESTDATA_DIR / name, (tmp / name).read_bytes())
    write_atomic(TESTDATA_DIR / BECKETT[0], sources["moonshine-onnx"].read("moonshine_onnx/assets/beckett.wav"))

    npz = sources["openai-whisper"].read("openai_whisper-20250625/whisper/assets/mel_filters.npz")
    filters = np.load(io.BytesIO(npz))["mel_80"].astype(np.float32)
    save_npy(TESTDATA_DIR / "mel_80.npy", filters)

    # Greedy transcripts per variant.
    tokenizer = Tokenizer(args.bundle / components[("asr-tokenizer", "any")]["file"])
    entries, problems, step_times = [], [], {v: [] for v in VARIANTS}
    models = {}
    dims, weights = whisper_onnx.from_ct2(whisper_onnx.load_ct2(sources))
    for variant in VARIANTS:
        enc, dec = components[("asr-encoder", variant)], components[("asr-decoder", variant)]
        graphs = []
        for component, build in ((enc, whisper_onnx.build_encoder), (dec, whisper_onnx.build_decoder)):
            exact = whisper_onnx.EXACT_REFERENCE.get(component["params"]["weights"])
            graphs.append(build(dims, weights, exact).SerializeToString() if exact else args.bundle / component["file"])
        models[variant] = (Whisper(*graphs, dec["params"], whisper_onnx.cross_names(dims)), enc, dec)

    for name, text in clips:
        samples, rate = audio.read_wav(TESTDATA_DIR / name)
        if rate != audio.SAMPLE_RATE:
            raise ValueError(f"{name}: expected {audio.SAMPLE_RATE} Hz, got {rate}")
        duration = len(samples) / rate
        entry = {"file": name, "text": text, "duration_s": round(duration, 3), "sample_rate": rate, "decode": None}
        entries.append(entry)
        print(f"\n{name} ({duration:.2f} s): {text!r}")
        if duration > audio.CHUNK_SECONDS:
            print("  longer than 30 s: no single-window transcript")
            continue
        mel = audio.log_mel(samples, filters)
        if name == BECKETT[0]:
            save_npy(TESTDATA_DIR / "beckett.mel.npy", mel)
        entry["decode"] = {}
        for variant in VARIANTS:
            whisper, enc, dec = models[variant]
            t0 = time.perf_counter()
            cross = whisper.encode(mel)
            encode_s = time.perf_counter() - t0
            tokens, eot, first, runners_up, times = whisper.greedy(cross)
            step_times[variant] += times
            transcript = tokenizer.decode(tokens)
            matches = words(transcript) == words(text)
            # The cache must reproduce decoding the whole prefix from scratch.
            uncached = whisper.greedy_uncached(cross, len(tokens) + 1)
            if uncached != tokens:
                problems.append(f"{name} {variant}: KV-cache tokens {tokens} != uncached {uncached}")
            if not matches:
                problems.append(f"{name} {variant}: transcript {transcript!r} does not match {text!r}")
            entry["decode"][variant] = {
                "prompt": PROMPT, "tokens": tokens, "eot": eot, "text": transcript,
                "runner_up": [r for r, _ in runners_up], "gap": [round(g, 4) for _, g in runners_up],
                "first_logits": [round(float(x), 5) for x in first[:8]], "first_argmax": int(first.argmax()),
                "matches_text": matches, "uncached_tokens_equal": uncached == tokens,
                "encoder_sha256": enc["sha256"], "decoder_sha256": dec["sha256"],
                "weights": {role: whisper_onnx.EXACT_REFERENCE.get(c["params"]["weights"], c["params"]["weights"])
                            for role, c in (("encoder", enc), ("decoder", dec))},
            }
            mark = "ok" if matches else "MISMATCH"
            print(f"  {variant:<4} {mark:<8} {transcript!r}  (encoder {encode_s:.2f} s, "
                  f"{len(tokens)} tokens, same without cache: {'yes' if uncached == tokens else 'no'})")
        f32, int8 = (entry["decode"][v]["tokens"] for v in VARIANTS)
        print(f"  f32 vs int8: {'identical tokens' if f32 == int8 else 'tokens differ'}")

    write_atomic(TESTDATA_DIR / "index.json", (json.dumps(entries, indent=2) + "\n").encode())

    vad = components[("vad", "f32")]
    probabilities = {name: vad_probabilities(args.bundle / vad["file"], vad["params"], TESTDATA_DIR / name)
                     for name in (BECKETT[0], "how_many_people.wav")}
    write_atomic(TESTDATA_DIR / "vad.json", (json.dumps(probabilities) + "\n").encode())

    decoded = [e for e in entries if e["decode"]]
    agree = sum(e["decode"]["f32"]["tokens"] == e["decode"]["int8"]["tokens"] for e in decoded)
    print(f"\nf32 vs int8 agreement: {agree}/{len(decoded)} clips token-identical")
    for variant in VARIANTS:
        times = np.array(step_times[variant]) * 1000
        if len(times):
            print(f"decoder step ({variant}, onnxruntime, 1 thread): median {np.median(times):.1f} ms, "
                  f"mean {times.mean():.1f} ms over {len(times)} steps")
    report_problems(problems)
    mark_references(TESTDATA_DIR, digest)
    print(f"test references done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

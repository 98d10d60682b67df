"""WAV loading and the openai-whisper log-mel spectrogram in numpy."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Reads a 16-bit PCM WAV as f32 samples in [-1, 1), averaging channels to mono."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * f.getsampwidth()}-bit")
        rate, channels = f.getframerate(), f.getnchannels()
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    samples = pcm.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0
    return samples.astype(np.float32), rate


def pad_or_trim(samples: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def log_mel(samples: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """openai-whisper's log_mel_spectrogram of a 30 s window: f32 [n_mels, 3000].

    16 kHz mono input, padded/trimmed to 480000 samples; STFT with n_fft 400, hop 160, periodic
    Hann window, centered with reflect padding; power spectrum without the last frame; mel
    filterbank; log10 clamped at 1e-10; dynamic range limited to 8 (log10 units); (x + 4) / 4.
    """
    audio = pad_or_trim(np.asarray(samples, dtype=np.float32)).astype(np.float64)
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0])
    )
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # [n_frames, 201]
    mel = filters.astype(np.float64) @ power[:-1].T  # [n_mels, 3000]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)

#!/usr/bin/env python3
"""Regenerate ``edgekit/data/files/spoken_digits.npz``: spoken "zero".."nine" as log-mel features.

This script is the only place that needs the speech synthesiser. It is kept in the repository so
the shipped feature file can be rebuilt and audited; edgekit itself, its tests and its users
only read the ``.npz`` (no apt package, no download at run time).

Requirements (Debian/Ubuntu)::

    apt-get install -y espeak-ng
    python scripts/make_speech_features.py            # writes edgekit/data/files/spoken_digits.npz

How the features are made (plain numpy, no librosa):

1. Each digit word is synthesised offline with ``espeak-ng`` in ``PER_DIGIT`` variants that
   differ in voice (English accents x voice variants), speed (words per minute) and pitch; the
   variants are drawn with a fixed seed, the same for every digit.
2. The waveform (22.05 kHz mono) is trimmed of leading/trailing silence, peak-normalised and
   mixed with white noise at a seeded SNR between 10 and 40 dB.
3. A Hann-windowed STFT (n_fft=512) with a hop chosen so the trimmed word spans exactly
   ``FRAMES`` frames (this time-normalises slow and fast speech), then a triangular (Slaney
   style, HTK mel scale) ``MELS``-band filterbank from 60 Hz to 8 kHz, then ``log(power + 1e-6)``.
4. Features are standardised with one global mean and standard deviation (stored in the file).

File contents: ``features`` float32 (N, FRAMES, MELS), ``labels`` int64 (N,), ``voices`` (N,)
str, ``speeds`` and ``pitches`` int64 (N,), ``mean`` and ``std`` float32 scalars, ``words``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LANGS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
         "en-gb-x-gbcwmd")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4",
            "+f5")
PER_DIGIT = 30
FRAMES = 20
MELS = 16
N_FFT = 512
SEED = 0

OUT = Path(__file__).resolve().parents[1] / "edgekit" / "data" / "files" / "spoken_digits.npz"


def synthesize(word: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), word],
        check=True, capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float64) / 32768.0, rate


def trim(x: np.ndarray, rate: int, db: float = -35.0) -> np.ndarray:
    win = max(1, rate // 100)  # 10 ms frames
    n = len(x) // win
    energy = (x[: n * win].reshape(n, win) ** 2).mean(axis=1)
    thresh = energy.max() * 10 ** (db / 10)
    on = np.flatnonzero(energy > thresh)
    return x[on[0] * win : (on[-1] + 1) * win] if on.size else x


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(rate: int, n_fft: int, n_mels: int, fmin: float = 60.0, fmax: float = 8000.0):
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[i] = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (hi - lo))
    return fb


def log_mel(x: np.ndarray, rate: int, frames: int = FRAMES, n_mels: int = MELS) -> np.ndarray:
    if len(x) < N_FFT + frames:
        x = np.pad(x, (0, N_FFT + frames - len(x)))
    hop = (len(x) - N_FFT) / (frames - 1)
    starts = np.round(np.arange(frames) * hop).astype(int)
    window = np.hanning(N_FFT)
    segs = np.stack([x[s : s + N_FFT] * window for s in starts])
    power = np.abs(np.fft.rfft(segs, axis=1)) ** 2
    mel = power @ mel_filterbank(rate, N_FFT, n_mels).T
    return np.log(mel + 1e-6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--per-digit", type=int, default=PER_DIGIT)
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install -y espeak-ng", file=sys.stderr)
        return 2
    rng = np.random.RandomState(SEED)
    # One list of variants, shared by every digit (so a voice is never a shortcut to a label).
    variants = [
        (
            LANGS[rng.randint(len(LANGS))] + VARIANTS[rng.randint(len(VARIANTS))],
            int(rng.randint(110, 230)),
            int(rng.randint(20, 80)),
            float(rng.uniform(10, 40)),
        )
        for _ in range(args.per_digit)
    ]
    feats, labels, voices, speeds, pitches = [], [], [], [], []
    noise_rng = np.random.RandomState(SEED + 1)
    for label, word in enumerate(WORDS):
        for voice, speed, pitch, snr in variants:
            x, rate = synthesize(word, voice, speed, pitch)
            x = trim(x, rate)
            x = x / (np.abs(x).max() + 1e-9)
            noise = noise_rng.randn(len(x)) * np.sqrt((x**2).mean() / 10 ** (snr / 10))
            feats.append(log_mel(x + noise, rate))
            labels.append(label)
            voices.append(voice)
            speeds.append(speed)
            pitches.append(pitch)
    f = np.stack(feats)
    mean, std = f.mean(), f.std()
    f = ((f - mean) / std).astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        features=f,
        labels=np.asarray(labels, dtype=np.int64),
        voices=np.asarray(voices),
        speeds=np.asarray(speeds, dtype=np.int64),
        pitches=np.asarray(pitches, dtype=np.int64),
        mean=np.float32(mean),
        std=np.float32(std),
        words=np.asarray(WORDS),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB): features {f.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Regenerate ``edgekit/data/files/kws_mfcc.npz``: keyword spotting at the MLPerf Tiny shape.

The only place that needs the speech synthesiser; edgekit, its tests and its users read the
``.npz`` (numpy only, no apt package, no download at run time).

Requirements (Debian/Ubuntu)::

    apt-get install -y espeak-ng
    python scripts/make_kws_features.py            # writes edgekit/data/files/kws_mfcc.npz

Classes (12, as in MLPerf Tiny's keyword spotting): the ten keywords ``yes no up down left
right on off stop go``, ``_silence_`` (background noise only) and ``_unknown_`` (one of
``UNKNOWN_WORDS``, spoken by the same voices).

How a clip is made:

1. Voices are espeak-ng's English accents x voice variants (``LANGS`` x ``VARIANTS``). Each voice
   belongs to exactly one split (seeded shuffle: 60% train, 20% val, 20% test), so the test set
   is spoken by voices never heard in training.
2. Every split has a list of variants (voice, speed in words per minute, pitch, SNR, noise
   colour, onset), drawn with a fixed seed from that split's voices and shared by every word
   of the split (a voice is never a shortcut to a label).
3. The word is synthesised (22.05 kHz), resampled to 16 kHz, trimmed of silence,
   peak-normalised to a seeded level, placed at a seeded onset in a 1 s window (16,000
   samples) and mixed with white, pink or brown noise at the variant's SNR. Silence clips are
   noise alone at a seeded level.
4. MFCC as in MLPerf Tiny: 30 ms Hann window (480 samples, FFT 512), 20 ms hop, no padding
   (49 frames), 40 mel bands (HTK mel scale, 20 Hz - 4 kHz), ``log(power + 1e-6)``, DCT-II
   (orthonormal), first 10 coefficients.
5. Each coefficient is standardised with the train split's mean and standard deviation (stored
   in the file) and saved as float16.

File contents: ``features`` float16 (N, 49, 10), ``labels`` int64 (N,), ``split`` uint8 (N,)
(0 train, 1 val, 2 test), ``words`` (N,) the spoken word, ``voices`` (N,) str, ``speeds``,
``pitches`` int64 (N,), ``snr_db`` float32 (N,), ``classes`` (12,), ``mean`` and ``std`` float32
(10,).
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

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
CLASSES = (*KEYWORDS, "_silence_", "_unknown_")
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree",
                 "wow", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "backward", "forward", "follow", "learn", "visual")
LANGS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
         "en-gb-x-gbcwmd", "en-us-nyc")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4",
            "+f5", "+klatt", "+Andy", "+Annie", "+Denis", "+Gene", "+Mr_Serious", "+Steph")
PER_CLASS = {"train": 120, "val": 40, "test": 40}
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
RATE = 16000
WINDOW, HOP, N_FFT, MELS, COEFFS = 480, 320, 512, 40, 10
FRAMES = 1 + (RATE - WINDOW) // HOP  # 49
SEED = 0

OUT = Path(__file__).resolve().parents[1] / "edgekit" / "data" / "files" / "kws_mfcc.npz"


def synthesize(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """The word at 16 kHz, float64 in [-1, 1]."""
    from scipy.signal import resample_poly

    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch), word],
        check=True, capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    x = pcm.astype(np.float64) / 32768.0
    if rate != RATE:
        g = np.gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g)
    return x


def trim(x: np.ndarray, db: float = -35.0) -> np.ndarray:
    win = RATE // 100
    n = len(x) // win
    if n == 0:
        return x
    energy = (x[: n * win].reshape(n, win) ** 2).mean(axis=1)
    on = np.flatnonzero(energy > energy.max() * 10 ** (db / 10))
    return x[on[0] * win : (on[-1] + 1) * win] if on.size else x


def noise(n: int, colour: str, rng: np.random.RandomState) -> np.ndarray:
    w = rng.randn(n)
    if colour == "pink":  # -3 dB/octave: shape the spectrum by 1/sqrt(f)
        spec = np.fft.rfft(w)
        f = np.arange(spec.size)
        spec[1:] /= np.sqrt(f[1:])
        w = np.fft.irfft(spec, n)
    elif colour == "brown":
        w = np.cumsum(w)
        w -= np.linspace(w[0], w[-1], n)
    return w / (w.std() + 1e-12)


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(fmin: float = 20.0, fmax: float = 4000.0) -> np.ndarray:
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / RATE)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), MELS + 2))
    fb = np.zeros((MELS, freqs.size))
    for i in range(MELS):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return fb


def dct_matrix(n_in: int = MELS, n_out: int = COEFFS) -> np.ndarray:
    """Orthonormal DCT-II rows (n_out, n_in)."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    m = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return m


_FB = mel_filterbank()
_DCT = dct_matrix()


def mfcc(x: np.ndarray) -> np.ndarray:
    """(49, 10) MFCC of one 1 s clip at 16 kHz."""
    starts = np.arange(FRAMES) * HOP
    window = np.hanning(WINDOW)
    segs = np.stack([x[s : s + WINDOW] * window for s in starts])
    power = np.abs(np.fft.rfft(segs, n=N_FFT, axis=1)) ** 2
    return np.log(power @ _FB.T + 1e-6) @ _DCT.T


def voice_splits(rng: np.random.RandomState) -> dict[str, list[str]]:
    voices = [lang + var for lang in LANGS for var in VARIANTS]
    order = rng.permutation(len(voices))
    n = len(voices)
    cut1, cut2 = int(0.6 * n), int(0.8 * n)
    pick = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    return {s: [voices[i] for i in sorted(idx)] for s, idx in pick.items()}


def draw_variants(voices: list[str], n: int, rng: np.random.RandomState) -> list[dict]:
    return [{"voice": voices[rng.randint(len(voices))], "speed": int(rng.randint(100, 260)),
             "pitch": int(rng.randint(10, 90)), "snr": float(rng.uniform(5, 35)),
             "colour": ("white", "pink", "brown")[rng.randint(3)],
             "level": float(rng.uniform(0.3, 1.0)), "onset": float(rng.uniform(0.0, 1.0)),
             "unknown": UNKNOWN_WORDS[rng.randint(len(UNKNOWN_WORDS))]} for _ in range(n)]


def clip(word: str | None, v: dict, rng: np.random.RandomState) -> np.ndarray:
    if word is None:  # silence: background noise alone
        return noise(RATE, v["colour"], rng) * 0.05 * v["level"]
    x = trim(synthesize(word, v["voice"], v["speed"], v["pitch"]))[:RATE]
    x = x / (np.abs(x).max() + 1e-9) * v["level"]
    out = np.zeros(RATE)
    start = int(v["onset"] * (RATE - len(x)))
    out[start : start + len(x)] = x
    sig = float((x**2).mean())
    return out + noise(RATE, v["colour"], rng) * np.sqrt(sig / 10 ** (v["snr"] / 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the clips per class and split (e.g. 0.1 for a quick run)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install -y espeak-ng", file=sys.stderr)
        return 2
    rng = np.random.RandomState(SEED)
    splits = voice_splits(rng)
    feats, labels, codes, words, voices, speeds, pitches, snrs = ([] for _ in range(8))
    noise_rng = np.random.RandomState(SEED + 1)
    for split, per_class in PER_CLASS.items():
        variants = draw_variants(splits[split], max(1, round(per_class * args.scale)), rng)
        for label, cls in enumerate(CLASSES):
            for v in variants:
                word = None if cls == "_silence_" else v["unknown"] if cls == "_unknown_" else cls
                feats.append(mfcc(clip(word, v, noise_rng)))
                labels.append(label)
                codes.append(SPLIT_CODE[split])
                words.append(word or "")
                voices.append(v["voice"] if word else "")
                speeds.append(v["speed"])
                pitches.append(v["pitch"])
                snrs.append(v["snr"])
        print(f"{split}: {len(splits[split])} voices, {len(variants)} clips per class",
              file=sys.stderr)
    f = np.stack(feats)
    train = np.asarray(codes) == 0
    mean, std = f[train].mean(axis=(0, 1)), f[train].std(axis=(0, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        features=((f - mean) / std).astype(np.float16),
        labels=np.asarray(labels, dtype=np.int64),
        split=np.asarray(codes, dtype=np.uint8),
        words=np.asarray(words),
        voices=np.asarray(voices),
        speeds=np.asarray(speeds, dtype=np.int64),
        pitches=np.asarray(pitches, dtype=np.int64),
        snr_db=np.asarray(snrs, dtype=np.float32),
        classes=np.asarray(CLASSES),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB): features {f.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

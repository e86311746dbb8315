"""Writes tests/golden/audio_preprocess.json, the audio input's cross-host golden, from runtime_py/audio.py.

Usage: python tests/golden/make_audio_golden.py [OUT]   (default: tests/golden/audio_preprocess.json beside this file)

Each case is PCM as a WAV file's data chunk holds it — an encoding (u8, s16, s24, s32 little-endian integers, f32
floats), a rate and a channel count — whose interleaved sample k is an integer formula every host computes exactly
(`pcm_values`): raw = (a·k + b·k²) mod 2^bits, signed encodings centred by 2^(bits−1), f32 the s16 value / 32768.
What `gemma_edge.runtime.audio` makes of it is recorded: the 16 kHz mono samples (all of them as float32 base64
when they are few, else their SHA-256 and a few values) and the clips they are cut into (start, samples, mel frames,
the program's rows, soft tokens), or the refusal of a clip too short for a token. The native host reads the cases as
WAV files (libsndfile; tests/test_native.py writes them) and the Java core decodes the bytes
(AudioPreprocessorGoldenTest); both resample with their port of scipy's `resample_poly`, so samples that went through
the filter must agree within one float32 ulp (the filter is computed in float64 on every host, the last rounding to
float32 may differ), and samples that did not must be equal. tests/test_audio_preprocess.py checks this file is
current.
"""
from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from gemma_edge.contract import audio as contract
from gemma_edge.contract.audio import AudioError
from gemma_edge.runtime.audio import prepare_audio, to_mono_16k

GOLDEN = Path(__file__).resolve().parent / "audio_preprocess.json"
BITS = {"u8": 8, "s16": 16, "s24": 24, "s32": 32, "f32": 16}
DTYPES = {"u8": np.uint8, "s16": np.int16, "s24": np.int32, "s32": np.int32, "f32": np.float32}
ALL_SAMPLES_UP_TO = 4000   # cases with at most this many output samples record them all

# name, encoding, rate, channels, frames, (a, b): every width, mono and multi-channel, down- and up-sampling by
# small and large ratios (44.1 kHz: 160/441, an 8,821-tap filter), an item over 60 s (three clips), a tail too
# short for a token dropped, and a clip too short for any
CASES = [
    ("s16_16k_mono", "s16", 16000, 1, 4000, (7919, 13)),
    ("s16_48k_stereo", "s16", 48000, 2, 4800, (104729, 7)),
    ("s24_44k1_mono", "s24", 44100, 1, 4410, (1299709, 3)),
    ("s32_8k_mono", "s32", 8000, 1, 1600, (2147483629, 11)),
    ("u8_22k05_stereo", "u8", 22050, 2, 2205, (31, 5)),
    ("f32_16k_three_channels", "f32", 16000, 3, 800, (4099, 17)),
    ("f32_32k_mono", "f32", 32000, 1, 3200, (65521, 1)),
    ("s16_16k_61s_three_clips", "s16", 16000, 1, 61 * 16000, (7919, 13)),
    ("s16_16k_30s_and_a_short_tail", "s16", 16000, 1, 30 * 16000 + 100, (3571, 2)),
    ("s16_16k_too_short", "s16", 16000, 1, 160, (7, 1)),
]


def pcm_values(encoding: str, count: int, a: int, b: int) -> np.ndarray:
    """The interleaved samples of a case as the WAV data chunk's integers (f32: its floats)."""
    bits = BITS[encoding]
    k = np.arange(count, dtype=np.uint64)
    raw = (np.uint64(a) * k + np.uint64(b) * k * k) % np.uint64(1 << bits)   # mod 2^64 first: exact for these
    if encoding == "u8":
        return raw.astype(np.uint8)
    signed = raw.astype(np.int64) - (1 << (bits - 1))
    if encoding == "f32":
        return (signed.astype(np.float32) / np.float32(32768)).astype(np.float32)
    return signed.astype(np.int16 if encoding == "s16" else np.int32)


def pcm_bytes(encoding: str, values: np.ndarray) -> bytes:
    """The data chunk: little-endian, s24 as its three low bytes."""
    if encoding == "s24":
        v = values.astype("<i4").view(np.uint8).reshape(-1, 4)
        return v[:, :3].tobytes()
    return values.astype(values.dtype.newbyteorder("<")).tobytes()


def wav_bytes(encoding: str, rate: int, channels: int, data: bytes) -> bytes:
    """A canonical WAV file (PCM format 1, IEEE float format 3) of the data chunk."""
    import struct

    width = BITS[encoding] // 8 if encoding != "f32" else 4
    fmt = struct.pack("<HHIIHH", 3 if encoding == "f32" else 1, channels, rate, rate * channels * width,
                      channels * width, 8 * width)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def as_read(encoding: str, values: np.ndarray, channels: int) -> np.ndarray:
    """The array scipy's wavfile.read gives for the file (s24 as int32 shifted left by 8), [n] or [n, channels]."""
    x = values.astype(np.int32) << 8 if encoding == "s24" else values
    return x if channels == 1 else x.reshape(-1, channels)


def case_record(name, encoding, rate, channels, frames, gen) -> dict:
    values = pcm_values(encoding, frames * channels, *gen)
    rec = {"name": name, "encoding": encoding, "rate": rate, "channels": channels, "frames": frames,
           "a": gen[0], "b": gen[1], "resampled": rate != contract.SAMPLE_RATE}
    samples = to_mono_16k(as_read(encoding, values, channels), rate, name)
    rec["samples"] = len(samples)
    rec["samples_sha256"] = hashlib.sha256(samples.astype("<f4").tobytes()).hexdigest()
    if len(samples) <= ALL_SAMPLES_UP_TO:
        rec["samples_f32_b64"] = base64.b64encode(samples.astype("<f4").tobytes()).decode()
    picks = sorted({0, 1, len(samples) // 2, len(samples) - 1})
    rec["picks"] = [[i, float(samples[i])] for i in picks]
    try:
        clips = prepare_audio(samples)
    except AudioError as e:
        rec["error"] = {"message_contains": "make no soft token", "message": str(e)}
        return rec
    rec["clips"] = [{"start": a, "samples": b - a, "mel_frames": contract.mel_frames(b - a),
                     "program_frames": contract.program_frames(b - a), "soft_tokens": c.soft_tokens}
                    for (a, b), c in zip(contract.split_samples(len(samples)), clips)]
    return rec


def golden() -> dict:
    return {"about": "written by tests/golden/make_audio_golden.py from gemma_edge.runtime.audio; do not edit",
            "format": "gemma-edge-audio-golden", "version": 1, "sample_rate": contract.SAMPLE_RATE,
            "hop": contract.HOP, "cases": [case_record(*c) for c in CASES]}


def render(g: dict) -> str:
    head = {k: v for k, v in g.items() if k != "cases"}
    return json.dumps(head)[:-1] + ',\n"cases": [\n' + ",\n".join(json.dumps(c) for c in g["cases"]) + "\n]}\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else GOLDEN
    out.write_text(render(golden()))
    print(f"{out}: {len(CASES)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Audio input across hosts: tests/golden/audio_preprocess.json is current with the Python host (runtime_py/audio.py),
and the native host (gemma-edge-audio-golden: libsndfile, its resample_poly port, its clips) reads every case's WAV
file to the same 16 kHz samples and clips. Java replays the same file (AudioPreprocessorGoldenTest).

Samples that went through the resampler agree within one float32 ulp: each host computes the filter in float64, and
the rounding of a float64 result to float32 may land on either side when the two sums differ in their last bits.
Samples that did not (16 kHz files: scaling by a power of two, a channel mean) are equal bit for bit.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gemma_edge.runtime import native
from gemma_edge.runtime.audio import load_audio, to_mono_16k

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_audio_golden", HERE / "golden" / "make_audio_golden.py")
mag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mag)


def golden() -> dict:
    return json.loads(mag.GOLDEN.read_text())


def golden_samples(case: dict) -> np.ndarray | None:
    b64 = case.get("samples_f32_b64")
    return None if b64 is None else np.frombuffer(base64.b64decode(b64), "<f4")


def within_one_ulp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ulp = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32))
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) <= ulp


def test_audio_golden_is_current():
    assert mag.GOLDEN.exists(), f"{mag.GOLDEN}: missing; run python tests/golden/make_audio_golden.py"
    assert mag.render(mag.golden()) == mag.GOLDEN.read_text(), \
        f"{mag.GOLDEN} is stale: the audio input changed; rerun tests/golden/make_audio_golden.py and check every " \
        "host still passes"


def test_audio_golden_covers_the_input_rules():
    cases = golden()["cases"]
    assert {c["encoding"] for c in cases} == {"u8", "s16", "s24", "s32", "f32"}
    assert any(c["channels"] > 2 for c in cases) and any(c["channels"] == 2 for c in cases)
    assert any(c["rate"] < 16000 for c in cases) and any(c["rate"] > 16000 for c in cases)
    assert any(c["rate"] == 44100 for c in cases), "a ratio of 160/441"
    assert any(len(c.get("clips", [])) == 3 for c in cases), "audio over 60 s"
    assert any(c["samples"] > 480000 and len(c.get("clips", [])) == 1 for c in cases), "a tail with no token"
    assert any("error" in c for c in cases)


def test_golden_wav_files_read_back_as_the_golden_in_python(tmp_path):
    # the file the native test writes, read by the Python host's own WAV path (scipy), gives the golden's samples
    for c in golden()["cases"]:
        path = write_case_wav(c, tmp_path)
        got = load_audio(path)
        assert len(got) == c["samples"], c["name"]
        assert hashlib.sha256(got.astype("<f4").tobytes()).hexdigest() == c["samples_sha256"], c["name"]


def write_case_wav(case: dict, tmp: Path) -> Path:
    values = mag.pcm_values(case["encoding"], case["frames"] * case["channels"], case["a"], case["b"])
    path = tmp / f"{case['name']}.wav"
    path.write_bytes(mag.wav_bytes(case["encoding"], case["rate"], case["channels"],
                                   mag.pcm_bytes(case["encoding"], values)))
    return path


@pytest.fixture(scope="module")
def audio_tool() -> Path:
    native.build()
    return native.tool("gemma-edge-audio-golden")


def native_samples(tool: Path, wav: Path, tmp: Path) -> tuple[subprocess.CompletedProcess, np.ndarray | None]:
    out = tmp / (wav.stem + ".f32")
    p = subprocess.run([str(tool), str(wav), str(out)], capture_output=True, text=True)
    return p, (np.fromfile(out, "<f4") if p.returncode == 0 else None)


def test_native_audio_input_equals_the_golden(audio_tool, tmp_path):
    worst = {}
    for c in golden()["cases"]:
        p, got = native_samples(audio_tool, write_case_wav(c, tmp_path), tmp_path)
        if "error" in c:
            assert p.returncode == 2 and c["error"]["message_contains"] in p.stderr, (c["name"], p.stderr)
            assert len(p.stderr.strip().splitlines()) == 1
            continue
        assert p.returncode == 0, (c["name"], p.stderr)
        assert got is not None and len(got) == c["samples"], c["name"]
        if not c["resampled"]:
            assert hashlib.sha256(got.astype("<f4").tobytes()).hexdigest() == c["samples_sha256"], c["name"]
        else:
            want = golden_samples(c)
            assert want is not None
            ok = within_one_ulp(got, want)
            assert ok.all(), f"{c['name']}: {int((~ok).sum())} samples beyond one ulp, first at {int(np.argmin(ok))}"
            worst[c["name"]] = float(np.abs(got.astype(np.float64) - want).max())
        for i, v in c["picks"]:
            assert abs(float(got[i]) - v) <= np.spacing(np.float32(abs(v))), (c["name"], i)
        meta = json.loads(p.stdout)
        assert meta["samples"] == c["samples"] and meta["clips"] == c["clips"], c["name"]
    print("largest |native - scipy| per resampled case:", worst)


def test_native_reads_every_wav_width_the_python_host_reads(audio_tool, tmp_path):
    # WAVE_FORMAT_EXTENSIBLE and float64, which the golden's canonical files do not hold, as scipy reads them
    from scipy.io import wavfile

    rng = np.random.default_rng(5)
    for name, data in (("f64", rng.uniform(-1, 1, (800, 2))), ("s16_3ch", rng.integers(-2**15, 2**15, (900, 3),
                                                                                       dtype=np.int16))):
        path = tmp_path / f"{name}.wav"
        wavfile.write(path, 16000, data)
        p, got = native_samples(audio_tool, path, tmp_path)
        assert p.returncode == 0, p.stderr
        assert got is not None and np.array_equal(got, load_audio(path)), name
    # an extensible header (format 0xFFFE, PCM subformat), as many recorders write
    pcm = rng.integers(-2**15, 2**15, 1600, dtype=np.int16)
    fmt = struct.pack("<HHIIHHHHI16s", 0xFFFE, 1, 16000, 32000, 2, 16, 22, 16, 4,
                      b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71")
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 3200) + pcm.tobytes()
    path = tmp_path / "extensible.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    p, got = native_samples(audio_tool, path, tmp_path)
    assert p.returncode == 0, p.stderr
    assert got is not None and np.array_equal(got, to_mono_16k(pcm, 16000))


def test_native_refuses_what_is_not_wav_audio(audio_tool, tmp_path):
    cases = {"missing.wav": None, "text.wav": b"not a wav file at all", "empty.wav": b""}
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        p, _ = native_samples(audio_tool, path, tmp_path)
        assert p.returncode == 2 and str(path) in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # a container libsndfile reads but the contract does not take (AIFF, 16 kHz s16 mono): named, not decoded
    frames = np.arange(400, dtype=">i2").tobytes()
    comm = struct.pack(">hIh", 1, 200, 16) + bytes.fromhex("400cfa00000000000000")
    ssnd = struct.pack(">II", 0, 0) + frames
    body = b"AIFF" + b"COMM" + struct.pack(">I", len(comm)) + comm + b"SSND" + struct.pack(">I", len(ssnd)) + ssnd
    path = tmp_path / "clip.aiff"
    path.write_bytes(b"FORM" + struct.pack(">I", len(body)) + body)
    p, _ = native_samples(audio_tool, path, tmp_path)
    assert p.returncode == 2 and "expected a WAV file" in p.stderr and "another audio container" in p.stderr, p.stderr

"""Issue 21 items 3–5: the audio program in a bundle — written by the export, validated in the manifest, equal to
the eager tower at every length, run by the Session and `gemma-edge run --audio`, counted by the budget."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_audio import speech_like

from gemma_edge.contract import audio as contract
from gemma_edge.contract import bundle_format as bf


def audio_entry(tiny_bundle) -> dict:
    """tiny_bundle's manifest (a text-only revision-6 bundle) given an audio entry that validates."""
    m = json.loads((tiny_bundle / bf.MANIFEST_FILE).read_text())
    m["files"]["audio"] = {"path": bf.AUDIO_FILE, "bytes": 1, "sha256": "0" * 64}
    vocab = m["vocab_size"]
    m["audio"] = bf.audio_entry(model_hash=bytes.fromhex(m["model_hash"]), hidden_size=m["config"]["hidden_size"],
                                max_tokens=750, audio_tokens={"boa": vocab - 6, "audio": vocab - 5, "eoa": vocab - 4},
                                quantization="8da8w", activation_bytes=1 << 24,
                                config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            output_proj_dims=48))
    return m


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["files"].pop("audio"), "files.audio: missing, but audio is present"),
    (lambda m: m.pop("audio"), "audio: missing, but files.audio is present"),
    (lambda m: m["audio"].update(model_hash="1" * 64), "audio.model_hash: expected"),
    (lambda m: m["audio"].update(max_tokens=751), "audio.max_tokens: expected"),
    (lambda m: m["audio"].update(hidden_size=7), "audio.hidden_size: expected"),
    (lambda m: m["audio"]["audio_tokens"].update(audio=10**6), r"audio.audio_tokens.audio: expected a token id"),
    (lambda m: m["audio"]["audio_tokens"].update(eoa=m["audio"]["audio_tokens"]["boa"]), "three distinct ids"),
    (lambda m: m["audio"].update(quantization="int2"), "audio.quantization: expected"),
    (lambda m: m["audio"]["config"].pop("hidden_size"), "audio.config.hidden_size"),
    (lambda m: m["audio"].update(activation_bytes=-1), "audio.activation_bytes"),
    (lambda m: m["export"].update(program_revision=5), "export.program_revision: expected ≥ 6"),
])
def test_manifest_audio_entry_is_validated(tiny_bundle, edit, message):
    m = audio_entry(tiny_bundle)
    bf.validate_manifest(json.loads(json.dumps(m)), tiny_bundle)   # the unedited entry is accepted
    edit(m)
    with pytest.raises(bf.BundleError, match=message):
        bf.validate_manifest(m, tiny_bundle)


def test_budget_counts_the_audio_tower(tiny_bundle, tmp_path):
    """An audio prompt's peak: the decoder loaded plus the audio program's packed linears, blob and its measured
    activations; E2B's tower at 30 s is the multimodal notes' 442 GFLOP."""
    from gemma_edge.contract.presets import AUDIO_PRESETS
    from gemma_edge.runtime.budget import audio_budget, estimate_bundle

    e2b = audio_budget(AUDIO_PRESETS["e2b"], 750)
    assert abs(e2b.flops / 442e9 - 1) < 0.01
    assert 0.28e9 < e2b.packed < 0.31e9   # 304.8 M int8 weights with their scales
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(audio_entry(tiny_bundle)))
    b = estimate_bundle(bundle)
    assert b.audio is not None and b.audio.activations == 1 << 24 and b.audio.tokens == 750
    assert b.audio_ram_bytes == b.resident_weight_bytes + b.kv_cache + b.runtime + b.audio.peak_bytes
    assert b.ram_bytes >= b.audio_ram_bytes


@pytest.mark.slow
def test_export_writes_the_audio_program(tiny_audio_bundle, tiny_audio_checkpoint):
    from executorch.runtime import Runtime

    from gemma_edge.export.checkpoint import model_hash

    m = bf.read_manifest(tiny_audio_bundle)
    a = m["audio"]
    assert a["model_hash"] == m["model_hash"] == model_hash(tiny_audio_checkpoint).hex()
    assert a["method"] == bf.AUDIO_METHOD and a["max_tokens"] == 750 and a["quantization"] == "none"
    assert m["export"]["soft_token_ids"] == [a["audio_tokens"]["audio"]]
    assert bf.sha256_file(tiny_audio_bundle / bf.AUDIO_FILE) == m["files"]["audio"]["sha256"]
    assert a["activation_bytes"] > 0
    program = Runtime.get().load_program(tiny_audio_bundle / bf.AUDIO_FILE)
    assert program.method_names == {bf.AUDIO_METHOD}
    from gemma_edge.export.bundle import describe_bundle

    text, ok = describe_bundle(tiny_audio_bundle)
    assert ok and "audio program: up to 750 soft tokens a clip (30 s), linears none" in text


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [161 / 16000, 0.5, 1.0, 7.3, 30.0])
def test_the_program_equals_the_eager_tower_at_every_length(tiny_audio_bundle, tiny_audio_checkpoint, seconds):
    """One dynamic method for every clip length, one frame to 30 s: the unquantized program's soft tokens are the
    eager tower's (whose own parity with transformers tests/test_audio.py checks)."""
    from gemma_edge.runtime.audio import EagerAudioEncoder, ProgramAudioEncoder, prepare_audio

    program = ProgramAudioEncoder(tiny_audio_bundle, bf.read_manifest(tiny_audio_bundle))
    eager = EagerAudioEncoder(tiny_audio_checkpoint)
    (clip,) = prepare_audio(speech_like(seconds, seed=21))
    got, want = program.encode(clip), eager.encode(clip)
    assert got.shape == want.shape == (contract.audio_soft_tokens(clip.samples), program.hidden)
    assert float(np.abs(got - want).max()) <= 1e-4


@pytest.mark.slow
def test_bundle_generates_from_audio_as_transformers(tiny_audio_bundle, tiny_audio_checkpoint):
    """Two clips at their placeholders, the unquantized bundle (audio program, step, fp32 .ple): 16 greedy tokens
    equal to Gemma4ForConditionalGeneration.generate's on transformers' own features."""
    from test_audio import reference_features
    from transformers import Gemma4ForConditionalGeneration

    from gemma_edge.runtime.session import Session

    m = bf.read_manifest(tiny_audio_bundle)
    t = m["audio"]["audio_tokens"]
    waves = [speech_like(0.9, seed=22), speech_like(2.2, seed=23)]
    text = [2, 17, 33, t["audio"], 40, 41, t["audio"], 99]
    counts = iter(contract.audio_soft_tokens(len(w)) for w in waves)
    full = []
    for tok in text:
        full += [t["boa"]] + [t["audio"]] * next(counts) + [t["eoa"]] if tok == t["audio"] else [tok]
    features, mask = reference_features(waves)
    hf = Gemma4ForConditionalGeneration.from_pretrained(tiny_audio_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(input_ids=torch.tensor([full]), input_features=features, input_features_mask=mask,
                           max_new_tokens=16, min_new_tokens=16, do_sample=False)[0, len(full):].tolist()
    with Session(tiny_audio_bundle) as s:
        got = [g.token for g in s.generate(text, 16, audio=waves, stop_on_eos=False)]
        st = s.last_run
        assert st.prompt_tokens == len(full) and st.audio_clips == 2 and st.prompt_fetches == 1
        assert st.prompt_fetched == [m["pad_token_id"] or 0 if tok == t["audio"] else tok for tok in full]
        assert st.prompt_fetch.unique_rows == len(set(st.prompt_fetched))   # each clip costs one row, row 0
        assert 0 < st.encode_s < st.ttft_s
        assert s.audio._program is None and s.audio._method is None   # released after encoding
    assert got == want


@pytest.mark.slow
def test_text_runs_never_read_the_audio_program(tiny_audio_bundle, tmp_path):
    """A damaged audio.pte of the right size: a session runs text without reading it; the first clip is refused
    naming files.audio.sha256."""
    import shutil

    from gemma_edge.runtime.session import Session

    bundle = tmp_path / "b"
    shutil.copytree(tiny_audio_bundle, bundle)
    path = bundle / bf.AUDIO_FILE
    path.write_bytes(b"\0" * path.stat().st_size)
    with Session(bundle) as s:
        assert len([g for g in s.generate([2, 5, 6], 3, stop_on_eos=False)]) == 3
        t = s.audio_tokens
        with pytest.raises(bf.BundleError, match="files.audio.sha256"):
            list(s.generate([2, t.audio, 5], 2, audio=[speech_like(0.5)]))


@pytest.mark.slow
def test_no_audio_exports_a_bundle_without_the_program(tiny_audio_bundle, tiny_audio_checkpoint, tmp_path):
    from conftest import TINY_AUDIO_EXPORT

    from gemma_edge.export.exporter import ExportSettings, export_bundle

    out = export_bundle(tiny_audio_checkpoint, tmp_path / "b", ExportSettings(**TINY_AUDIO_EXPORT, audio=False),
                        progress=False, reuse_program=tiny_audio_bundle)
    m = bf.read_manifest(out)
    assert "audio" not in m and "audio" not in m["files"] and not (out / bf.AUDIO_FILE).exists()


@pytest.mark.slow
def test_cli_run_with_audio(tiny_audio_bundle, tmp_path):
    """`gemma-edge run BUNDLE --audio clip.wav --prompt ...` (a 48 kHz float32 stereo WAV): the clip is encoded,
    the report counts it, and the tokens are the Session's on the same samples."""
    import subprocess
    import sys

    from scipy.io import wavfile

    from gemma_edge.runtime.audio import load_audio
    from gemma_edge.runtime.session import Session

    wav = tmp_path / "clip.wav"
    wave = speech_like(1.4, rate=48_000, seed=24)
    wavfile.write(wav, 48_000, np.stack([wave, 0.5 * wave], axis=1))
    r = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "run", str(tiny_audio_bundle), "--audio", str(wav),
                        "--prompt", "hello", "--max-new-tokens", "5", "--json", "--no-fit-check"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 audio clip(s) encoded in" in r.stdout
    from conftest import json_at_end

    out = json_at_end(r.stdout)
    assert out["audio_clips"] == 1
    with Session(tiny_audio_bundle) as s:
        ids = s.encode("hello")
        want = [g.token for g in s.generate(ids, 5, audio=[load_audio(wav)])]
    assert out["tokens"] == want

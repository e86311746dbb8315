"""Issue 21 items 1–2: the log-mel front end against `Gemma4AudioFeatureExtractor`, the audio tower against
transformers' `get_audio_features`, the token count against the processor's, the config and the loader's errors."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma_edge.contract import audio as contract
from gemma_edge.contract.config import ConfigError
from gemma_edge.contract.presets import preset
from gemma_edge.export.audio import AudioConfig, audio_tensor_specs, load_audio_tower
from gemma_edge.export.checkpoint import CheckpointError

TOL = 1e-4  # log-mel features and fp32 soft tokens, ours vs transformers (issue 21)
SR = contract.SAMPLE_RATE

# Tiny towers with the processor's constants (128 mels: subsampling_conv_channels[0] = 128) and Gemma 4's
# attention window. "e": E2B/E4B-shaped (clipped linears). "variant": more heads, kernel 3, no clipping.
TOWERS = {
    "e": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, subsampling_conv_channels=[128, 8],
              output_proj_dims=48, use_clipped_linears=True),
    "variant": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, subsampling_conv_channels=[128, 4],
                    output_proj_dims=40, conv_kernel_size=3, use_clipped_linears=False),
}
SECONDS = (0.5, 1.0, 7.3, 30.0, 40.0)  # the lengths; 40 s is truncated to 30 by the extractor


def speech_like(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    """A voiced signal (a gliding 29-harmonic pitch, syllable-rate amplitude) over a low noise floor, quantised
    to 16 bits, float32: spectra spread across every mel band, as speech's are. A pure tone is not a fair test
    of any fp32 front end: its far bins fall below the mel floor, where transformers' own single-precision
    rfft is off by ~6e-4 from the exact value."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 30)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    x = 0.3 * x / np.abs(x).max() + 1e-3 * rng.standard_normal(len(t))
    return (np.round(x * 32767) / 32767).astype(np.float32)


def reference_features(waves: list[np.ndarray]):
    """transformers' extractor on a batch: (input_features [B, F, 128], mask [B, F]) as torch tensors."""
    from transformers import Gemma4AudioFeatureExtractor

    out = Gemma4AudioFeatureExtractor()(waves, return_tensors="pt")
    return out["input_features"], out["input_features_mask"]


def our_rows(wave: np.ndarray) -> torch.Tensor:
    """The front end's input: the clip's first contract.frame_samples in rows of 160, [1, F, 160]."""
    n = contract.frame_samples(len(wave))
    return torch.from_numpy(wave[:n].copy()).view(1, -1, contract.HOP)


def clip(wave: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(wave)[None]


# ---------------------------------------------------------------- front end
@pytest.mark.parametrize("seconds", SECONDS)
def test_front_end_matches_the_feature_extractor(seconds):
    from gemma_edge.export.audio import LogMel

    wave = speech_like(seconds)
    ref, mask = reference_features([wave])
    frames = int(mask.sum())
    assert frames == contract.mel_frames(len(wave))
    assert not mask[0, frames:].any()  # the valid frames are the first ones
    with torch.no_grad():
        got = LogMel()(our_rows(wave))
    assert got.shape == (1, frames, contract.N_MELS)
    assert float((got - ref[:, :frames]).abs().max()) <= TOL


def test_front_end_on_noise_and_silence():
    from gemma_edge.export.audio import LogMel

    rng = np.random.default_rng(3)
    for wave in (0.3 * rng.standard_normal(SR).astype(np.float32), np.zeros(SR, np.float32)):
        ref, mask = reference_features([wave])
        with torch.no_grad():
            got = LogMel()(our_rows(wave))
        assert float((got - ref[:, :int(mask.sum())]).abs().max()) <= TOL


@pytest.mark.parametrize("n", [0, 100, 160, 161, 320, 481, 799, 800, 8000, 16000, 16001, 123457, 480000, 480001,
                               640000])
def test_token_count_is_the_processors(n):
    """audio_soft_tokens = what transformers' processor puts in the prompt (its mask after two stride-2 convs)."""
    import transformers.models.gemma4.processing_gemma4 as p

    ref, mask = reference_features([np.zeros(max(n, 1), np.float32)]) if n else (None, None)
    if n:
        assert contract.mel_frames(n) == int(mask.sum())
    expected = 0
    if n:
        m = mask[0].numpy()
        for _ in range(2):
            m = m[::2][:(len(m) - 1) // 2 + 1]
        expected = int(m.sum())
    assert contract.audio_soft_tokens(n) == expected
    proc = object.__new__(p.Gemma4Processor)
    proc.audio_seq_length = 750
    proc.feature_extractor = type("FE", (), {"frame_length": 320, "hop_length": 160})()
    if n <= contract.MAX_SAMPLES:  # the processor's own count from a length (it does not truncate)
        assert min(proc._compute_audio_num_tokens(np.zeros(n), SR), 750) == expected or n < contract.MIN_SAMPLES


def test_long_audio_is_split_into_30_second_clips():
    assert contract.split_samples(0) == []
    assert contract.split_samples(contract.MAX_SAMPLES) == [(0, contract.MAX_SAMPLES)]
    m = contract.MAX_SAMPLES
    assert contract.split_samples(2 * m + 8000) == [(0, m), (m, 2 * m), (2 * m, 2 * m + 8000)]
    assert contract.split_samples(m + 100) == [(0, m)]  # 100 samples make no token: dropped, not an empty span
    assert sum(contract.audio_soft_tokens(b - a) for a, b in contract.split_samples(95 * SR)) == 95 * 25


# ---------------------------------------------------------------- the tower
def calibrate_clip_bounds(hf_model) -> None:
    """Clip bounds that bind in every clipped linear: asymmetric fractions of the largest value each one sees on a
    calibration clip (finite bounds, unlike transformers' ±inf defaults)."""
    linears = {n: m for n, m in hf_model.model.audio_tower.named_modules()
               if type(m).__name__ == "Gemma4ClippableLinear"}
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0].abs().max(), o.abs().max())))
             for n, m in linears.items()]
    with torch.no_grad():
        hf_model.model.get_audio_features(*reference_features([speech_like(1.3, seed=5)]))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for n, m in linears.items():
            x_max, y_max = seen[n]
            m.input_min.fill_(-0.5 * x_max), m.input_max.fill_(0.7 * x_max)
            m.output_min.fill_(-0.6 * y_max), m.output_max.fill_(0.8 * y_max)


def build_tower(name: str, path):
    import transformers

    torch.manual_seed(0)
    text = preset("tiny").to_hf()
    audio = transformers.Gemma4AudioConfig(**TOWERS[name])
    hf = transformers.Gemma4ForConditionalGeneration(
        transformers.Gemma4Config(text_config=text.to_dict(), vision_config=None, audio_config=audio,
                                  **contract.AudioTokens.for_vocab(text.vocab_size).to_dict())).eval()
    with torch.no_grad():
        for n, p in [*hf.model.audio_tower.named_parameters(), *hf.model.embed_audio.named_parameters()]:
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in n else 0.1 * torch.randn_like(p))
    if audio.use_clipped_linears:
        calibrate_clip_bounds(hf)
    hf.save_pretrained(path)
    return name, hf, path, load_audio_tower(path)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    built: dict[str, tuple] = {}

    def get(name: str):
        if name not in built:
            built[name] = build_tower(name, tmp_path_factory.mktemp(f"audio-{name}") / "checkpoint")
        return built[name]
    return get


@pytest.fixture(params=sorted(TOWERS))
def tower(request, towers):
    return towers(request.param)


@pytest.fixture
def e_tower(towers):
    return towers("e")


def reference_tokens(hf, waves):
    """transformers' soft tokens of each clip of a padded batch, its padding stripped as Gemma4Model does."""
    features, mask = reference_features(waves)
    with torch.no_grad():
        out = hf.model.get_audio_features(features, mask)
    return [t[m] for t, m in zip(out.pooler_output, out.attention_mask)]


@pytest.mark.parametrize("seconds", [161 / SR, 0.03, 0.5, 1.0, 2.3, 7.3])  # one frame, 3 frames, ...
def test_soft_tokens_match_transformers(tower, seconds):
    _, hf, _, ours = tower
    wave = speech_like(seconds, seed=1)
    (ref,) = reference_tokens(hf, [wave])
    with torch.no_grad():
        got = ours.encode(clip(wave))[0]
    assert got.shape[0] == contract.audio_soft_tokens(len(wave)) == ref.shape[0]
    assert float((got - ref).abs().max()) <= TOL


def test_padded_batch_matches_each_clip_alone(tower):
    """transformers pads a batch to its longest clip and masks; each clip's valid tokens are ours for it alone."""
    _, hf, _, ours = tower
    waves = [speech_like(3.1, seed=2), speech_like(0.7, seed=3), speech_like(1.6, seed=4)]
    for wave, ref in zip(waves, reference_tokens(hf, waves)):
        with torch.no_grad():
            got = ours.encode(clip(wave))[0]
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= TOL


@pytest.mark.slow
def test_thirty_seconds_match_transformers(e_tower):
    _, hf, _, ours = e_tower
    wave = speech_like(30.0, seed=6)
    (ref,) = reference_tokens(hf, [wave])
    with torch.no_grad():
        got = ours.encode(clip(wave))[0]
    assert got.shape[0] == 750
    assert float((got - ref).abs().max()) <= TOL


def test_clips_the_program_cannot_take_are_refused(e_tower):
    ours = e_tower[3]
    for n, match in ((160, "expected 161..480000 samples"), (contract.MAX_SAMPLES + 1, "split longer audio")):
        with pytest.raises(ValueError, match=match):
            ours.encode(torch.zeros(1, n))
    with pytest.raises(ValueError, match="expected one clip of float samples"):
        ours.encode(torch.zeros(1, 1000, dtype=torch.int16))


def test_clip_bounds_bind(e_tower):
    """The parity cases exercise the clamps: with them opened the 'e' tower's soft tokens move far past TOL."""
    _, _, path, ours = e_tower
    samples = clip(speech_like(1.0, seed=1))
    unclipped = load_audio_tower(path)
    with torch.no_grad():
        for n, b in unclipped.named_buffers():
            if n.endswith(("_min", "_max")):
                b.fill_(float("inf") if n.endswith("_max") else float("-inf"))
        assert float((unclipped.encode(samples) - ours.encode(samples)).abs().max()) > 100 * TOL


def test_attention_sees_itself_and_the_eleven_before(e_tower):
    """Changing frames of one token changes that token and the next 11 of the first layer's attention — and, the
    tower being causal, never an earlier token."""
    _, _, _, ours = e_tower
    samples = clip(speech_like(2.0, seed=7))
    moved = samples.clone()
    moved[:, 20 * 640:21 * 640] += 0.1  # the frames of token 20
    with torch.no_grad():
        a, b = ours.encode(samples)[0], ours.encode(moved)[0]
    changed = ((a - b).abs().amax(-1) > 0).nonzero().flatten().tolist()
    assert changed[0] >= 19  # one frame of conv lookahead at most reaches token 19
    assert not (a[:19] - b[:19]).abs().any()


# ---------------------------------------------------------------- config and loading
def test_config_round_trips_through_transformers():
    import transformers

    cfg = AudioConfig()
    hf = transformers.Gemma4AudioConfig(**{k: v for k, v in cfg.to_dict().items() if k != "model_type"})
    assert AudioConfig.from_dict(hf.to_dict(), cfg.text_hidden_size) == cfg


@pytest.mark.parametrize("field, value, message", [
    ("subsampling_conv_channels", [64, 32], "subsampling_conv_channels[0]: expected 128"),
    ("attention_context_right", 2, "attention_context_right: expected 0"),
    ("attention_chunk_size", 8, "attention_chunk_size: expected attention_context_left - 1"),
    ("num_attention_heads", 7, "num_attention_heads: expected a divisor"),
    ("hidden_act", "gelu", "hidden_act: expected 'silu'"),
    ("gradient_clipping", float("inf"), "gradient_clipping: expected a finite number"),
])
def test_config_errors_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(f"audio_config.{message}")):
        AudioConfig.from_dict({**AudioConfig().to_dict(), field: value}, 1536)


def test_checkpoint_without_audio_config_is_a_clear_error(e_tower, tmp_path):
    _, _, path, _ = e_tower
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["audio_config"] = None
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="audio_config: expected the audio tower's config.*without an audio tower"):
        load_audio_tower(copy)


@pytest.mark.parametrize("edit", ["drop", "extra", "shape"])
def test_loader_errors_name_the_key(e_tower, tmp_path, edit):
    _, _, path, _ = e_tower
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    shard = copy / "model.safetensors"
    tensors = load_file(shard)
    key = "model.audio_tower.layers.1.self_attn.relative_k_proj.weight"
    if edit == "drop":
        del tensors[key]
        match = f"missing 1 key.*{key}"
    elif edit == "extra":
        tensors["model.audio_tower.layers.1.self_attn.extra"] = torch.zeros(2)
        match = "unexpected 1 key.*layers.1.self_attn.extra"
    else:
        tensors[key] = torch.zeros(3, 3)
        match = key
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises((CheckpointError, ValueError), match=match):
        load_audio_tower(copy)


def test_specs_cover_every_checkpoint_tensor(e_tower):
    """random-checkpoint writes exactly the keys and shapes transformers saves for the tower and embed_audio."""
    _, _, path, ours = e_tower
    saved = {k: tuple(v.shape) for k, v in load_file(path / "model.safetensors").items()
             if k.startswith(("model.audio_tower.", "model.embed_audio."))}
    assert {k: s.shape for k, s in audio_tensor_specs(ours.cfg).items()} == saved


def test_real_size_parameter_count():
    """The E2B tower's 304,824,608 parameters and embed_audio's 2,359,296 (the multimodal notes' §4 count)."""
    specs = audio_tensor_specs(AudioConfig())
    tower = sum(int(np.prod(s.shape)) for k, s in specs.items()
                if k.startswith("model.audio_tower.") and not k.endswith(("_min", "_max")))
    embed = sum(int(np.prod(s.shape)) for k, s in specs.items() if k.startswith("model.embed_audio."))
    assert (tower, embed) == (304_824_608, 2_359_296)


def test_random_checkpoint_carries_the_tower(tmp_path):
    """`random-checkpoint --multimodal` writes the preset's audio tower: transformers loads it with no key left
    over or missing, and its soft tokens are ours (finite clip bounds included); the tokenizer knows the audio
    specials at the config's ids."""
    import transformers
    from tokenizers import Tokenizer

    from gemma_edge.contract.presets import AUDIO_PRESETS, VISION_PRESETS
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    path = write_random_checkpoint(tmp_path / "ckpt", preset("tiny"), dtype=torch.float32, seed=4, multimodal=True,
                                   vision_config=VISION_PRESETS["tiny"], audio_config=AUDIO_PRESETS["tiny"],
                                   progress=False)
    cfg = json.loads((path / "config.json").read_text())
    tokens = contract.AudioTokens.from_config(cfg, preset("tiny").vocab_size)
    assert tokens == contract.AudioTokens.for_vocab(preset("tiny").vocab_size)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert tok.encode("<|audio><|audio|><audio|>", add_special_tokens=False).ids == [tokens.boa, tokens.audio,
                                                                                      tokens.eoa]
    hf, info = transformers.Gemma4ForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = load_audio_tower(path)
    bounds = [float(b) for n, b in ours.named_buffers() if n.endswith(("_min", "_max"))]
    assert bounds and all(np.isfinite(bounds))
    wave = speech_like(1.5, seed=8)
    (ref,) = reference_tokens(hf.eval(), [wave])
    with torch.no_grad():
        assert float((ours.encode(clip(wave))[0] - ref).abs().max()) <= TOL


def test_wav_widths_and_bad_files(tmp_path):
    """8-bit (unsigned, centred at 128), 32-bit integer and 64-bit float WAV read as the same 16 kHz samples to their
    precision; a file that is not a WAV, an empty one and a missing one are errors naming the file."""
    from scipy.io import wavfile

    from gemma_edge.contract.audio import AudioError
    from gemma_edge.runtime.audio import load_audio

    wave = speech_like(0.3, seed=9).astype(np.float64)
    cases = {"u8.wav": (np.round(wave * 127 + 128).astype(np.uint8), 1 / 128),
             "i32.wav": (np.round(wave * 2**31).astype(np.int32), 1e-6),   # |wave| ≤ 0.3: no overflow
             "f64.wav": (wave, 1e-7)}
    for name, (data, tol) in cases.items():
        wavfile.write(tmp_path / name, SR, data)
        np.testing.assert_allclose(load_audio(tmp_path / name), wave, atol=tol, err_msg=name)
    (tmp_path / "text.wav").write_text("not a wave file")
    wavfile.write(tmp_path / "empty.wav", SR, np.zeros(0, np.int16))
    for name, match in (("text.wav", "expected a WAV file"), ("empty.wav", "expected audio samples, found none"),
                        ("missing.wav", "no such audio file")):
        with pytest.raises(AudioError, match=rf"{name}: {match}"):
            load_audio(tmp_path / name)

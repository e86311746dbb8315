"""Shared session-scoped fixtures: a tiny random checkpoint (with tokenizer) and its bundle, exported once per
session."""
import json
import os
from pathlib import Path

import pytest

from gemma_edge.contract import bundle_format as bf

# Reuse an existing checkpoint / bundle instead of building them (local iteration): both must be set together.
REUSE_CHECKPOINT, REUSE_BUNDLE = os.environ.get("GEMMA_EDGE_TINY_CHECKPOINT"), os.environ.get("GEMMA_EDGE_TINY_BUNDLE")
REUSE_VISION_CHECKPOINT = os.environ.get("GEMMA_EDGE_TINY_VISION_CHECKPOINT")
REUSE_VISION_BUNDLE = os.environ.get("GEMMA_EDGE_TINY_VISION_BUNDLE")
REUSE_AUDIO_CHECKPOINT = os.environ.get("GEMMA_EDGE_TINY_AUDIO_CHECKPOINT")
REUSE_AUDIO_BUNDLE = os.environ.get("GEMMA_EDGE_TINY_AUDIO_BUNDLE")

def edit_manifest(bundle: Path, **fields) -> None:
    """Set manifest fields in place (dotted keys reach into objects: files__ple__path); None deletes. Read raw:
    an earlier edit may have left a manifest Python's reader refuses."""
    m = json.loads((bundle / bf.MANIFEST_FILE).read_text())
    for key, value in fields.items():
        *path, last = key.split("__")
        d = m
        for k in path:
            d = d[k]
        if value is None:
            del d[last]
        else:
            d[last] = value
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(m, indent=2))


def json_at_end(text: str):
    """The JSON object a command's output ends with (`--json`), after text that may itself hold braces:
    the first line that opens an object from which the rest of the output parses."""
    import json

    for line_start in [0] + [k + 1 for k, c in enumerate(text) if c == "\n"]:
        if text.startswith("{", line_start):
            try:
                return json.loads(text[line_start:])
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON object ends this output: {text[-200:]!r}")


TINY_EXPORT = dict(quant="none", embedding_quant="none", ple_dtype="int8", max_context=64, prefill_chunk=8)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """transformers' Gemma4ForCausalLM, tiny preset, random weights large enough to give decisive logits,
    saved with save_pretrained, plus a test tokenizer.json of the same vocabulary."""
    from gemma_edge.contract.presets import preset
    from gemma_edge.export.parity import random_hf_model
    from gemma_edge.export.random_tokenizer import write_test_tokenizer

    if REUSE_CHECKPOINT:
        return Path(REUSE_CHECKPOINT)
    cfg = preset("tiny")
    path = tmp_path_factory.mktemp("tiny") / "checkpoint"
    random_hf_model(cfg, seed=0).save_pretrained(path)
    write_test_tokenizer(path, cfg.vocab_size)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported (quant none, PLE int8, max_context 64, prefill_chunk 8)."""
    from gemma_edge.export.exporter import ExportSettings, export_bundle

    if REUSE_BUNDLE:
        return Path(REUSE_BUNDLE)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return export_bundle(tiny_checkpoint, out, ExportSettings(**TINY_EXPORT), progress=False)


# The multimodal tiny model's export: every program unquantized (the vision program too), two budgets, a context
# that holds two 280-budget images.
TINY_VISION_EXPORT = dict(TINY_EXPORT, max_context=600, ple_dtype="fp32", vision_quant="none", image_budgets=(70, 280))


@pytest.fixture(scope="session")
def tiny_vision_checkpoint(tmp_path_factory) -> Path:
    """`gemma-edge random-checkpoint --preset tiny --multimodal` (fp32): the tiny decoder under
    model.language_model., the preset's vision tower (not its audio tower), a test tokenizer with the image tokens."""
    from gemma_edge.contract.presets import VISION_PRESETS, preset
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    if REUSE_VISION_CHECKPOINT:
        return Path(REUSE_VISION_CHECKPOINT)
    import torch

    path = tmp_path_factory.mktemp("tiny-vision") / "checkpoint"
    return write_random_checkpoint(path, preset("tiny"), dtype=torch.float32, seed=3, multimodal=True,
                                   vision_config=VISION_PRESETS["tiny"], progress=False)


@pytest.fixture(scope="session")
def tiny_vision_bundle(tiny_vision_checkpoint, tmp_path_factory) -> Path:
    """The multimodal tiny checkpoint exported with its vision program (TINY_VISION_EXPORT)."""
    from gemma_edge.export.exporter import ExportSettings, export_bundle

    if REUSE_VISION_BUNDLE:
        return Path(REUSE_VISION_BUNDLE)
    out = tmp_path_factory.mktemp("vision-bundle") / "tiny"
    return export_bundle(tiny_vision_checkpoint, out, ExportSettings(**TINY_VISION_EXPORT), progress=False)


# The tiny model that hears: every program unquantized (the audio program too), a context that holds 30 s of audio.
TINY_AUDIO_EXPORT = dict(TINY_EXPORT, max_context=800, ple_dtype="fp32", audio_quant="none")


@pytest.fixture(scope="session")
def tiny_audio_checkpoint(tmp_path_factory) -> Path:
    """The tiny decoder under model.language_model. with the preset's audio tower (no vision tower), a test
    tokenizer with the audio tokens."""
    from gemma_edge.contract.presets import AUDIO_PRESETS, preset
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    if REUSE_AUDIO_CHECKPOINT:
        return Path(REUSE_AUDIO_CHECKPOINT)
    import torch

    path = tmp_path_factory.mktemp("tiny-audio") / "checkpoint"
    return write_random_checkpoint(path, preset("tiny"), dtype=torch.float32, seed=5, multimodal=True,
                                   audio_config=AUDIO_PRESETS["tiny"], progress=False)


@pytest.fixture(scope="session")
def tiny_audio_bundle(tiny_audio_checkpoint, tmp_path_factory) -> Path:
    """The tiny audio checkpoint exported with its audio program (TINY_AUDIO_EXPORT)."""
    from gemma_edge.export.exporter import ExportSettings, export_bundle

    if REUSE_AUDIO_BUNDLE:
        return Path(REUSE_AUDIO_BUNDLE)
    out = tmp_path_factory.mktemp("audio-bundle") / "tiny"
    return export_bundle(tiny_audio_checkpoint, out, ExportSettings(**TINY_AUDIO_EXPORT), progress=False)

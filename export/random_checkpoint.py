"""Write a Hugging Face-format Gemma 4 checkpoint with random weights of any preset's real shapes.

There is no model hub here: benchmarks and the demo use these. Shards are written as safetensors by
hand, tensor by tensor and row chunk by row chunk, so a full-size E2B (9.3 GB in bf16) is written in a
few hundred MB of memory. The folder appears atomically (written under a temporary name, then renamed).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from gemma_edge.contract.audio import AudioTokens
from gemma_edge.contract.config import TextConfig
from gemma_edge.contract.image import ImageTokens

from .audio import AUDIO_PREFIXES, AudioConfig, audio_tensor_specs
from .checkpoint import CheckpointError
from .model import build_model
from .vision import VISION_PREFIXES, VisionConfig, random_vision_values, vision_tensor_specs

_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_CHUNK_VALUES = 1 << 24  # values generated at a time (64 MB of fp32)


def _fill(name: str, shape: tuple[int, ...], gen: torch.Generator, rows: slice) -> torch.Tensor:
    """Values for rows `rows` of tensor `name`: norms near 1, layer scalars 1, matrices N(0, 0.02)."""
    n = rows.stop - rows.start
    sub = (n, *shape[1:])
    if name.endswith("layer_scalar"):
        return torch.ones(sub)
    if "norm" in name:
        return 1.0 + 0.05 * torch.randn(sub, generator=gen)
    return 0.02 * torch.randn(sub, generator=gen)


def _shard_plan(entries: list[tuple[str, tuple, int]], shard_bytes: int) -> list[list[tuple[str, tuple, int]]]:
    shards, current, size = [], [], 0
    for entry in entries:
        if current and size + entry[2] > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry[2]
    if current:
        shards.append(current)
    return shards


def write_random_checkpoint(out_dir: str | Path, cfg: TextConfig, *, dtype: torch.dtype = torch.bfloat16,
                            seed: int = 0, shard_bytes: int = 2 << 30, multimodal: bool = False,
                            vision_config: dict | None = None, audio_config: dict | None = None,
                            tokenizer: bool = True, progress: bool = True) -> Path:
    """Write config.json + sharded safetensors + index (+ a test tokenizer.json of the same vocabulary)
    for `cfg` into `out_dir` (which must not exist); its parents are created. `vision_config` (transformers'
    `vision_config`, presets.VISION_PRESETS; multimodal only) adds the vision tower and embed_vision, `audio_config`
    (presets.AUDIO_PRESETS) the audio tower and embed_audio."""
    if vision_config is not None and not multimodal:
        raise ValueError("vision_config: a vision tower needs a multimodal checkpoint (multimodal=True)")
    if audio_config is not None and not multimodal:
        raise ValueError("audio_config: an audio tower needs a multimodal checkpoint (multimodal=True)")
    out_dir = Path(os.path.abspath(out_dir))  # the temporary folder goes beside the one named, even for "."
    if out_dir.exists() or out_dir.is_symlink():
        raise FileExistsError(f"{out_dir}: already exists; refusing to overwrite a checkpoint")
    above = next((p for p in out_dir.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise CheckpointError(f"{out_dir}: cannot write the checkpoint ({above} is not a folder)")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return _write(out_dir, cfg, dtype, seed, shard_bytes, multimodal, vision_config, audio_config, tokenizer,
                      progress)
    except OSError as e:  # disk full, a read-only or unwritable folder
        where = e.filename if e.filename and Path(str(e.filename)) != out_dir else out_dir.parent
        raise CheckpointError(f"{out_dir}: cannot write the checkpoint ({where}: {e.strerror or e}); "
                              "nothing was left behind") from e


def _write(out_dir: Path, cfg: TextConfig, dtype: torch.dtype, seed: int, shard_bytes: int, multimodal: bool,
           vision_config: dict | None, audio_config: dict | None, tokenizer: bool, progress: bool) -> Path:
    from tqdm import tqdm

    prefix = "model.language_model." if multimodal else "model."
    itemsize = torch.empty(0, dtype=dtype).element_size()
    meta = build_model(cfg, "meta")
    entries = []
    for name, t in meta.state_dict().items():
        key = prefix + name[len("model."):] if name.startswith("model.") else name
        entries.append((key, tuple(t.shape), t.numel() * itemsize))
    vision = None if vision_config is None else VisionConfig.from_dict(vision_config, cfg.hidden_size, strict=True)
    if vision is not None:  # after the decoder's tensors, which so keep the values they had without a tower
        entries += [(key, spec.shape, math.prod(spec.shape) * itemsize)
                    for key, spec in vision_tensor_specs(vision).items()]
    audio = None if audio_config is None else AudioConfig.from_dict(audio_config, cfg.hidden_size, strict=True)
    if audio is not None:  # after the vision tower's, which so keeps its values
        entries += [(key, spec.shape, math.prod(spec.shape) * itemsize)
                    for key, spec in audio_tensor_specs(audio).items()]
    shards = _shard_plan(entries, shard_bytes)
    gen = torch.Generator().manual_seed(seed)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        weight_map, total = {}, 0
        bar = tqdm(total=sum(e[2] for e in entries), unit="B", unit_scale=True, desc="random checkpoint",
                   disable=not progress)
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for key, shape, nbytes in shard:
                header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape),
                               "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
                weight_map[key] = fname
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)  # safetensors aligns the data section to 8 bytes
            with open(tmp / fname, "wb") as f:
                f.write(len(blob).to_bytes(8, "little"))
                f.write(blob)
                for key, shape, nbytes in shard:
                    rows = shape[0] if shape else 1
                    fill = random_vision_values if key.startswith(VISION_PREFIXES + AUDIO_PREFIXES) else _fill
                    step = max(1, _CHUNK_VALUES // max(1, nbytes // itemsize // rows))
                    for start in range(0, rows, step):
                        part = fill(key, shape or (1,), gen, slice(start, min(rows, start + step))).to(dtype)
                        f.write(part.contiguous().view(torch.uint8).numpy().tobytes())
                    bar.update(nbytes)
                f.flush()
                os.fsync(f.fileno())
            total += offset
        bar.close()
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        text = cfg.to_dict()
        text["dtype"] = str(dtype).removeprefix("torch.")
        if multimodal:
            config = {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"],
                      "text_config": text}
            if vision is not None:
                config["vision_config"] = vision.to_dict()
                config.update(ImageTokens.for_vocab(cfg.vocab_size).to_dict())
            if audio is not None:
                config["audio_config"] = audio.to_dict()
                config.update(AudioTokens.for_vocab(cfg.vocab_size).to_dict())
        else:
            config = {**text, "architectures": ["Gemma4ForCausalLM"]}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer:
            from gemma_edge.export.random_tokenizer import write_test_tokenizer

            image_tokens = ImageTokens.for_vocab(cfg.vocab_size) if multimodal and vision is not None else None
            audio_tokens = AudioTokens.for_vocab(cfg.vocab_size) if multimodal and audio is not None else None
            # "<|image|>" / "<|audio|>" in a prompt is its id
            write_test_tokenizer(tmp, cfg.vocab_size, image_tokens, audio_tokens)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

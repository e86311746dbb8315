"""Load Hugging Face Gemma 4 safetensors checkpoints into our decoder without holding weights twice.

The model is built on the meta device; each tensor is read from its (mmap'd) shard, cast, and assigned
in place of the meta parameter, so peak memory is the loaded weights plus one tensor. The PLE table can
be skipped (`load_ple_table=False`) and read on its own, row range by row range (`ple_row_chunks`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from gemma_edge import procfs
from gemma_edge.contract.audio import AudioError, AudioTokens
from gemma_edge.contract.config import TextConfig, read_config_json
from gemma_edge.contract.image import ImageError, ImageTokens

from .model import Gemma4CausalLM, build_model

TEXT_PREFIXES = ("model.language_model.", "model.")  # multimodal first: "model." is a prefix of it
PLE_KEY = "model.embed_tokens_per_layer.weight"
# Towers of the multimodal checkpoint; this decoder does not load them.
NON_TEXT_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.",
                     "vision_tower.", "audio_tower.", "multi_modal_projector.")
SHARED_KV_LEFTOVERS = ("k_proj", "v_proj", "k_norm", "v_norm")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read (or written), or does not hold what this decoder needs."""


@dataclass
class Checkpoint:
    """Where every tensor of a checkpoint lives: our key -> (shard file, key in that file)."""

    path: Path
    config: TextConfig
    files: dict[str, tuple[Path, str]]
    ignored: list[str]  # keys present but deliberately not loaded
    shards: dict[str, Path]  # every key of the checkpoint, as stored (towers included) -> its shard
    image_tokens: ImageTokens | None = None  # a checkpoint with a vision_config: the ids that frame an image
    audio_tokens: AudioTokens | None = None  # one with an audio_config: the ids that frame a clip

    @property
    def soft_token_ids(self) -> tuple[int, ...]:
        """The placeholder ids whose embedding a tower's soft token replaces (image, then audio)."""
        return tuple(t for t in (self.image_tokens and self.image_tokens.image,
                                 self.audio_tokens and self.audio_tokens.audio) if t is not None)

    def shape(self, key: str) -> list[int]:
        shard, name = self.files[key]
        with open_shard(shard) as f:
            return list(f.get_slice(name).get_shape())


def open_shard(shard: Path):
    """`safe_open` of one safetensors file, a truncated, corrupt or unreadable one refused by name (safetensors
    checks at open that the header parses and that its offsets cover the file exactly)."""
    try:
        return safe_open(shard, framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{shard}: not a readable safetensors file ({e})") from e


def read_weight_map(index: Path) -> dict[str, str]:
    """model.safetensors.index.json's `weight_map`: tensor name -> a shard's file name in the same folder."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from e
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map: expected an object, found {type(weight_map).__name__}")
    for key, shard in weight_map.items():
        # A plain file name: a path would load another folder's (or any readable) file as this model's weights.
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"{index}: weight_map[{key!r}]: expected a shard file name in this folder, "
                                  f"found {shard!r}")
    return weight_map


def _normalise_key(key: str) -> str | None:
    """Checkpoint key -> our key (`model.` + text-model path, or `lm_head.weight`); None if not text."""
    if key.startswith(NON_TEXT_PREFIXES):
        return None
    for prefix in TEXT_PREFIXES:
        if key.startswith(prefix):
            return "model." + key[len(prefix):]
    if key == "lm_head.weight":
        return key
    return key  # left as is: reported as unexpected


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Index a checkpoint directory (config.json + model.safetensors or a sharded index)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face checkpoint folder)")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: config.json is missing")
    config = TextConfig.from_json(path / "config.json")
    index = path / "model.safetensors.index.json"
    if index.exists():
        raw = {k: path / shard for k, shard in read_weight_map(index).items()}
        for shard in sorted(set(raw.values())):
            if not shard.exists():
                raise CheckpointError(f"{shard}: shard named in {index.name} is missing")
            with open_shard(shard) as f:  # every shard's header checked here, before any stage reads one
                absent = sorted({k for k, s in raw.items() if s == shard} - set(f.keys()))
            if absent:
                raise CheckpointError(f"{shard}: {len(absent)} tensor(s) {index.name} places here are not in it "
                                      f"{absent[:6]}")
    elif (path / "model.safetensors").exists():
        with open_shard(path / "model.safetensors") as f:
            raw = {k: path / "model.safetensors" for k in f.keys()}
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    files, ignored = {}, []
    for key, shard in raw.items():
        ours = _normalise_key(key)
        if ours is None:
            ignored.append(key)
        else:
            files[ours] = (shard, key)
    return Checkpoint(path, config, files, ignored, raw, image_tokens_of(path / "config.json", config),
                      audio_tokens_of(path / "config.json", config))


def image_tokens_of(config_json: Path, cfg: TextConfig) -> ImageTokens | None:
    """The ids that frame an image, for a config.json with a vision_config (None without one); reads only it."""
    d = read_config_json(config_json)
    if not isinstance(d, dict) or d.get("vision_config") is None:
        return None
    try:
        return ImageTokens.from_config(d, cfg.vocab_size, where=str(config_json))
    except ImageError as e:
        raise CheckpointError(str(e)) from e


def audio_tokens_of(config_json: Path, cfg: TextConfig) -> AudioTokens | None:
    """The ids that frame an audio clip, for a config.json with an audio_config (None without one); reads only it."""
    d = read_config_json(config_json)
    if not isinstance(d, dict) or d.get("audio_config") is None:
        return None
    try:
        return AudioTokens.from_config(d, cfg.vocab_size, where=str(config_json))
    except AudioError as e:
        raise CheckpointError(str(e)) from e


def set_tensor(model: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    """Put `value` in place of the (meta) parameter or buffer `key` of `model`."""
    module_path, _, leaf = key.rpartition(".")
    module = model.get_submodule(module_path)
    if leaf in module._parameters:
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def load_checkpoint(path: str | Path, *, dtype: torch.dtype | None = torch.float32, load_ple_table: bool = True,
                    progress: bool = False) -> tuple[TextConfig, Gemma4CausalLM]:
    """Read a checkpoint directory into `(config, model)`; `model(input_ids)` gives logits [B, T, V].

    `dtype=None` keeps every tensor in the dtype it is stored in (no rounding, no widening): the
    exporter's choice, which widens layer by layer as it quantizes.

    Redundant k/v tensors of KV-shared layers (Google's original files carry them) and the vision/audio
    towers are ignored; any other missing or unexpected key, or a shape mismatch, is an error.
    """
    ckpt = open_checkpoint(path)
    cfg = ckpt.config
    model = build_model(cfg, "meta")
    model.model.soft_token_ids = ckpt.soft_token_ids
    if not load_ple_table:
        model.drop_ple_table()
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    shared_layers = {s.index for s in cfg.layers if not s.owns_kv}

    unexpected = []
    for key in ckpt.files:
        if key in expected:
            continue
        parts = key.split(".")
        leftover = (len(parts) > 4 and parts[1] == "layers" and parts[2].isdigit()
                    and int(parts[2]) in shared_layers and parts[4] in SHARED_KV_LEFTOVERS)
        if leftover or (key == PLE_KEY and not load_ple_table) or (key == "lm_head.weight" and cfg.tie_word_embeddings):
            ckpt.ignored.append(key)
        else:
            unexpected.append(key)
    missing = sorted(set(expected) - set(ckpt.files))
    if missing or unexpected:
        raise CheckpointError(f"{ckpt.path}: checkpoint does not match config.json — "
                              f"missing {len(missing)} key(s) {missing[:6]}, unexpected {len(unexpected)} "
                              f"key(s) {sorted(unexpected)[:6]}")

    by_shard: dict[Path, list[str]] = {}
    for key in expected:
        by_shard.setdefault(ckpt.files[key][0], []).append(key)
    from tqdm import tqdm

    bar = tqdm(total=len(expected), desc="load weights", unit="tensor", disable=not progress)
    for shard, keys in sorted(by_shard.items()):
        with open_shard(shard) as f:
            for key in keys:
                name = ckpt.files[key][1]
                tensor = read_tensor(f, shard, name, expected[key], "the config")
                # layer_scalar stays fp32 like the reference's buffer; everything else takes `dtype`.
                target = torch.float32 if key.endswith("layer_scalar") else dtype or tensor.dtype
                set_tensor(model, key, tensor.to(target))
                del tensor
                bar.update()
    bar.close()
    for name, buf in list(model.named_buffers()):  # non-persistent buffers (RoPE) left on meta
        if buf.is_meta:
            set_tensor(model, name, _materialise_buffer(model, name))
    return cfg, model.eval()


def load_tower_weights(ckpt: Checkpoint, model: torch.nn.Module, prefixes: tuple[str, ...], tolerated: tuple[str, ...],
                       what: str, config_key: str, dtype: torch.dtype | None) -> None:
    """Fill a tower built on the meta device (its state-dict keys are the checkpoint's without "model.") from the
    checkpoint's keys under `prefixes`, each tensor read once: with `dtype=None` every tensor stays the safetensors
    mapping of its shard (nothing copied), otherwise each is cast on its own and the file pages it was read from
    are dropped. A missing key, an unknown one under the prefixes (`tolerated` aside), a wrong shape or a non-float
    dtype is an error naming the key; `what` and `config_key` say which tower and which config.json object."""
    expected = {"model." + k: tuple(t.shape) for k, t in model.state_dict().items()}
    shards = {k: s for k, s in ckpt.shards.items() if k.startswith(prefixes)}
    missing = sorted(set(expected) - set(shards))
    unexpected = sorted(set(shards) - set(expected) - set(tolerated))
    if missing or unexpected:
        raise CheckpointError(f"{ckpt.path}: {what} does not match config.json's {config_key} — missing "
                              f"{len(missing)} key(s) {missing[:6]}, unexpected {len(unexpected)} key(s) "
                              f"{unexpected[:6]}")
    by_shard: dict[Path, list[str]] = {}
    for key in expected:
        by_shard.setdefault(shards[key], []).append(key)
    for shard, keys in sorted(by_shard.items()):
        with open_shard(shard) as f:
            for key in keys:
                tensor = read_tensor(f, shard, key, expected[key], f"config.json's {config_key}")
                value = tensor if dtype is None else tensor.to(dtype)
                if value is not tensor:  # a cast copy: the file pages read for it need not stay resident
                    release_file_pages(tensor)
                set_tensor(model, key[len("model."):], value)
                del tensor, value


def read_tensor(f, shard: Path, name: str, shape: tuple[int, ...], needed_by: str) -> torch.Tensor:
    """Tensor `name` of the open shard `f` (a zero-copy view of its mapping), refused by name unless it has
    `shape` and a float dtype; `needed_by` says whose shape that is in the error."""
    found = tuple(f.get_slice(name).get_shape())
    if found != shape:
        raise CheckpointError(f"{shard.name}: tensor {name} has shape {list(found)}, {needed_by} needs {list(shape)}")
    try:
        tensor = f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{shard}: tensor {name} cannot be read ({e})") from e
    if tensor.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise CheckpointError(f"{shard.name}: tensor {name} has dtype {tensor.dtype}; expected bf16, fp16 or fp32")
    return tensor


def _materialise_buffer(model: Gemma4CausalLM, name: str) -> torch.Tensor:
    from .model import rope_inv_freq

    layer_type = name.rsplit(".", 1)[-1].removesuffix("_inv_freq")
    spec = next(s for s in model.cfg.layers if s.layer_type == layer_type)
    return rope_inv_freq(spec)


def release_file_pages(tensor: torch.Tensor) -> int:
    """Drop the resident pages under `tensor` when it lives in a file mapping (a shard mmap'd by
    safetensors): they are clean copies of the file, counted in RSS while mapped, and come back from the
    file on the next touch. Anonymous memory, and file pages written since they were mapped, are left
    alone (MADV_DONTNEED would lose their contents). Returns the bytes of address range released (0 when
    nothing was)."""
    if not tensor.is_contiguous():
        return 0
    return procfs.release_clean_file_pages(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def _tensor_location(shard: Path, name: str) -> tuple[str, list[int], int]:
    """(dtype, shape, absolute byte offset) of one tensor in a safetensors file, from its header."""
    try:
        with open(shard, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            entry = json.loads(f.read(header_len))[name]
        return entry["dtype"], entry["shape"], 8 + header_len + entry["data_offsets"][0]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # open_checkpoint checked the header
        raise CheckpointError(f"{shard}: tensor {name}'s header entry cannot be read ({e})") from e


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def ple_row_chunks(path: str | Path, chunk_rows: int = 4096,
                   dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """The PLE table [V, L·P], chunk by chunk of rows, without loading the rest of the checkpoint.

    Rows are read with plain `pread`s, not through a mapping: the table (4.7 GB bf16 for E2B) then passes
    through the page cache, which the kernel may drop, and never piles up in this process's RSS."""
    ckpt = open_checkpoint(path)
    if PLE_KEY not in ckpt.files:
        raise CheckpointError(f"{ckpt.path}: no PLE table ({PLE_KEY}) in this checkpoint")
    shard, name = ckpt.files[PLE_KEY]
    st_dtype, shape, offset = _tensor_location(shard, name)
    if st_dtype not in _ST_DTYPES or len(shape) != 2:
        raise CheckpointError(f"{shard.name}: tensor {name} is {st_dtype} {shape}; expected a 2-D bf16, fp16 "
                              "or fp32 table")
    stored = _ST_DTYPES[st_dtype]
    rows, width = shape
    row_bytes = width * stored.itemsize
    try:
        fd = os.open(shard, os.O_RDONLY)
    except OSError as e:
        raise CheckpointError(f"{shard}: cannot be opened ({e.strerror})") from e
    try:
        for start in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - start)
            buf = bytearray(n * row_bytes)
            got = os.preadv(fd, [buf], offset + start * row_bytes)
            if got != len(buf):
                raise CheckpointError(f"{shard.name}: tensor {name} ends early: rows {start}..{start + n} "
                                      f"need {len(buf)} bytes, read {got}")
            yield torch.frombuffer(buf, dtype=stored).view(n, width).to(dtype)
    finally:
        os.close(fd)


def model_hash(path: str | Path) -> bytes:
    """SHA-256 identity of a checkpoint: config.json plus every shard's tensor directory (names, dtypes,
    shapes, offsets) and a sample of each shard's bytes — cheap for 10 GB, distinct between random seeds."""
    ckpt = open_checkpoint(path)
    h = hashlib.sha256((ckpt.path / "config.json").read_bytes())
    for shard in sorted({s for s, _ in ckpt.files.values()}):
        try:
            with open(shard, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                h.update(f.read(header_len))
                size = os.fstat(f.fileno()).st_size
                for offset in range(8 + header_len, size, max(1, size // 64)):
                    f.seek(offset)
                    h.update(f.read(4096))
        except OSError as e:
            raise CheckpointError(f"{shard}: cannot be read ({e.strerror})") from e
    return h.digest()

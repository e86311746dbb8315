"""The export bundle's names and manifest: the one constants module the exporter and every runtime share.

A bundle is a folder: `model.pte` (RAM-resident program), `model.ple` (flash-resident PLE table),
`manifest.json` (what binds them), and the checkpoint's tokenizer files. The program's step:
`(tokens [1,T] i64, input_pos [T] i64, ple_rows [1,T,L,P] f32, attend_len [N] i64, soft_embeds [1,T,H] f32)
-> logits [1,V] f32`, N = input_pos[-1] + 1: the cache positions the step attends, given by attend_len's length
(its values are not read; revision ≥ 5). soft_embeds (revision ≥ 6): a tower's soft tokens, read only at the
positions whose token is an image placeholder (manifest `image_tokens`), zeros elsewhere. Older programs take
the first three (revision < 5) or four inputs. The manifest's
`methods` maps the two roles — `prefill` (1 ≤ T ≤ prefill_chunk) and `decode` (T = 1) — to the program
method that plays each: by default one dynamic method `forward` plays both (one copy of the packed
weights); a two-method export has `prefill` and `decode` sharing one KV-cache state.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path, PurePosixPath

from .config import is_int
from .image import SUPPORTED_BUDGETS

FORMAT = "gemma-edge-bundle"
FORMAT_VERSION = 1
# How the program computes inside (its inputs and outputs are the format's): bumped when an export of the
# same checkpoint and settings would build a different program, so an older one is never reused as current.
# 2: KV caches written in place (llama::update_cache), sliding rings of window + chunk, mean square as a linear.
# 3: one XNNPACK partitioner for quantized and fp32 ops (fewer delegate calls), cache views outside delegates.
# 4: a step past the last K/V-owning layer runs the last position only (E2B prefill: 20 of 35 layers skipped).
# 5: attention reads only the written cache slots, bounded by a fourth input, attend_len (its length).
# 6: a fifth input, soft_embeds: images' soft tokens in place of their placeholders' embeddings.
PROGRAM_REVISION = 6
PROGRAM_FILE = "model.pte"
PLE_FILE = "model.ple"
ONNX_FILE = "model.onnx"
VISION_FILE = "vision.pte"   # the image tower (optional): loaded only for a prompt with an image
VISION_METHOD_PREFIX = "vision_"  # one static method per image budget: vision_280 takes 9 · 280 patches
VISION_QUANT = ("8da8w", "8da4w", "none")
AUDIO_FILE = "audio.pte"     # the audio front end and tower (optional): loaded only for a prompt with audio
AUDIO_METHOD = "audio"       # its one method, dynamic in the clip length (contract.audio.program_frames)
AUDIO_QUANT = ("8da8w", "8da4w", "none")
PER_CHANNEL = 0  # quantization.group_size meaning one scale per output channel (LiteRT-LM's gemma4_mixed48 too)


def granularity_name(group_size) -> str:
    """How a manifest's / budget's group_size reads: "per-channel" for PER_CHANNEL, else "group N"."""
    return "per-channel" if group_size == PER_CHANNEL else f"group {group_size}"

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
PREFILL_ROLE = "prefill"
DECODE_ROLE = "decode"
STEP_METHOD = "forward"  # the one dynamic method of a one-method export
INPUT_NAMES = ("tokens", "input_pos", "ple_rows", "attend_len", "soft_embeds")
OUTPUT_NAMES = ("logits",)
REQUIRED_KEYS = ("model_hash", "config", "max_context", "prefill_chunk", "bos_token_id", "eos_token_ids",
                 "vocab_size", "num_layers", "ple_dim", "quantization", "files", "methods")
FILE_ROLES = {"program": PROGRAM_FILE, "ple": PLE_FILE, "onnx": ONNX_FILE, "tokenizer": TOKENIZER_FILE,
              "vision": VISION_FILE, "audio": AUDIO_FILE}
# Files whose hash is checked when they are first read rather than at every session start (verify="fast"):
# the .ple (its header and identity are checked instead) and the vision and audio programs (hashed by their
# loaders before ExecuTorch parses them, so a text-only run never reads them).
LAZY_ROLES = ("ple", "vision", "audio")


class BundleError(ValueError):
    """A bundle whose files do not match its manifest."""


def sha256_file(path: Path, chunk: int = 1 << 22, drop_cache: bool = False) -> str:
    """SHA-256 hex of a file; `drop_cache` evicts its pages afterwards (hashing a .ple must not leave the
    table in the page cache)."""
    import os

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
        if drop_cache:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return h.hexdigest()


def method_signature(t: int | str, num_layers: int, ple_dim: int, hidden: int) -> dict:
    return {
        "inputs": [{"name": "tokens", "dtype": "int64", "shape": [1, t]},
                   {"name": "input_pos", "dtype": "int64", "shape": [t]},
                   {"name": "ple_rows", "dtype": "float32", "shape": [1, t, num_layers, ple_dim]},
                   {"name": "attend_len", "dtype": "int64", "shape": ["N"]},
                   {"name": "soft_embeds", "dtype": "float32", "shape": [1, t, hidden]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "V"]}],
    }


def method_names_for(methods: str) -> dict[str, str]:
    """Program method per role for an export's `methods` setting: "one" (a dynamic `forward`) or "two"."""
    if methods == "one":
        return {PREFILL_ROLE: STEP_METHOD, DECODE_ROLE: STEP_METHOD}
    if methods == "two":
        return {PREFILL_ROLE: PREFILL_ROLE, DECODE_ROLE: DECODE_ROLE}
    raise ValueError(f"methods: expected 'one' or 'two', found {methods!r}")


def vision_method(budget: int) -> str:
    """The vision program's method for an image budget (soft tokens per image)."""
    return f"{VISION_METHOD_PREFIX}{budget}"


VISION_CONFIG_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "position_embedding_size")


def vision_entry(*, model_hash: bytes, budgets, hidden_size: int, patch_dim: int, image_tokens: dict,
                 quantization: str, block_q: int | None, config: dict,
                 activation_bytes: dict[int, int] | None = None) -> dict:
    """The manifest's `vision` object for a vision program with one method per budget, bound to `model_hash`;
    `config`: the tower's vision_config and `activation_bytes` (budget -> bytes, measured when the program was
    written: vision_export.measure_activations) are what the memory budget reads."""
    extra = {} if activation_bytes is None else {"activation_bytes": {str(b): n for b, n in activation_bytes.items()}}
    return {**extra, "model_hash": model_hash.hex(), "budgets": sorted(budgets), "config": config,
            "methods": {str(b): vision_method(b) for b in sorted(budgets)},
            "hidden_size": hidden_size, "patch_dim": patch_dim, "image_tokens": dict(image_tokens),
            "quantization": quantization, "block_q": block_q}


AUDIO_CONFIG_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "output_proj_dims")


def audio_entry(*, model_hash: bytes, hidden_size: int, max_tokens: int, audio_tokens: dict, quantization: str,
                config: dict, activation_bytes: int | None = None) -> dict:
    """The manifest's `audio` object for an audio program (one method, up to `max_tokens` soft tokens a clip),
    bound to `model_hash`; `config` (the tower's audio_config) and `activation_bytes` (measured at max_tokens when
    the program was written: audio_export.measure_activations) are what the memory budget reads."""
    extra = {} if activation_bytes is None else {"activation_bytes": activation_bytes}
    return {**extra, "model_hash": model_hash.hex(), "method": AUDIO_METHOD, "max_tokens": max_tokens,
            "hidden_size": hidden_size, "audio_tokens": dict(audio_tokens), "quantization": quantization,
            "config": config}


def role_methods(manifest: dict) -> dict[str, str]:
    """The program method that plays each role, from a manifest."""
    out = {}
    for role in (PREFILL_ROLE, DECODE_ROLE):
        entry = manifest["methods"].get(role)
        if not isinstance(entry, dict):
            raise BundleError(f"manifest methods.{role}: expected an object, found {entry!r}")
        out[role] = entry.get("method", role)
    return out


def build_manifest(bundle_dir: Path, *, cfg, settings: dict, model_hash: bytes, stages: list[dict],
                   ple_report=None, checkpoint: Path | None = None, vision: dict | None = None,
                   audio: dict | None = None, soft_token_ids: tuple[int, ...] = ()) -> dict:
    """The manifest for the files now in `bundle_dir` (hashes and sizes computed here); `vision` / `audio`: the
    vision / audio program's entry (`vision_entry`, `audio_entry`) when `bundle_dir` has one; `soft_token_ids`:
    the placeholder ids the program splices soft tokens at (fixed in its graph)."""
    files = {}
    for role, name in FILE_ROLES.items():
        path = bundle_dir / name
        if path.exists():
            files[role] = {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if "ple" in files:
        from gemma_edge.ple_store import open as open_ple

        with open_ple(bundle_dir / PLE_FILE) as reader:
            files["ple"]["identity"] = reader.header.identity.hex()
            files["ple"]["dtype"] = settings["ple_dtype"]
    chat_template = None
    tok_cfg = bundle_dir / "tokenizer_config.json"
    if tok_cfg.exists():
        chat_template = json.loads(tok_cfg.read_text()).get("chat_template")
    if (bundle_dir / "chat_template.jinja").exists():
        chat_template = (bundle_dir / "chat_template.jinja").read_text()
    layers, p = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model_hash": model_hash.hex(),
        "config": cfg.to_dict(),
        "max_context": settings["max_context"], "prefill_chunk": settings["prefill_chunk"],
        "bos_token_id": cfg.bos_token_id, "eos_token_ids": cfg.eos_token_ids, "pad_token_id": cfg.pad_token_id,
        "vocab_size": cfg.vocab_size, "num_layers": layers, "ple_dim": p,
        "quantization": {"linear": settings["quant"], "group_size": settings["group_size"],
                         "embedding": settings["embedding_quant"], "ple_dtype": settings["ple_dtype"]},
        "files": files,
        "methods": {role: {"method": method_names_for(settings["methods"])[role],
                           **method_signature(t, layers, p, cfg.hidden_size),
                           "max_tokens": settings["prefill_chunk"] if t == "T" else 1}
                    for role, t in ((PREFILL_ROLE, "T"), (DECODE_ROLE, 1))},
        "chat_template": chat_template,
        **({"vision": vision} if vision is not None else {}),
        **({"audio": audio} if audio is not None else {}),
        "export": {"stages": stages, "source_checkpoint": str(checkpoint) if checkpoint else None,
                   "program_revision": PROGRAM_REVISION, "soft_token_ids": list(soft_token_ids)},
    }
    if ple_report is not None:
        import dataclasses

        error = getattr(ple_report, "quant_error", None)
        record = error is not None and dataclasses.is_dataclass(error) and not isinstance(error, type)
        manifest["export"]["ple_quant_error"] = dataclasses.asdict(error) if record else error  # type: ignore[arg-type]
    return manifest


# ---------------------------------------------------------------------------------------------------
# Reading a manifest: one validation pass, so nothing later meets a field of the wrong type or range
# ---------------------------------------------------------------------------------------------------

INT_MAX = 2**31 - 1   # every count and id of a bundle fits an int32 (the native host's and Java's types)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The config keys every exporter writes (TextConfig.to_dict; per_layer_config only when set): a manifest
# without one is not an export, and a default would describe another model than the program was built from.
CONFIG_REQUIRED_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "global_head_dim", "num_global_key_value_heads", "hidden_activation",
    "max_position_embeddings", "rms_norm_eps", "pad_token_id", "eos_token_id", "bos_token_id",
    "tie_word_embeddings", "rope_parameters", "attention_bias", "sliding_window", "layer_types",
    "final_logit_softcapping", "use_bidirectional_attention", "vocab_size_per_layer_input",
    "hidden_size_per_layer_input", "attention_k_eq_v", "num_kv_shared_layers", "enable_moe_block",
    "use_double_wide_mlp")
# (kind, minimum) of each config field this module checks; "?" admits null.
_CONFIG_TYPES: dict[str, tuple[str, int]] = {   # kind ("?": may be null), lower bound (numbers only)
    **{k: ("int", 1) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "head_dim", "global_head_dim",
                                "max_position_embeddings", "sliding_window", "vocab_size_per_layer_input")},
    "hidden_size_per_layer_input": ("int", 0), "num_kv_shared_layers": ("int", 0),
    "num_global_key_value_heads": ("int?", 1), "pad_token_id": ("int?", 0), "bos_token_id": ("int?", 0),
    "eos_token_id": ("ids?", 0), "rms_norm_eps": ("number", 0), "final_logit_softcapping": ("number?", 0),
    **{k: ("bool", 0) for k in ("tie_word_embeddings", "attention_bias", "attention_k_eq_v",
                                    "enable_moe_block", "use_double_wide_mlp")},
    "hidden_activation": ("str", 0), "use_bidirectional_attention": ("str?", 0),
    "rope_parameters": ("object?", 0), "per_layer_config": ("object?", 0), "layer_types": ("strs?", 0),
}


def _found(v) -> str:
    """A found value for a message, with its JSON type, so that "64" (a string) never reads as 64."""
    if isinstance(v, list):
        return f"an array of {len(v)} entries"
    if isinstance(v, dict):
        return f"an object with keys {sorted(v)[:6]}"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}.get(type(v))
    text = json.dumps(v)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({kind})"


def _expect(ok: bool, where: str, field: str, expected: str, value) -> None:
    if not ok:
        raise BundleError(f"{where}: {field}: expected {expected}, found {_found(value)}")


def _int(d: dict, key: str, where: str, field: str, lo: int = 0, hi: int = INT_MAX) -> int:
    v = d.get(key)
    if not (is_int(v) and lo <= v <= hi):
        raise BundleError(f"{where}: {field}: expected an integer in [{lo}, {hi}], found {_found(v)}")
    return v


def check_token_ids(value, where: str, field: str, vocab: int) -> list[int]:
    """A JSON array of token ids in [0, vocab) (a string or a lone number is refused, never iterated)."""
    _expect(isinstance(value, list), where, field, f"an array of token ids in [0, {vocab})", value)
    for i, t in enumerate(value):
        _expect(is_int(t) and 0 <= t < vocab, where, f"{field}[{i}]", f"a token id in [0, {vocab})", t)
    return list(value)


def _check_config(cfg, where: str):
    """Types, ranges and required keys of the manifest's `config`; then the TextConfig it describes."""
    from .config import ConfigError, TextConfig

    _expect(isinstance(cfg, dict), where, "config", "an object (the model's TextConfig)", cfg)
    missing = [k for k in CONFIG_REQUIRED_KEYS if k not in cfg]
    if missing:
        raise BundleError(f"{where}: config: keys {missing} missing (an export writes every one of them)")
    for key, (kind, lo) in _CONFIG_TYPES.items():
        if key not in cfg:
            continue
        v, field = cfg[key], f"config.{key}"
        if kind.endswith("?") and v is None:
            continue
        kind = kind.rstrip("?")
        if kind == "int":
            _expect(is_int(v) and lo <= v <= INT_MAX, where, field, f"an integer in [{lo}, {INT_MAX}]", v)
        elif kind == "number":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > lo
            _expect(ok, where, field, f"a finite number > {lo}", v)
        elif kind == "bool":
            _expect(isinstance(v, bool), where, field, "true or false", v)
        elif kind == "str":
            _expect(isinstance(v, str), where, field, "a string", v)
        elif kind == "object":
            _expect(isinstance(v, dict), where, field, "an object", v)
        elif kind == "strs":
            _expect(isinstance(v, list) and all(isinstance(x, str) for x in v), where, field,
                    "an array of strings", v)
        elif kind == "ids":
            if not is_int(v):
                check_token_ids(v, where, field, INT_MAX)
            else:
                _expect(v >= 0, where, field, "a token id ≥ 0", v)
    try:
        return TextConfig.from_dict(cfg)
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise BundleError(f"{where}: config: {e}") from e


def confined_path(bundle_dir: Path, name, where: str, field: str) -> Path:
    """`bundle_dir / name` for a manifest's file path: relative, no `..`, and still inside the bundle
    folder once symlinks are resolved (a manifest must never make a runtime read another folder's files)."""
    _expect(isinstance(name, str) and bool(name) and "\x00" not in name, where, field, "a relative file name", name)
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise BundleError(f"{where}: {field}: expected a path inside the bundle folder (relative, no '..'), "
                          f"found {name!r}")
    path = bundle_dir / name
    root = bundle_dir.resolve()
    real = path.resolve()
    if real == root or not real.is_relative_to(root):
        raise BundleError(f"{where}: {field}: {name!r} resolves to {real}, outside the bundle folder {root}")
    return path


def bundle_file(bundle_dir: str | Path, manifest: dict, role: str) -> Path:
    """The path of `role`'s file (program, ple, onnx, tokenizer), confined to the bundle folder."""
    bundle_dir = Path(bundle_dir)
    return confined_path(bundle_dir, manifest["files"][role]["path"], str(bundle_dir / MANIFEST_FILE),
                         f"files.{role}.path")


def _check_files(files, bundle_dir: Path, where: str) -> None:
    _expect(isinstance(files, dict), where, "files", "an object (role -> file entry)", files)
    for role, entry in files.items():
        f = f"files.{role}"
        _expect(isinstance(entry, dict), where, f, "an object with path, bytes and sha256", entry)
        for key in ("path", "bytes", "sha256"):
            if key not in entry:
                raise BundleError(f"{where}: {f}.{key}: missing")
        confined_path(bundle_dir, entry["path"], where, f"{f}.path")
        _int(entry, "bytes", where, f"{f}.bytes", 0, 2**63 - 1)
        v = entry["sha256"]
        _expect(isinstance(v, str) and _HEX64.fullmatch(v) is not None, where, f"{f}.sha256",
                "64 lowercase hex digits", v)
    if "ple" in files:
        v = files["ple"].get("identity")
        _expect(isinstance(v, str) and _HEX64.fullmatch(v) is not None, where, "files.ple.identity",
                "64 lowercase hex digits (the .ple header's identity)", v)


def _check_methods(methods, where: str, prefill_chunk: int) -> None:
    _expect(isinstance(methods, dict), where, "methods", "an object (role -> method)", methods)
    for role in (PREFILL_ROLE, DECODE_ROLE):
        entry = methods.get(role)
        _expect(isinstance(entry, dict), where, f"methods.{role}", "an object", entry)
        name = entry.get("method", role)
        _expect(isinstance(name, str) and name != "", where, f"methods.{role}.method", "a method name", name)
        if "max_tokens" in entry:
            want = prefill_chunk if role == PREFILL_ROLE else 1
            _expect(entry["max_tokens"] == want and is_int(entry["max_tokens"]), where,
                    f"methods.{role}.max_tokens", f"{want} (prefill_chunk)" if role == PREFILL_ROLE else "1",
                    entry["max_tokens"])
        for side in ("inputs", "outputs"):
            tensors = entry.get(side, [])
            _expect(isinstance(tensors, list), where, f"methods.{role}.{side}", "an array", tensors)
            for i, t in enumerate(tensors):
                ok = (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                      and isinstance(t.get("shape"), list))
                _expect(ok, where, f"methods.{role}.{side}[{i}]", "an object with name, dtype and shape", t)


def _check_vision(m: dict, cfg, vocab: int, where: str) -> None:
    """The `vision` entry and `files.vision`: both or neither; bound to the model hash; budgets, methods,
    widths and image ids the decoder agrees with."""
    has_file, v = "vision" in m["files"], m.get("vision")
    if v is None and not has_file:
        return
    if v is None or not has_file:
        missing, present = ("vision", "files.vision") if v is None else ("files.vision", "vision")
        raise BundleError(f"{where}: {missing}: missing, but {present} is present (a vision program needs both)")
    _expect(isinstance(v, dict), where, "vision", "an object", v)
    revision = m.get("export", {}).get("program_revision", 1) if isinstance(m.get("export"), dict) else 1
    _expect(is_int(revision) and revision >= 6, where, "export.program_revision",
            "≥ 6 (a step that takes soft_embeds) for a bundle with a vision program", revision)
    _expect(v.get("model_hash") == m["model_hash"], where, "vision.model_hash",
            f"{m['model_hash']} (the manifest's model_hash: the tower of the same checkpoint)", v.get("model_hash"))
    budgets = v.get("budgets")
    ok = (isinstance(budgets, list) and len(budgets) > 0 and all(is_int(b) and b in SUPPORTED_BUDGETS for b in budgets)
          and budgets == sorted(set(budgets)))
    _expect(ok, where, "vision.budgets", f"a sorted list of distinct budgets from {list(SUPPORTED_BUDGETS)}", budgets)
    methods = v.get("methods")
    _expect(isinstance(methods, dict) and sorted(methods) == sorted(str(b) for b in budgets), where,
            "vision.methods", f"one method per budget, keys {[str(b) for b in budgets]}", methods)
    for b in budgets:
        name = methods[str(b)]
        _expect(isinstance(name, str) and name != "", where, f"vision.methods.{b}", "a method name", name)
    _expect(v.get("hidden_size") == cfg.hidden_size and is_int(v.get("hidden_size")), where, "vision.hidden_size",
            f"{cfg.hidden_size} (config.hidden_size: soft tokens replace embeddings)", v.get("hidden_size"))
    _int(v, "patch_dim", where, "vision.patch_dim", 1)
    ids = v.get("image_tokens")
    _expect(isinstance(ids, dict), where, "vision.image_tokens", "an object with boi, image and eoi", ids)
    for key in ("boi", "image", "eoi"):
        _expect(is_int(ids.get(key)) and 0 <= ids[key] < vocab, where, f"vision.image_tokens.{key}",
                f"a token id in [0, {vocab})", ids.get(key))
    _expect(len({ids["boi"], ids["image"], ids["eoi"]}) == 3, where, "vision.image_tokens",
            "three distinct ids", ids)
    _expect(v.get("quantization") in VISION_QUANT, where, "vision.quantization", " or ".join(VISION_QUANT),
            v.get("quantization"))
    bq = v.get("block_q")
    _expect(bq is None or (is_int(bq) and bq >= 1), where, "vision.block_q", "a positive row count or null", bq)
    c = v.get("config")
    _expect(isinstance(c, dict), where, "vision.config", "the tower's vision_config (an object)", c)
    for key in VISION_CONFIG_INTS:
        _int(c, key, where, f"vision.config.{key}", 1)
    acts = v.get("activation_bytes")
    if acts is not None:
        _expect(isinstance(acts, dict) and sorted(acts) == sorted(str(b) for b in budgets), where,
                "vision.activation_bytes", f"bytes per budget, keys {[str(b) for b in budgets]}", acts)
        for b in budgets:
            _int(acts, str(b), where, f"vision.activation_bytes.{b}", 0, 2**63 - 1)


def _check_audio(m: dict, cfg, vocab: int, where: str) -> None:
    """The `audio` entry and `files.audio`: both or neither; bound to the model hash; its method, the clip limit,
    the width and the audio ids the decoder agrees with."""
    has_file, a = "audio" in m["files"], m.get("audio")
    if a is None and not has_file:
        return
    if a is None or not has_file:
        missing, present = ("audio", "files.audio") if a is None else ("files.audio", "audio")
        raise BundleError(f"{where}: {missing}: missing, but {present} is present (an audio program needs both)")
    _expect(isinstance(a, dict), where, "audio", "an object", a)
    revision = m.get("export", {}).get("program_revision", 1) if isinstance(m.get("export"), dict) else 1
    _expect(is_int(revision) and revision >= 6, where, "export.program_revision",
            "≥ 6 (a step that takes soft_embeds) for a bundle with an audio program", revision)
    _expect(a.get("model_hash") == m["model_hash"], where, "audio.model_hash",
            f"{m['model_hash']} (the manifest's model_hash: the tower of the same checkpoint)", a.get("model_hash"))
    _expect(isinstance(a.get("method"), str) and a["method"] != "", where, "audio.method", "a method name",
            a.get("method"))
    _int(a, "max_tokens", where, "audio.max_tokens", 1, 750)
    _expect(a.get("hidden_size") == cfg.hidden_size and is_int(a.get("hidden_size")), where, "audio.hidden_size",
            f"{cfg.hidden_size} (config.hidden_size: soft tokens replace embeddings)", a.get("hidden_size"))
    ids = a.get("audio_tokens")
    _expect(isinstance(ids, dict), where, "audio.audio_tokens", "an object with boa, audio and eoa", ids)
    for key in ("boa", "audio", "eoa"):
        _expect(is_int(ids.get(key)) and 0 <= ids[key] < vocab, where, f"audio.audio_tokens.{key}",
                f"a token id in [0, {vocab})", ids.get(key))
    _expect(len({ids["boa"], ids["audio"], ids["eoa"]}) == 3, where, "audio.audio_tokens", "three distinct ids", ids)
    if isinstance(m.get("vision"), dict) and isinstance(m["vision"].get("image_tokens"), dict):
        clash = set(ids.values()) & set(m["vision"]["image_tokens"].values())
        _expect(not clash, where, "audio.audio_tokens", "ids none of vision.image_tokens holds", ids)
    _expect(a.get("quantization") in AUDIO_QUANT, where, "audio.quantization", " or ".join(AUDIO_QUANT),
            a.get("quantization"))
    c = a.get("config")
    _expect(isinstance(c, dict), where, "audio.config", "the tower's audio_config (an object)", c)
    for key in AUDIO_CONFIG_INTS:
        _int(c, key, where, f"audio.config.{key}", 1)
    if a.get("activation_bytes") is not None:
        _int(a, "activation_bytes", where, "audio.activation_bytes", 0, 2**63 - 1)


def validate_manifest(manifest, bundle_dir: str | Path) -> dict:
    """Check every field a runtime reads — types, ranges, shapes, file paths, cross-field agreement — and
    raise BundleError naming the first wrong one (field, expected, found). Returns the manifest."""
    bundle_dir = Path(bundle_dir)
    where = str(bundle_dir / MANIFEST_FILE)
    _expect(isinstance(manifest, dict), where, "manifest", "a JSON object", manifest)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION or not is_int(manifest.get("format_version")):
        raise BundleError(f"{where}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{where}: keys {missing} missing (expected every one of {list(REQUIRED_KEYS)})")
    m = manifest
    v = m["model_hash"]
    _expect(isinstance(v, str) and _HEX64.fullmatch(v) is not None, where, "model_hash", "64 lowercase hex digits", v)
    cfg = _check_config(m["config"], where)
    max_context = _int(m, "max_context", where, "max_context", 1)
    _int(m, "prefill_chunk", where, "prefill_chunk", 1, max_context)
    vocab = _int(m, "vocab_size", where, "vocab_size", 1)
    for key, want, source in (("vocab_size", cfg.vocab_size, "config.vocab_size"),
                              ("num_layers", cfg.num_hidden_layers, "config.num_hidden_layers"),
                              ("ple_dim", cfg.hidden_size_per_layer_input, "config.hidden_size_per_layer_input")):
        _expect(m[key] == want and is_int(m[key]), where, key, f"{want} ({source})", m[key])
    _expect(is_int(m["bos_token_id"]) and 0 <= m["bos_token_id"] < vocab, where, "bos_token_id",
            f"a token id in [0, {vocab})", m["bos_token_id"])
    check_token_ids(m["eos_token_ids"], where, "eos_token_ids", vocab)
    if m.get("pad_token_id") is not None:
        _int(m, "pad_token_id", where, "pad_token_id", 0, vocab - 1)
    q = m["quantization"]
    _expect(isinstance(q, dict), where, "quantization", "an object", q)
    for key, allowed in (("linear", ("none", "8da4w", "8da8w")), ("embedding", ("none", "int8", "int4")),
                         ("ple_dtype", ("fp32", "bf16", "int8", "int4"))):
        _expect(q.get(key) in allowed, where, f"quantization.{key}", " or ".join(allowed), q.get(key))
    _int(q, "group_size", where, "quantization.group_size", 0)
    _check_files(m["files"], bundle_dir, where)
    if cfg.has_ple and "ple" not in m["files"]:
        raise BundleError(f"{where}: files.ple: missing, but the model has per-layer embeddings "
                          f"(config.hidden_size_per_layer_input {cfg.hidden_size_per_layer_input}): without its "
                          "table every PLE row would be zero")
    _check_methods(m["methods"], where, m["prefill_chunk"])
    _check_vision(m, cfg, vocab, where)
    _check_audio(m, cfg, vocab, where)
    v = m.get("chat_template")
    _expect(v is None or isinstance(v, str), where, "chat_template", "a string or null", v)
    v = m.get("export", {})
    _expect(isinstance(v, dict), where, "export", "an object", v)
    return manifest


def read_manifest(bundle_dir: str | Path) -> dict:
    """The bundle's manifest, read and validated (validate_manifest); BundleError names what is wrong."""
    path = Path(bundle_dir) / MANIFEST_FILE
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (not an export bundle?)") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from e
    if not stat.S_ISREG(st.st_mode):   # a FIFO would block the open below forever
        raise BundleError(f"{path}: expected a regular file, found a {_file_kind(st.st_mode)}")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise BundleError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from e
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise BundleError(f"{path}: not valid JSON (nested too deeply)") from e
    return validate_manifest(manifest, bundle_dir)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def verify_bundle(bundle_dir: str | Path, full_hash: bool = True, hash_ple: bool | None = None,
                  manifest: dict | None = None) -> list[str]:
    """Problems found comparing the files with the manifest (empty list: the bundle is whole).

    Sizes always; SHA-256 when `full_hash` (for the LAZY_ROLES — the .ple and the vision program — only when
    `hash_ple`, default `full_hash`: the .ple's header, size and identity are checked regardless, and
    hashing reads the whole table; the vision program is hashed by its loader). `manifest`: the bundle's,
    when the caller has read it already."""
    bundle_dir = Path(bundle_dir)
    manifest = manifest if manifest is not None else read_manifest(bundle_dir)
    hash_ple = full_hash if hash_ple is None else hash_ple
    problems = []
    for role, entry in manifest["files"].items():
        path = bundle_file(bundle_dir, manifest, role)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(f"{path}: missing ({role} file named in the manifest)")
            continue
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):   # never open a FIFO or a device: it could block or never end
            problems.append(f"{path}: expected a regular file, found a {_file_kind(st.st_mode)}")
            continue
        if st.st_size != entry["bytes"]:
            problems.append(f"{path}: size: expected {entry['bytes']} bytes (manifest files.{role}.bytes), "
                            f"found {st.st_size}")
            continue
        if full_hash and (role not in LAZY_ROLES or hash_ple):
            try:
                digest = sha256_file(path, drop_cache=role == "ple")
            except OSError as e:
                problems.append(f"{path}: cannot read ({e.strerror})")
                continue
            if digest != entry["sha256"]:
                problems.append(f"{path}: sha256: expected {entry['sha256']} (manifest files.{role}.sha256), "
                                f"found {digest}")
        if role == "ple":
            from gemma_edge.ple_store import open as open_ple

            try:
                with open_ple(path) as reader:
                    identity = reader.header.identity.hex()
            except ValueError as e:
                problems.append(str(e))
                continue
            except OSError as e:
                problems.append(f"{path}: cannot read ({e.strerror})")
                continue
            if identity != entry.get("identity"):
                problems.append(f"{path}: PLE identity: expected {entry.get('identity')} (manifest "
                                f"files.ple.identity), found {identity} in the .ple header (a PLE file from "
                                "another export)")
    return problems


# ExecuTorch's flatbuffer file identifier (schema/program.fbs), at bytes 4..8 of every .pte. Program::load
# checks it too, but logs a mismatch with the raw bytes, which ExecuTorch's Python bindings decode as UTF-8
# inside a noexcept callback: a garbage file aborts the process there (SIGABRT), before any error is raised.
PROGRAM_IDENTIFIER = b"ET12"


def check_program_header(path: Path) -> None:
    """Refuse a file that is not an ExecuTorch program before ExecuTorch itself reads it."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from e
    if len(head) < 8 or head[4:8] != PROGRAM_IDENTIFIER:
        raise BundleError(f"{path}: file identifier: expected {PROGRAM_IDENTIFIER!r} at bytes 4..8 (an ExecuTorch "
                          f"program), found {head[4:8]!r}")


def check_bundle(bundle_dir: str | Path, manifest: dict, full_hash: bool = True, hash_ple: bool | None = None) -> None:
    """verify_bundle, raising one BundleError that lists every problem on one line."""
    problems = verify_bundle(bundle_dir, full_hash, hash_ple, manifest=manifest)
    if problems:
        raise BundleError(f"{bundle_dir}: bundle does not match its manifest: " + "; ".join(problems))

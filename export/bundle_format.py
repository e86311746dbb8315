"""The export bundle's names and manifest: the one constants module the exporter and every runtime share.

A bundle is a folder: `model.pte` (RAM-resident program), `model.ple` (flash-resident PLE table),
`manifest.json` (what binds them), and the checkpoint's tokenizer files. The program's step:
`(tokens [1,T] i64, input_pos [T] i64, ple_rows [1,T,L,P] f32, attend_len [N] i64) -> logits [1,V] f32`,
N = input_pos[-1] + 1: the cache positions the step attends, given by attend_len's length (its values are
not read; revision ≥ 5, older programs take the first three inputs only). The manifest's
`methods` maps the two roles — `prefill` (1 ≤ T ≤ prefill_chunk) and `decode` (T = 1) — to the program
method that plays each: by default one dynamic method `forward` plays both (one copy of the packed
weights); a two-method export has `prefill` and `decode` sharing one KV-cache state.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = "gemma-edge-bundle"
FORMAT_VERSION = 1
# How the program computes inside (its inputs and outputs are the format's): bumped when an export of the
# same checkpoint and settings would build a different program, so an older one is never reused as current.
# 2: KV caches written in place (llama::update_cache), sliding rings of window + chunk, mean square as a linear.
# 3: one XNNPACK partitioner for quantized and fp32 ops (fewer delegate calls), cache views outside delegates.
# 4: a step past the last K/V-owning layer runs the last position only (E2B prefill: 20 of 35 layers skipped).
# 5: attention reads only the written cache slots, bounded by a fourth input, attend_len (its length).
PROGRAM_REVISION = 5
PROGRAM_FILE = "model.pte"
PLE_FILE = "model.ple"
ONNX_FILE = "model.onnx"
PER_CHANNEL = 0  # quantization.group_size meaning one scale per output channel (LiteRT-LM's gemma4_mixed48 too)


def granularity_name(group_size) -> str:
    """How a manifest's / budget's group_size reads: "per-channel" for PER_CHANNEL, else "group N"."""
    return "per-channel" if group_size == PER_CHANNEL else f"group {group_size}"

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
PREFILL_ROLE = "prefill"
DECODE_ROLE = "decode"
STEP_METHOD = "forward"  # the one dynamic method of a one-method export
INPUT_NAMES = ("tokens", "input_pos", "ple_rows", "attend_len")
OUTPUT_NAMES = ("logits",)
REQUIRED_KEYS = ("model_hash", "config", "max_context", "prefill_chunk", "bos_token_id", "eos_token_ids",
                 "vocab_size", "num_layers", "ple_dim", "quantization", "files", "methods")
FILE_ROLES = {"program": PROGRAM_FILE, "ple": PLE_FILE, "onnx": ONNX_FILE, "tokenizer": TOKENIZER_FILE}


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


def method_signature(t: int | str, num_layers: int, ple_dim: int) -> dict:
    return {
        "inputs": [{"name": "tokens", "dtype": "int64", "shape": [1, t]},
                   {"name": "input_pos", "dtype": "int64", "shape": [t]},
                   {"name": "ple_rows", "dtype": "float32", "shape": [1, t, num_layers, ple_dim]},
                   {"name": "attend_len", "dtype": "int64", "shape": ["N"]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "V"]}],
    }


def method_names_for(methods: str) -> dict[str, str]:
    """Program method per role for an export's `methods` setting: "one" (a dynamic `forward`) or "two"."""
    if methods == "one":
        return {PREFILL_ROLE: STEP_METHOD, DECODE_ROLE: STEP_METHOD}
    if methods == "two":
        return {PREFILL_ROLE: PREFILL_ROLE, DECODE_ROLE: DECODE_ROLE}
    raise ValueError(f"methods: expected 'one' or 'two', found {methods!r}")


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
                   ple_report=None, checkpoint: Path | None = None) -> dict:
    """The manifest for the files now in `bundle_dir` (hashes and sizes computed here)."""
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
        "methods": {role: {"method": method_names_for(settings["methods"])[role], **method_signature(t, layers, p),
                           "max_tokens": settings["prefill_chunk"] if t == "T" else 1}
                    for role, t in ((PREFILL_ROLE, "T"), (DECODE_ROLE, 1))},
        "chat_template": chat_template,
        "export": {"stages": stages, "source_checkpoint": str(checkpoint) if checkpoint else None,
                   "program_revision": PROGRAM_REVISION},
    }
    if ple_report is not None:
        import dataclasses

        error = getattr(ple_report, "quant_error", None)
        manifest["export"]["ple_quant_error"] = dataclasses.asdict(error) if dataclasses.is_dataclass(error) else error
    return manifest


def read_manifest(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.exists():
        raise BundleError(f"{path}: missing (not an export bundle?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')}, expected {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: keys {missing} missing (expected every one of {list(REQUIRED_KEYS)})")
    return manifest


def verify_bundle(bundle_dir: str | Path, full_hash: bool = True, hash_ple: bool | None = None) -> list[str]:
    """Problems found comparing the files with the manifest (empty list: the bundle is whole).

    Sizes always; SHA-256 when `full_hash` (for the .ple only when `hash_ple`, default `full_hash`: its
    header, size and identity are checked regardless, and hashing reads the whole table)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    hash_ple = full_hash if hash_ple is None else hash_ple
    problems = []
    for role, entry in manifest["files"].items():
        path = bundle_dir / entry["path"]
        if not path.exists():
            problems.append(f"{path}: missing ({role} file named in the manifest)")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems.append(f"{path}: size: expected {entry['bytes']} bytes (manifest files.{role}.bytes), "
                            f"found {size}")
            continue
        if full_hash and (role != "ple" or hash_ple):
            digest = sha256_file(path, drop_cache=role == "ple")
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
            if identity != entry.get("identity"):
                problems.append(f"{path}: PLE identity: expected {entry.get('identity')} (manifest "
                                f"files.ple.identity), found {identity} in the .ple header (a PLE file from "
                                "another export)")
    return problems

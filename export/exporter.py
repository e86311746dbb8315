"""Checkpoint → bundle: the RAM-resident ExecuTorch program, the flash-resident PLE file, a manifest.

A short chain of named stages — load → rewrite → quantize → export → lower → to_executorch → save —
each logged with its time and the process's peak RSS. The bundle is assembled in a temporary folder
beside the target (`<out>.partial-<pid>-*`, locked while its export runs) and renamed into place at the
end, so a crash never leaves a bundle that looks whole; the next export removes the partials of dead
exports. `--overwrite` replaces only a folder that is a gemma-edge bundle (`bundle_problem`), swapping
the new bundle in before the old one is deleted.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import logging
import os
import re
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from gemma_edge.contract import bundle_format as bf
from gemma_edge.contract.config import TextConfig
from gemma_edge.contract.image import DEFAULT_BUDGET, PATCH_DIM

from . import rewrites
from .audio import AudioConfig
from .audio_export import DEFAULT_QUANT as DEFAULT_AUDIO_QUANT
from .audio_export import MAX_TOKENS as AUDIO_MAX_TOKENS
from .audio_export import measure_activations as measure_audio_activations
from .checkpoint import audio_tokens_of, image_tokens_of, load_checkpoint, model_hash, open_checkpoint, ple_row_chunks
from .files import ExportError, fsync_dir, fsync_tree, fsync_write, writing
from .onnx_export import export_onnx
from .step import InPlaceKVStep, example_inputs
from .vision import VisionConfig
from .vision_export import DEFAULT_BLOCK_Q, check_budgets, measure_activations
from .vision_export import DEFAULT_QUANT as DEFAULT_VISION_QUANT

log = logging.getLogger("gemma_edge.export")

PLE_DTYPES = ("fp32", "bf16", "int8", "int4")
FORMATS = ("pte", "onnx", "both")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "generation_config.json")


# Defaults of the settings that depend on the model, each capped by what the model allows.
DEFAULT_MAX_CONTEXT = 1024  # ≤ max_position_embeddings
DEFAULT_PREFILL_CHUNK = 128  # ≤ sliding_window and ≤ max_context


@dataclass
class ExportSettings:
    """What the CLI's export options build; recorded in the manifest (with every default filled in)."""

    quant: str = "8da4w"  # linears and the untied head: none | 8da4w (int8 dyn. act., int4 weights) | 8da8w
    group_size: int = 0  # 8da4w: 0 = one scale per output channel (bundle_format.PER_CHANNEL), else weights per group
    # Main embedding, per row. None: follows `quant` — "none" for an unquantized program, else "int4".
    embedding_quant: str | None = None
    ple_dtype: str = "int4"  # the .ple file's rows (not part of the program)
    max_context: int | None = None  # None: min(DEFAULT_MAX_CONTEXT, the model's max_position_embeddings)
    prefill_chunk: int | None = None  # None: min(DEFAULT_PREFILL_CHUNK, the model's sliding_window, max_context)
    formats: tuple[str, ...] = ("pte",)
    methods: str = "one"  # one dynamic `forward` plays prefill and decode | two: `prefill` + `decode`
    # The vision tower, lowered to vision.pte whenever the checkpoint has one (False: a text-only bundle).
    vision: bool = True
    image_budgets: tuple[int, ...] = (DEFAULT_BUDGET,)  # one static method per budget (soft tokens per image)
    vision_quant: str = DEFAULT_VISION_QUANT  # 8da8w | 8da4w | none
    # The audio front end and tower, lowered to audio.pte whenever the checkpoint has one (False: leave it out).
    audio: bool = True
    audio_quant: str = DEFAULT_AUDIO_QUANT  # 8da8w | 8da4w | none

    def __post_init__(self) -> None:
        if self.embedding_quant is None:
            self.embedding_quant = "none" if self.quant == "none" else "int4"

    def fill_defaults(self, cfg: TextConfig) -> "ExportSettings":
        """Fill the model-dependent settings left as None from `cfg` (in place; returns self)."""
        if self.max_context is None:
            self.max_context = min(DEFAULT_MAX_CONTEXT, cfg.max_position_embeddings)
        if self.prefill_chunk is None:
            self.prefill_chunk = min(DEFAULT_PREFILL_CHUNK, cfg.sliding_window, self.max_context)
        return self

    def validate(self, cfg: TextConfig) -> None:
        if self.quant not in rewrites.LINEAR_QUANT:
            raise ValueError(f"quant: expected one of {rewrites.LINEAR_QUANT}, found {self.quant!r}")
        if self.embedding_quant not in rewrites.EMBEDDING_QUANT:
            raise ValueError(f"embedding_quant: expected one of {rewrites.EMBEDDING_QUANT}, "
                             f"found {self.embedding_quant!r}")
        if self.group_size < 0:
            raise ValueError(f"group_size: expected 0 (one scale per output channel) or a group size ≥ 1, "
                             f"found {self.group_size}")
        if self.ple_dtype not in PLE_DTYPES:
            raise ValueError(f"ple_dtype: expected one of {PLE_DTYPES}, found {self.ple_dtype!r}")
        self.fill_defaults(cfg)
        for name in ("group_size", "max_context", "prefill_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name}: expected an integer, found {v!r}")
        if not 1 <= self.prefill_chunk <= min(cfg.sliding_window, self.max_context):
            raise ValueError(f"prefill_chunk: expected 1..{min(cfg.sliding_window, self.max_context)} "
                             f"(≤ sliding_window, so one step never overruns the ring), found {self.prefill_chunk}")
        if not 2 <= self.max_context <= cfg.max_position_embeddings:
            raise ValueError(f"max_context: expected 2..{cfg.max_position_embeddings}, found {self.max_context}")
        bf.method_names_for(self.methods)  # refuses anything but "one" / "two"
        self.image_budgets = check_budgets(self.image_budgets)
        if self.vision_quant not in bf.VISION_QUANT:
            raise ValueError(f"vision_quant: expected one of {bf.VISION_QUANT}, found {self.vision_quant!r}")
        if self.audio_quant not in bf.AUDIO_QUANT:
            raise ValueError(f"audio_quant: expected one of {bf.AUDIO_QUANT}, found {self.audio_quant!r}")
        bad = set(self.formats) - {"pte", "onnx"}
        if bad:
            raise ValueError(f"formats: expected pte and/or onnx, found {sorted(bad)}")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StageLog:
    """Times each stage and records the peak RSS after it; kept in the manifest."""

    def __init__(self):
        self.stages: list[dict] = []

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        log.info("stage %s ...", name)
        out = fn(*args, **kwargs)
        entry = {"stage": name, "seconds": round(time.perf_counter() - start, 2),
                 "peak_rss_gb": round(peak_rss_bytes() / 2**30, 2)}
        self.stages.append(entry)
        log.info("stage %s done in %.1f s (peak RSS %.2f GiB)", name, entry["seconds"], entry["peak_rss_gb"])
        return out


def prepare_model(checkpoint: Path, settings: ExportSettings, stages: StageLog, progress: bool):
    """Load without the PLE table, untie and quantize the head/linears/embedding, set up the caches."""
    cfg, model = stages.run("load", load_checkpoint, checkpoint, dtype=None, load_ple_table=False,
                            progress=progress)
    settings.validate(cfg)  # fills the defaults that follow the model
    model = stages.run("rewrite", rewrites.untie_head, model)
    stages.run("quantize_linears", rewrites.quantize_linears, model, settings.quant, settings.group_size, progress)
    stages.run("quantize_embedding", rewrites.quantize_embedding, model, settings.embedding_quant)
    rewrites.to_float32(model)
    rewrites.replace_rmsnorm_for_xnnpack(model)
    rewrites.replace_gelu_for_xnnpack(model)
    model.setup_cache(settings.max_context, dtype=torch.float32)
    return cfg, model.eval()


def export_programs(cfg: TextConfig, model: nn.Module, settings: ExportSettings):
    """torch.export the step over one shared model: one method of dynamic length 1..prefill_chunk that
    plays both roles (`methods="one"`), or a dynamic `prefill` and a T = 1 `decode` (`methods="two"`)."""
    step = InPlaceKVStep(model, settings.prefill_chunk).eval()
    n = torch.export.Dim("N", min=1, max=settings.max_context)   # attend_len: slots attended
    one_token = {"tokens": {}, "input_pos": {}, "ple_rows": {}, "attend_len": {0: n}, "soft_embeds": {}}
    shapes = dict(one_token)
    if settings.prefill_chunk > 1:
        t = torch.export.Dim("T", min=1, max=settings.prefill_chunk)
        shapes.update({"tokens": {1: t}, "input_pos": {0: t}, "ple_rows": {1: t}, "soft_embeds": {1: t}})
    names = bf.method_names_for(settings.methods)
    with torch.no_grad():
        dynamic = torch.export.export(step, example_inputs(cfg, min(2, settings.prefill_chunk)),
                                      dynamic_shapes=shapes, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
        if settings.methods == "one":
            return {names["prefill"]: dynamic}
        decode = torch.export.export(step, example_inputs(cfg, 1), strict=False,
                                     dynamic_shapes=one_token,
                                     prefer_deferred_runtime_asserts_over_guards=True)
    return {names["prefill"]: dynamic, names["decode"]: decode}


def _partitioner_configs():
    """XNNPACK's partitioner configs, with two ops kept out of delegates.

    - A view of a KV cache. A cache reaches a delegate as an external input, and XNNPACK runs a reshape of
      an external input as a copy: every layer copied the caches it attends, every step (ETDump;
      (figures: bench/RESULTS.md, "Figures behind design choices")). Left outside, the view is an `et_view`
      over the cache's memory, and the delegate reads the cache in place. A cache is a buffer placeholder,
      or the output of the in-place update that wrote it, seen through any chain of views.
    - A layer's closing multiply by its `layer_scalar`, so that no delegate spans layers. XNNPACK keeps a
      delegate's source weights mapped until it has packed them all: the 20 E2B layers past the last K/V
      owner, which run one position in a prefill and so have no native op between them, became one
      large delegate and raised the peak RSS at load. Outside, the multiply is one native
      op per layer on [1, T, hidden]."""
    import operator

    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import MulConfig, ViewCopyConfig
    from executorch.exir.dialects._ops import ops as exir_ops

    # Ops named, not matched by string: a rename upstream fails here, loudly, instead of the rule lapsing.
    view = exir_ops.edge.aten.view_copy.default
    in_place_update = (torch.ops.higher_order.auto_functionalized, torch.ops.higher_order.auto_functionalized_v2)

    def views_a_cache(node, ep) -> bool:
        src = node.args[0]
        while src.op == "call_function" and src.target == view:
            src = src.args[0]
        if src.op == "placeholder":
            return src.name in ep.graph_signature.inputs_to_buffers
        return src.target is operator.getitem and src.args[0].target in in_place_update

    def scales_a_layer(node, ep) -> bool:
        buffers = ep.graph_signature.inputs_to_buffers
        return any(getattr(a, "op", None) == "placeholder" and buffers.get(a.name, "").endswith(".layer_scalar")
                   for a in node.args)

    class CacheViewOutside(ViewCopyConfig):
        def check_constraints(self, node, ep) -> bool:
            return not views_a_cache(node, ep) and super().check_constraints(node, ep)

    class LayerScaleOutside(MulConfig):
        def check_constraints(self, node, ep) -> bool:
            return not scales_a_layer(node, ep) and super().check_constraints(node, ep)

    swap = {ViewCopyConfig: CacheViewOutside, MulConfig: LayerScaleOutside}
    return [swap.get(c, c) for c in ALL_PARTITIONER_CONFIGS]


def lower_to_executorch(programs: dict):
    """XNNPACK-lower the methods into one program whose KV caches are shared between them.

    One partitioner takes quantized linears and fp32 ops together, so each run of delegable ops between two
    native ones (cache writes, the PLE slices) is one delegate call. ExecuTorch's usual pair — a dynamically
    quantized partitioner first, then an fp32 one — makes every linear its own delegate, and the fp32 ops
    between them more: about five times the delegate calls per step, and one graph recompilation per
    partition while lowering, which made lowering slower. The time a decode step spends between XNNPACK
    operators did not shrink with the count (ETDump): it is per operator (figures: bench/RESULTS.md,
    "Figures behind design choices")."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner(configs=_partitioner_configs())],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=True)))


def _copy_from(source: Path):
    def write(f) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f, 16 << 20)
    return write


def write_ple(checkpoint: Path, path: Path, cfg: TextConfig, dtype: str, mhash: bytes, progress: bool):
    from gemma_edge.ple_store import write

    return write(path, ple_row_chunks(checkpoint, chunk_rows=2048), vocab_size=cfg.vocab_size_per_layer_input,
                 num_layers=cfg.num_hidden_layers, ple_dim=cfg.hidden_size_per_layer_input, dtype=dtype,
                 embed_scale=cfg.ple_scale, model_hash=mhash, progress=progress)


def write_vision(checkpoint: Path, path: Path, settings: ExportSettings):
    """Lower the checkpoint's vision tower (mapped, prepared in place: its weights are read once) to `path`."""
    from .vision import load_vision_tower
    from .vision_export import write_vision_program

    tower = load_vision_tower(checkpoint, dtype=None)
    quant = None if settings.vision_quant == "none" else settings.vision_quant
    written = write_vision_program(tower, path, settings.image_budgets, quant, DEFAULT_BLOCK_Q, in_place=True)
    for method, ops in written.undelegated.items():
        if ops:
            log.info("vision %s: outside XNNPACK: %s", method, ops)
    return written


def write_audio(checkpoint: Path, path: Path, settings: ExportSettings):
    """Lower the checkpoint's audio tower and front end (mapped, prepared in place) to `path`."""
    from .audio import load_audio_tower
    from .audio_export import write_audio_program

    tower = load_audio_tower(checkpoint, dtype=None)
    quant = None if settings.audio_quant == "none" else settings.audio_quant
    written = write_audio_program(tower, path, quant, in_place=True)
    if written.undelegated:
        log.info("audio: outside XNNPACK: %s", written.undelegated)
    return written


def reusable_program(bundle_dir: str | Path, mhash: bytes, settings: ExportSettings,
                     soft_token_ids: tuple[int, ...] = ()) -> Path:
    """The `model.pte` of an earlier bundle when it is the very program `settings` would build from this
    checkpoint: same checkpoint hash, linear and embedding quantization, context, chunk, methods and the
    placeholder ids it splices soft tokens at (`soft_token_ids`, the checkpoint's). The
    PLE dtype is not part of the program (it takes fp32 rows), so a bundle with another PLE dtype can be
    made without quantizing and lowering again."""
    bundle_dir = Path(bundle_dir)
    m = bf.read_manifest(bundle_dir)
    try:
        return _reusable_program(bundle_dir, m, mhash, settings, soft_token_ids)
    except (KeyError, TypeError, AttributeError) as e:  # a manifest field missing or of the wrong type
        raise ExportError(f"--reuse-program {bundle_dir / bf.MANIFEST_FILE}: cannot read field {e} "
                          f"({type(e).__name__})") from e


def _reusable_program(bundle_dir: Path, m: dict, mhash: bytes, settings: ExportSettings,
                      soft_token_ids: tuple[int, ...]) -> Path:
    q = m["quantization"]
    want = {"model_hash": mhash.hex(), "linear": settings.quant, "group_size": settings.group_size,
            "embedding": settings.embedding_quant, "max_context": settings.max_context,
            "prefill_chunk": settings.prefill_chunk, "methods": bf.method_names_for(settings.methods),
            "program_revision": bf.PROGRAM_REVISION, "soft_token_ids": list(soft_token_ids)}
    found = {"model_hash": m["model_hash"], "linear": q["linear"], "group_size": q.get("group_size"),
             "embedding": q["embedding"], "max_context": m["max_context"], "prefill_chunk": m["prefill_chunk"],
             "methods": bf.role_methods(m), "program_revision": m["export"].get("program_revision", 1),
             # the ids the program splices at are in its graph: a bundle written before audio existed has none
             "soft_token_ids": m["export"].get("soft_token_ids")}
    diff = [f"{k}: this export {want[k]!r}, that bundle {found[k]!r}" for k in want if want[k] != found[k]]
    if diff:
        raise ExportError(f"--reuse-program {bundle_dir}: not the program this export would build — " + "; ".join(diff))
    entry = m["files"].get("program")
    path = bundle_dir / bf.PROGRAM_FILE
    if entry is None or not path.exists():
        raise ExportError(f"--reuse-program {bundle_dir}: no {bf.PROGRAM_FILE} in that bundle")
    if bf.sha256_file(path) != entry["sha256"]:
        raise ExportError(f"--reuse-program {path}: sha256 does not match its manifest (file changed?)")
    return path


# ---------------------------------------------------------------- the output folder
# What a bundle folder may hold besides its manifest: the files an export writes, ONNX's external data, and
# the native host's XNNPACK weight cache (named after the program, `model.pte.<digest>.xnnpack_cache`) and the
# sidecar holding that cache's own digest (`….xnnpack_cache.sha256`).
BUNDLE_FILES = frozenset({bf.MANIFEST_FILE, *bf.FILE_ROLES.values(), bf.ONNX_FILE + ".data", *TOKENIZER_FILES})
WEIGHT_CACHE_SUFFIXES = (".xnnpack_cache", ".xnnpack_cache.sha256")
PARTIAL_INFIX, ASIDE_INFIX = ".partial-", ".replaced-"


def bundle_problem(folder: Path) -> str | None:
    """Why `folder` is not a gemma-edge bundle that --overwrite may delete, or None when it is one: a
    manifest.json of format gemma-edge-bundle and nothing but regular files of BUNDLE_FILES and weight
    caches (no subfolder, no link, no file a bundle never holds — a user's files are never deleted)."""
    manifest = folder / bf.MANIFEST_FILE
    if not manifest.is_file():
        return f"no {bf.MANIFEST_FILE}: not a gemma-edge bundle"
    try:
        m = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{bf.MANIFEST_FILE} cannot be read as JSON ({e})"
    found = m.get("format") if isinstance(m, dict) else type(m).__name__
    if found != bf.FORMAT:
        return f"{bf.MANIFEST_FILE} format is {found!r}, not {bf.FORMAT!r}"
    strangers = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.iterdir()
                       if p.is_symlink() or not p.is_file()
                       or not (p.name in BUNDLE_FILES or p.name.endswith(WEIGHT_CACHE_SUFFIXES)))
    if strangers:
        return f"holds {len(strangers)} entr{'y' if len(strangers) == 1 else 'ies'} a bundle never does {strangers[:6]}"
    return None


def check_output(checkpoint: Path, out_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder the export must not write: the checkpoint, inside it, or above it (symlinks
    resolved); an existing path without `overwrite`; with it, anything but a gemma-edge bundle."""
    ckpt, out = checkpoint.resolve(), out_dir.resolve()
    if out == ckpt or ckpt in out.parents:
        raise ExportError(f"--out {out_dir}: is {'the checkpoint' if out == ckpt else 'inside the checkpoint'} "
                          f"{checkpoint}; write the bundle elsewhere")
    if out in ckpt.parents:
        raise ExportError(f"--out {out_dir}: holds the checkpoint {checkpoint}; write the bundle elsewhere")
    above = next((p for p in out_dir.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ExportError(f"--out {out_dir}: {above} is not a folder")
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True / --overwrite to replace a bundle)")
    if out_dir.is_symlink():
        raise ExportError(f"--out {out_dir}: is a symbolic link (to {os.readlink(out_dir)}); --overwrite replaces "
                          "only a bundle folder itself")
    if not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: not a folder; --overwrite replaces only a gemma-edge bundle folder")
    problem = bundle_problem(out_dir)
    if problem:
        raise ExportError(f"--out {out_dir}: {problem}; --overwrite replaces only a gemma-edge bundle folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def _locked(folder: Path, *, wait: bool):
    """An exclusive flock on a folder, held while the block runs; yields False (without waiting) when
    another process holds it and `wait` is False. The kernel drops a killed process's lock."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _only_bundle_files(folder: Path) -> bool:
    """Whether every entry of `folder` is a regular file a bundle holds (an older export's partial), so that
    deleting it can lose no file of a user's."""
    return all(not p.is_symlink() and p.is_file() and (p.name in BUNDLE_FILES or p.name.endswith(WEIGHT_CACHE_SUFFIXES))
               for p in folder.iterdir())


def remove_stale_partials(out_dir: Path) -> list[str]:
    """Delete the `<out>.partial-<pid>-*` folders of exports that died (killed, or the machine went down)
    and the old bundles a dead export had moved aside (`<out>.replaced-*`; put back when `<out>` is gone).

    Stale means: unlocked, and its pid (when the name carries one) no longer a running process — a live
    export holds a lock on its partial, and a pid reused by another process keeps it (a leak, never a loss).
    Returns one line per folder removed or restored."""
    done = []
    for path in sorted(out_dir.parent.glob(glob.escape(out_dir.name) + "*")):
        rest = path.name[len(out_dir.name):]
        if not rest.startswith((PARTIAL_INFIX, ASIDE_INFIX)) or path.is_symlink() or not path.is_dir():
            continue
        pid = re.match(r"-(\d+)-", rest[rest.index("-"):])
        if pid and _pid_alive(int(pid.group(1))):
            continue
        owner = f"export pid {pid.group(1)}" if pid else "an earlier export"
        if not pid and not _only_bundle_files(path):
            continue  # a pid-less name may be a user's own folder: removed only if it holds bundle files alone
        try:
            with _locked(path, wait=False) as free:
                if not free:
                    continue
                if rest.startswith(ASIDE_INFIX) and not (out_dir.exists() or out_dir.is_symlink()):
                    os.rename(path, out_dir)
                    done.append(f"restored {out_dir} from {path.name} (moved aside by {owner}, which died)")
                    continue
                size = _tree_bytes(path)
                shutil.rmtree(path)
                done.append(f"removed {path} ({size / 2**20:.1f} MiB) left by {owner}, no longer running")
        except OSError as e:  # not ours to remove after all (permissions): say so, and go on with the export
            done.append(f"could not remove {path} left by {owner}: {e.strerror or e}")
    for line in done:
        log.warning("%s", line)
    return done


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the C library or the filesystem lacks it (the caller falls back)."""
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _install(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Put the finished bundle `tmp` at `out_dir`. An existing bundle there is swapped out in one atomic
    exchange (renameat2) — `out_dir` is always one whole bundle, old or new — and deleted afterwards; where
    the filesystem cannot exchange, it is renamed aside (`<out>.replaced-*`, put back if the new one cannot
    be renamed in, restored by the next export if this one dies in between) before the new one moves in."""
    fsync_tree(tmp)
    if not (out_dir.exists() or out_dir.is_symlink()):
        if not _renameat2(tmp, out_dir, _RENAME_NOREPLACE):
            if out_dir.exists():
                raise ExportError(f"{out_dir}: appeared while exporting; the new bundle was not installed")
            os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
        return
    if not overwrite:
        raise ExportError(f"{out_dir}: appeared while exporting; the new bundle was not installed")
    problem = bundle_problem(out_dir)  # again: files may have been put there while the export ran
    if problem:
        raise ExportError(f"--out {out_dir}: {problem}; --overwrite replaces only a gemma-edge bundle folder")
    if _renameat2(tmp, out_dir, _RENAME_EXCHANGE):
        fsync_dir(out_dir.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the old bundle, now under the partial's name (or the next
        return                                   # export's cleanup takes what is left of it)
    aside = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}{ASIDE_INFIX}{os.getpid()}-", dir=out_dir.parent))
    with _locked(out_dir, wait=True):  # a concurrent cleanup must not take it for a dead export's
        os.rename(out_dir, aside)  # replaces the empty folder mkdtemp made
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(aside, out_dir)
            raise
    fsync_dir(out_dir.parent)
    shutil.rmtree(aside, ignore_errors=True)


# ---------------------------------------------------------------- the export
def export_bundle(checkpoint_dir: str | Path, out_dir: str | Path, settings: ExportSettings | None = None,
                  progress: bool = True, overwrite: bool = False, reuse_program: str | Path | None = None) -> Path:
    """Write `out_dir/{model.pte, model.ple, manifest.json, tokenizer files}` for a checkpoint.

    Everything that can be checked without the weights is checked first: the output folder
    (`check_output`), the checkpoint's config and file structure, the settings (defaults filled from the
    model). `overwrite` replaces only a gemma-edge bundle. `reuse_program`: an earlier bundle of the same
    checkpoint and program settings whose `model.pte` is copied instead of quantizing and lowering again
    (see `reusable_program`); pte format only."""
    # Absolute and without "." / "..": the partial goes beside the folder named (`--out .` included).
    checkpoint, out_dir = Path(checkpoint_dir), Path(os.path.abspath(out_dir))
    remove_stale_partials(out_dir)  # first: it may put back the bundle a dead export had moved aside
    check_output(checkpoint, out_dir, overwrite)
    cfg = open_checkpoint(checkpoint).config
    settings = replace(settings or ExportSettings())  # the caller's object keeps its unfilled defaults
    settings.validate(cfg)
    if reuse_program is not None and "onnx" in settings.formats:
        raise ExportError("--reuse-program: copies a .pte only; export ONNX without it")
    with writing(out_dir.parent):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    with writing(out_dir.parent):
        tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}{PARTIAL_INFIX}{os.getpid()}-", dir=out_dir.parent))
    try:
        with _locked(tmp, wait=True):
            _export_into(tmp, checkpoint, cfg, settings, progress, reuse_program)
            with writing(out_dir):
                _install(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _export_into(tmp: Path, checkpoint: Path, cfg: TextConfig, settings: ExportSettings, progress: bool,
                 reuse_program: str | Path | None) -> None:
    """The stages, writing every file of the bundle into `tmp`."""
    stages = StageLog()
    mhash = stages.run("hash_checkpoint", model_hash, checkpoint)
    if reuse_program is not None:
        source = reusable_program(reuse_program, mhash, settings, open_checkpoint(checkpoint).soft_token_ids)
    else:
        cfg, model = prepare_model(checkpoint, settings, stages, progress)
    ple_report = None
    if cfg.has_ple:
        with writing(tmp / bf.PLE_FILE):
            ple_report = stages.run("write_ple", write_ple, checkpoint, tmp / bf.PLE_FILE, cfg, settings.ple_dtype,
                                    mhash, progress)
    if reuse_program is not None:
        with writing(tmp / bf.PROGRAM_FILE):
            stages.run("copy_pte", fsync_write, tmp / bf.PROGRAM_FILE, _copy_from(source))
    elif "pte" in settings.formats:
        programs = stages.run("torch_export", export_programs, cfg, model, settings)
        et_program = stages.run("lower_xnnpack", lower_to_executorch, programs)
        del programs
        with writing(tmp / bf.PROGRAM_FILE):
            stages.run("save_pte", fsync_write, tmp / bf.PROGRAM_FILE, et_program.write_to_file)
        del et_program
    if "onnx" in settings.formats:
        with writing(tmp / bf.ONNX_FILE):
            stages.run("export_onnx", export_onnx, cfg, model, settings, tmp / bf.ONNX_FILE)
    vision = None
    image_tokens = image_tokens_of(checkpoint / "config.json", cfg)
    if settings.vision and image_tokens is not None and "pte" in settings.formats:
        with writing(tmp / bf.VISION_FILE):
            stages.run("lower_vision", write_vision, checkpoint, tmp / bf.VISION_FILE, settings)
            activations = stages.run("measure_vision", measure_activations, tmp / bf.VISION_FILE,
                                     settings.image_budgets)
        vision = bf.vision_entry(model_hash=mhash, budgets=settings.image_budgets, hidden_size=cfg.hidden_size,
                                 patch_dim=PATCH_DIM, image_tokens=image_tokens.manifest_dict(),
                                 quantization=settings.vision_quant, block_q=DEFAULT_BLOCK_Q,
                                 config=VisionConfig.from_json(checkpoint / "config.json").to_dict(),
                                 activation_bytes=activations)
    audio = None
    audio_tokens = audio_tokens_of(checkpoint / "config.json", cfg)
    if settings.audio and audio_tokens is not None and "pte" in settings.formats:
        with writing(tmp / bf.AUDIO_FILE):
            stages.run("lower_audio", write_audio, checkpoint, tmp / bf.AUDIO_FILE, settings)
            activations = stages.run("measure_audio", measure_audio_activations, tmp / bf.AUDIO_FILE)
        audio = bf.audio_entry(model_hash=mhash, hidden_size=cfg.hidden_size, max_tokens=AUDIO_MAX_TOKENS,
                               audio_tokens=audio_tokens.manifest_dict(), quantization=settings.audio_quant,
                               config=AudioConfig.from_json(checkpoint / "config.json").to_dict(),
                               activation_bytes=activations)
    for name in TOKENIZER_FILES:
        if (checkpoint / name).exists():
            with writing(tmp / name):
                shutil.copy2(checkpoint / name, tmp / name)
    manifest = bf.build_manifest(tmp, cfg=cfg, settings=asdict(settings), model_hash=mhash,
                                 stages=stages.stages, ple_report=ple_report, checkpoint=checkpoint,
                                 vision=vision, audio=audio, soft_token_ids=open_checkpoint(checkpoint).soft_token_ids)
    if reuse_program is not None:
        manifest["export"]["program_reused_from"] = str(reuse_program)
    bf.validate_manifest(manifest, tmp)  # what every runtime will check, before the bundle is installed
    with writing(tmp / bf.MANIFEST_FILE):
        fsync_write(tmp / bf.MANIFEST_FILE, lambda f: f.write(json.dumps(manifest, indent=2).encode()))

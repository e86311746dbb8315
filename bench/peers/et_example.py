"""ExecuTorch's own Gemma 4 example as a benchmark peer: build its .pte from a Hugging Face checkpoint, then time it.

The example ships inside the executorch 1.5.1 wheel (`executorch/examples/models/gemma4`). Its text
decoder is ONE method, `text_decoder(input_ids [1, T], input_pos [T], inputs_embeds [1, T, H]) -> logits
[1, 1, V]` with T dynamic in 1..max_seq_len-1; the Per-Layer-Embedding table stays INSIDE the .pte as an
int8 (emb8) / int4 (emb4) `nn.Embedding` gathered in-graph, next to everything else.

    venv = ensure_venv(Path("work_dirs/peers"))                     # its own pinned torch / executorch
    built = build(checkpoint_dir, out_dir, venv)                    # {"path", "bytes", "export_s", ...}
    timed = run(Path(built["path"]), venv, prompt_ids, n_new=16)    # medians of `repeats` runs

Every heavy step runs in a child process of the peer's venv, so each step's peak RSS is its own. This
file is also that child (`python et_example.py export|run SPEC_JSON`): at module level it imports only
the standard library; torch and executorch are imported inside the child functions.

What the shipped example needs worked around (without editing the installed wheel):
* `Gemma4Config.from_config("e2b")` reads `config/e2b_config.json`, which the wheel does not ship: the
  child points it at the checkpoint's own config.json, with transformers 5's `rope_parameters` restated
  as the flat `rope_theta` / `rope_local_base_freq` / `partial_rotary_factor` keys the example reads
  (it would silently fall back to E2B's values otherwise).
* its weight map wants Google's multimodal key layout (`model.language_model.*`): a text-only
  checkpoint (`model.*`) is renamed on load.

How the stock Python runtime holds that program here: `Runtime.load_program(path)` mmaps the .pte and,
run as root, mlocks its constant segment — the PLE table included — so it is resident from load on
(VmLck). `run(..., mlock=False)` loads as an Android app would (no CAP_IPC_LOCK, 64 KiB memlock
limit): the mlock fails, ExecuTorch ignores that, and PLE pages fault in as rows are gathered.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    from . import childproc
except ImportError:  # run as a child script: this folder is on sys.path
    import childproc

VENV_NAME = "et-example-venv"
# The example's own dependencies (safetensors: its weight loader; sentencepiece: its runner), pinned to
# what the project's venv has. torch is pinned so pip takes the CPU build already on disk.
REQUIREMENTS = (
    "torch==2.13.0",
    "executorch==1.5.1",
    "torchao==0.18.0",
    "transformers==5.23.0",
    "safetensors==0.8.0",
    "sentencepiece==0.2.3",
    "numpy==2.4.6",
)
RAN_ON = "this machine (2 cores, 24 GiB)"
METHOD = "text_decoder"
RESULT_MARK = "@@ET_EXAMPLE_RESULT@@ "   # the child's last stdout line: this mark, then one JSON object
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MULTIMODAL_PREFIX = "model.language_model."


# ----------------------------------------------------------------------------------------------------
# The peer's venv
# ----------------------------------------------------------------------------------------------------

def ensure_venv(root: Path) -> Path:
    """`root/et-example-venv` with REQUIREMENTS installed; reused as is when its marker lists the same set.

    The marker (`.gemma-edge-requirements`, written last) holds the requirement lines; `install.json`
    beside it records how long the install took."""
    venv = Path(root) / VENV_NAME
    marker = venv / ".gemma-edge-requirements"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if marker.exists() and marker.read_text() == wanted and _venv_python(venv).exists():
        return venv
    t0 = time.perf_counter()
    if not _venv_python(venv).exists():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(_venv_python(venv)), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
                   check=True, env=childproc.clean_env())
    (venv / "install.json").write_text(json.dumps(
        {"requirements": list(REQUIREMENTS), "install_s": round(time.perf_counter() - t0, 1)}, indent=2))
    marker.write_text(wanted)
    return venv


def _venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def _run_child(venv: Path, mode: str, spec: dict, log: Path, rss_limit_bytes: int | None = None,
               env: dict | None = None, preexec_fn=None) -> dict:
    """`python this_file mode spec` in the venv (see `childproc.run`); its stage is its last INFO log
    record (the example logs each stage)."""
    cmd = [str(_venv_python(venv)), str(Path(__file__).resolve()), mode, json.dumps(spec)]
    return childproc.run(cmd, log, RESULT_MARK, env=env, preexec_fn=preexec_fn, rss_limit_bytes=rss_limit_bytes,
                         stage_prefix="INFO:")


# ----------------------------------------------------------------------------------------------------
# build: the example's export, in the venv
# ----------------------------------------------------------------------------------------------------

def build(checkpoint_dir: Path, out_dir: Path, venv: Path, quant: str = "8da4w+emb8", max_context: int = 1024,
          *, group_size: int = 128, rss_limit_bytes: int | None = None) -> dict:
    """Export `checkpoint_dir` (HF Gemma 4: config.json + safetensors) with the example's
    `export_gemma4 --no-audio --no-vision` into `out_dir`.

    quant: the example's --quantize (8da4w+emb8 | 8da4w+emb4 | 8da8w+emb8 | none); max_context: its
    --max_seq_len (KV-cache slots; one call takes 1..max_context-1 tokens — it has no fixed prefill
    chunk); group_size: its --group_size for int4 weights (its default 128; linears whose input width
    is not a multiple of it stay fp32, as the example's `skip_incompatible_shapes=True` does).

    Returns {"path", "bytes", "export_s", "export_peak_rss_bytes", "ran_on", "settings", "program"}, and
    writes the same beside the .pte as `<name>.json` (`run` reads it). With `rss_limit_bytes`, a child
    that passes the limit is killed and {"killed_at_rss_bytes", "stage", "elapsed_s", ...} is returned
    instead. A child that fails otherwise raises RuntimeError naming its log."""
    checkpoint_dir, out_dir = Path(checkpoint_dir).resolve(), Path(out_dir).resolve()
    if not (checkpoint_dir / "config.json").exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.json; expected a Hugging Face Gemma 4 checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    pte = out_dir / f"gemma4_et_example_{quant.replace('+', '_')}_ctx{max_context}.pte"
    log = pte.with_suffix(".export.log")
    spec = {"checkpoint": str(checkpoint_dir), "out_dir": str(out_dir), "pte": str(pte), "quantize": quant,
            "max_seq_len": max_context, "group_size": group_size}
    child = _run_child(venv, "export", spec, log, rss_limit_bytes)
    if child["killed_at_rss_bytes"] is not None:
        return {"killed_at_rss_bytes": child["killed_at_rss_bytes"], "stage": child["stage"],
                "elapsed_s": round(child["elapsed_s"], 1), "rss_limit_bytes": rss_limit_bytes,
                "export_peak_rss_bytes": child["peak_rss_bytes"], "log": str(log), "ran_on": RAN_ON,
                "settings": _settings(spec)}
    if child["rc"] != 0 or child["result"] is None:
        raise RuntimeError(f"the example's export exited with {child['rc']} at: {child['stage']!r} (log: {log})")
    files = [pte] + [out_dir / name for name in child["result"].get("extra_files", [])]
    out = {"path": str(pte), "bytes": sum(f.stat().st_size for f in files), "export_s": round(child["elapsed_s"], 1),
           "export_peak_rss_bytes": child["peak_rss_bytes"], "ran_on": RAN_ON,
           "settings": {**_settings(spec), **child["result"]["settings"]}, "program": child["result"]["program"],
           "log": str(log)}
    pte.with_suffix(".json").write_text(json.dumps(out, indent=2))
    return out


def _settings(spec: dict) -> dict:
    return {"example": "executorch 1.5.1 wheel, examples/models/gemma4/export_gemma4.py (unmodified)",
            "cli": ["--checkpoint_path", spec["checkpoint"], "--output_path", spec["pte"], "--quantize",
                    spec["quantize"], "--max_seq_len", str(spec["max_seq_len"]), "--group_size",
                    str(spec["group_size"]), "--no-audio", "--no-vision"],
            "quantize": spec["quantize"], "group_size": spec["group_size"], "max_context": spec["max_seq_len"],
            "prefill": f"dynamic: 1..{spec['max_seq_len'] - 1} tokens per call (the example has no fixed chunk)",
            "tied_embedding": False, "quantize_kv_cache": False, "use_custom_sdpa": True,
            "kv_cache": "fp32, max_context slots on every non-shared layer (sliding layers masked, not ringed)"}


# ----------------------------------------------------------------------------------------------------
# run: load the .pte with the stock executorch.runtime and time greedy generation, in the venv
# ----------------------------------------------------------------------------------------------------

def run(pte_path: Path, venv: Path, prompt_ids: list[int], n_new: int, threads: int = 2, repeats: int = 3,
        *, prefill_chunk: int | None = None, cold: bool = False, mlock: bool = True) -> dict:
    """Prefill `prompt_ids`, then greedy-decode until `n_new` tokens exist (the first comes from the
    prefill; EOS ignored): one warm-up run, then `repeats` timed runs, in one child of the venv.

    prefill_chunk: tokens per prefill call; None (default) = the whole prompt in one call, as the
    example's runner does. cold: evict the .pte from the page cache before loading. mlock: True (default)
    loads as the stock Python runtime does here as root — `_load_program` mmaps the .pte and mlocks its
    constant segment, so the whole PLE table is resident from load on (VmLck); False loads as an
    Android app would (no CAP_IPC_LOCK, RLIMIT_MEMLOCK 64 KiB): the mlock fails, ExecuTorch ignores
    that, and PLE pages are faulted in as the graph gathers rows.

    Returns medians {"load_s", "ttft_s", "prefill_tok_s", "decode_tok_s"}, memory at the end while loaded
    {"peak_rss_bytes" (VmHWM), "rss_anon_bytes", "rss_file_bytes"; "host_rss_before_load_bytes": the same
    Python process after importing torch and executorch, before loading anything — a C++ runner would not
    pay it}, "embedding_resident_bytes" (bytes of
    the PLE table's range of the .pte mapped resident in the process after the first prompt),
    "residency" (the .pte mapping's Rss and the PLE range at load / after the first prompt / at the end),
    "threads", "program", "runs"."""
    pte_path = Path(pte_path).resolve()
    sidecar = pte_path.with_suffix(".json")
    built = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    max_context = built.get("settings", {}).get("max_context")
    if max_context and len(prompt_ids) + n_new - 1 > max_context:
        raise ValueError(f"{pte_path.name}: prompt {len(prompt_ids)} + n_new {n_new} - 1 tokens of KV cache, "
                         f"expected ≤ max_context {max_context}")
    if n_new < 1 or repeats < 1:
        raise ValueError(f"n_new and repeats: expected ≥ 1, found {n_new} and {repeats}")
    spec = {"pte": str(pte_path), "ids": [int(i) for i in prompt_ids], "n_new": n_new, "threads": threads,
            "repeats": repeats, "prefill_chunk": prefill_chunk, "cold": cold,
            "ple": built.get("program", {}).get("ple")}
    log = pte_path.with_suffix(f".run-{os.getpid()}.log")
    # One thread count everywhere: XNNPACK's pool is set in the child; torch / OpenMP get the same.
    child = _run_child(venv, "run", spec, log,
                       env=childproc.clean_env(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)),
                       preexec_fn=None if mlock else childproc.as_android_app)
    if child["rc"] != 0 or child["result"] is None:
        raise RuntimeError(f"the .pte run exited with {child['rc']} at: {child['stage']!r} (log: {log})")
    log.unlink()
    res = child["result"]
    runs = res["runs"]
    med = lambda k: statistics.median(r[k] for r in runs)   # noqa: E731
    return {"load_s": res["load_s"], "ttft_s": med("ttft_s"), "prefill_tok_s": med("prefill_tok_s"),
            "decode_tok_s": med("decode_tok_s"), **res["memory"],
            "embedding_resident_bytes": res["residency"]["after_first_prompt"]["ple_resident_bytes"],
            "residency": res["residency"], "threads": res["threads"], "prompt_tokens": len(prompt_ids),
            "n_new": n_new, "prefill_calls": runs[0]["prefill_calls"], "cold": cold, "mlock": mlock,
            "tokens_identical_across_runs": all(r["tokens"] == runs[0]["tokens"] for r in runs),
            "program": res["program"], "ran_on": RAN_ON, "runs": runs}


# ----------------------------------------------------------------------------------------------------
# Reading a .pte's layout from its flatbuffer head (no weights read)
# ----------------------------------------------------------------------------------------------------

_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 4, 4: 8, 5: 2, 6: 4, 7: 8, 11: 1, 15: 2}   # ExecuTorch ScalarType ids


def pte_layout(pte: Path, ple_shape: list[int] | None = None) -> dict:
    """Methods, inputs and the constant tensors of a .pte, from its header and flatbuffer only; with
    `ple_shape` ([vocab_per_layer, layers * per_layer_dim]) also where the PLE table's bytes lie in the
    file. Runs in the venv (needs executorch's flatbuffer reader)."""
    from executorch.exir._serialize._program import _ExtendedHeader, _flatbuffer_to_program

    with open(pte, "rb") as f:
        head = f.read(_ExtendedHeader.NUM_HEAD_BYTES)
        eh = _ExtendedHeader.from_bytes(head[8:])
        f.seek(0)
        program = _flatbuffer_to_program(f.read(eh.program_size))
    seg_base = eh.segment_base_offset
    cs = program.constant_segment
    constants, seen = [], set()
    for plan in program.execution_plan:
        for v in plan.values:
            t = v.val
            if type(t).__name__ != "Tensor" or t.data_buffer_idx <= 0 or t.allocation_info is not None:
                continue
            if (plan.name, t.data_buffer_idx) in seen:       # one buffer, several values (shared masks)
                continue
            seen.add((plan.name, t.data_buffer_idx))
            start = seg_base + program.segments[cs.segment_index].offset + cs.offsets[t.data_buffer_idx]
            n = 1
            for s in t.sizes:
                n *= s
            constants.append({"method": plan.name, "sizes": list(t.sizes), "scalar_type": int(t.scalar_type),
                              "file_offset": start, "nbytes": n * _SCALAR_BYTES.get(int(t.scalar_type), 4)})
    methods = []
    for plan in program.execution_plan:
        ins = [plan.values[i].val for i in plan.inputs]
        methods.append({"name": plan.name, "inputs": [
            {"sizes_max": list(t.sizes), "scalar_type": int(t.scalar_type)} if type(t).__name__ == "Tensor"
            else {"kind": type(t).__name__} for t in ins]})
    ple = None
    if ple_shape:
        hits = [c for c in constants if c["sizes"] == list(ple_shape)]
        if hits:
            c = max(hits, key=lambda c: c["nbytes"])
            ple = {"file_offset": c["file_offset"], "nbytes": c["nbytes"], "sizes": c["sizes"],
                   "scalar_type": c["scalar_type"]}
    delegated = sum(s.size for s in program.segments) - (program.segments[cs.segment_index].size
                                                          if program.segments else 0)
    delegates: dict[str, int] = {}
    for plan in program.execution_plan:
        for d in plan.delegates:
            delegates[d.id] = delegates.get(d.id, 0) + 1
    return {"methods": methods, "delegates": delegates,
            "constant_bytes_outside_delegates": sum(c["nbytes"] for c in constants),
            "delegate_segment_bytes": delegated, "ple": ple,
            "largest_constants": sorted(constants, key=lambda c: -c["nbytes"])[:4]}


# ----------------------------------------------------------------------------------------------------
# Child: export
# ----------------------------------------------------------------------------------------------------

def _checkpoint_keys(ckpt: Path) -> list[str]:
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        return list(json.loads(index.read_text())["weight_map"])
    keys = []
    for shard in sorted(ckpt.glob("*.safetensors")):
        with open(shard, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            keys += [k for k in json.loads(f.read(n)) if k != "__metadata__"]
    return keys


def _example_config(ckpt: Path, out_dir: Path) -> tuple[Path, dict]:
    """The checkpoint's text config, with `rope_parameters` restated as the flat keys the example's
    `Gemma4Config.from_json` reads; written to out_dir/et_example_config.json."""
    raw = json.loads((ckpt / "config.json").read_text())
    text = dict(raw.get("text_config", raw))
    rope = text.get("rope_parameters") or {}
    added = {}
    if "full_attention" in rope and "rope_theta" not in text:
        added["rope_theta"] = rope["full_attention"]["rope_theta"]
        added["partial_rotary_factor"] = rope["full_attention"].get("partial_rotary_factor", 1.0)
    if "sliding_attention" in rope and "rope_local_base_freq" not in text:
        added["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    path = out_dir / "et_example_config.json"
    path.write_text(json.dumps({**text, **added}, indent=2))
    return path, {**text, **added}


def _child_export(spec: dict) -> dict:
    ckpt, out_dir, pte = Path(spec["checkpoint"]), Path(spec["out_dir"]), Path(spec["pte"])
    cfg_path, cfg = _example_config(ckpt, out_dir)

    from executorch.examples.models.gemma4.text_decoder import convert_weights, gemma4_config

    # 1. Its config: the wheel lacks config/e2b_config.json; read the checkpoint's (restated) instead.
    gemma4_config.Gemma4Config.from_config = classmethod(lambda cls, variant="e2b": cls.from_json(str(cfg_path)))
    # 2. Its weight names: Google's multimodal layout; rename a text-only checkpoint's on load (no copies).
    keys = _checkpoint_keys(ckpt)
    renamed = not any(k.startswith(_MULTIMODAL_PREFIX) for k in keys)
    if renamed:
        load = convert_weights._load_safetensors_weights

        def load_with_multimodal_names(path):
            return {(_MULTIMODAL_PREFIX + k[len("model."):] if k.startswith("model.") else k): v
                    for k, v in load(path).items()}

        convert_weights._load_safetensors_weights = load_with_multimodal_names

    import logging

    from executorch.examples.models.gemma4 import export_gemma4

    class _KeyReport(logging.Handler):   # the loader's "Missing keys" / "Unexpected keys" warnings
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith(("Missing keys", "Unexpected keys")):
                self.lines.append(msg)

    key_report = _KeyReport()
    logging.getLogger("executorch.examples.models.gemma4.text_decoder.gemma4_model").addHandler(key_report)
    sys.argv = ["export_gemma4", *_settings(spec)["cli"]]
    before = set(os.listdir(out_dir))
    export_gemma4.main()
    extra = sorted(n for n in set(os.listdir(out_dir)) - before if n.endswith(".ptd"))

    import executorch
    import torch
    import torchao

    ple_shape = [cfg["vocab_size_per_layer_input"], cfg["num_hidden_layers"] * cfg["hidden_size_per_layer_input"]]
    layout = pte_layout(pte, ple_shape)
    layout["ple_where"] = ("inside the .pte: one constant tensor of the program, gathered by the graph "
                           "(not in an XNNPACK delegate)" if layout["ple"] else "not found by shape")
    return {"extra_files": extra, "program": layout, "settings": {
        "config": str(cfg_path), "config_workaround": "Gemma4Config.from_config -> from_json(checkpoint config.json); "
                  "rope_parameters restated as rope_theta / rope_local_base_freq / partial_rotary_factor",
        "checkpoint_keys": ("model.* renamed to model.language_model.* on load" if renamed
                            else "model.language_model.* (as Google ships), used as is"),
        "load_warnings": key_report.lines,
        "layers": cfg["num_hidden_layers"], "num_kv_shared_layers": cfg.get("num_kv_shared_layers"),
        "hidden_size": cfg["hidden_size"], "vocab_size": cfg["vocab_size"], "ple_shape": ple_shape,
        "versions": {"torch": torch.__version__, "executorch": getattr(executorch, "__version__", "1.5.1"),
                     "torchao": torchao.__version__}}}


# ----------------------------------------------------------------------------------------------------
# Child: run
# ----------------------------------------------------------------------------------------------------

def _resident_in_range(vmas: list[dict], start: int, nbytes: int) -> int:
    """Bytes of file range [start, start + nbytes) mapped resident in this process (pagemap present bit),
    counting each file page once even when several mappings cover it."""
    present = set()
    with open("/proc/self/pagemap", "rb") as pm:
        for v in vmas:
            lo = max(start, v["offset"])
            hi = min(start + nbytes, v["offset"] + v["end"] - v["start"])
            if lo >= hi:
                continue
            first = (v["start"] + lo - v["offset"]) // _PAGE
            last = (v["start"] + hi - 1 - v["offset"]) // _PAGE
            pm.seek(first * 8)
            raw = pm.read((last - first + 1) * 8)
            file_page0 = (lo - (v["start"] + lo - v["offset"]) % _PAGE) // _PAGE
            for i in range(last - first + 1):
                if raw[i * 8 + 7] & 0x80:   # bit 63: page present
                    present.add(file_page0 + i)
    return len(present) * _PAGE


def _page_cache_in_range(path: str, start: int, nbytes: int) -> int:
    """Bytes of file range [start, start + nbytes) in the page cache (mincore over a private mapping
    that is unmapped again at once, so it never shows in smaps)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lo = start - start % _PAGE
    length = start + nbytes - lo
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, length, 1, 2, fd, lo)   # PROT_READ, MAP_PRIVATE
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        vec = (ctypes.c_ubyte * ((length + _PAGE - 1) // _PAGE))()
        rc = libc.mincore(ctypes.c_void_p(addr), length, vec)
        libc.munmap(ctypes.c_void_p(addr), length)
        if rc != 0:
            raise OSError(ctypes.get_errno(), f"mincore on {path} failed")
    finally:
        os.close(fd)
    return sum(1 for b in vec if b & 1) * _PAGE


def _residency(pte: str, ple: dict | None) -> dict:
    vmas = childproc.procfs.file_vmas(pte)
    out = {"pte_mappings": len(vmas), "pte_mapping_rss_bytes": sum(v["rss"] for v in vmas),
           "ple_resident_bytes": None, "ple_page_cache_bytes": None}
    if ple:
        out["ple_resident_bytes"] = _resident_in_range(vmas, ple["file_offset"], ple["nbytes"])
        out["ple_page_cache_bytes"] = _page_cache_in_range(pte, ple["file_offset"], ple["nbytes"])
    return out


def _child_run(spec: dict) -> dict:
    pte = spec["pte"]
    if spec["cold"]:
        fd = os.open(pte, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  llama::custom_sdpa kernels
    import executorch.kernels.quantized  # noqa: F401  quantized_decomposed::embedding_* kernels
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(spec["threads"])
    torch.set_num_threads(spec["threads"])
    rt = Runtime.get()
    imported = childproc.procfs.proc_status()   # the Python host (torch, executorch bindings) before any program
    at_start = _residency(pte, spec["ple"])
    t0 = time.perf_counter()
    program = rt.load_program(pte)
    method = program.load_method(METHOD)
    load_s = time.perf_counter() - t0
    residency = {"before_load": at_start, "after_load": _residency(pte, spec["ple"])}

    meta = method.metadata
    inputs = [{"sizes_max": list(meta.input_tensor_meta(i).sizes()), "dtype": int(meta.input_tensor_meta(i).dtype())}
              for i in range(meta.num_inputs())]
    hidden = inputs[2]["sizes_max"][-1]
    ids = torch.tensor([spec["ids"]], dtype=torch.long)           # [1, T]
    n_prompt, n_new = ids.shape[1], spec["n_new"]
    chunk = spec["prefill_chunk"] or n_prompt
    # Text only: inputs_embeds is read just at audio / image placeholder ids, so zeros, as its runner passes.
    embeds = torch.zeros(1, n_prompt, hidden)                     # [1, T, H]
    step_embeds = torch.zeros(1, 1, hidden)                       # [1, 1, H]

    def generate(first: bool) -> dict:
        t0 = time.perf_counter()
        calls = 0
        for s in range(0, n_prompt, chunk):
            e = min(n_prompt, s + chunk)
            logits = method.execute([ids[:, s:e], torch.arange(s, e, dtype=torch.long), embeds[:, s:e]])[0]
            calls += 1
        t1 = time.perf_counter()
        tok = int(torch.argmax(logits[0, -1]))
        t_first = time.perf_counter()
        if first:                                                  # untimed run: measure here
            residency["after_first_prompt"] = _residency(pte, spec["ple"])
        toks = [tok]
        t_decode = time.perf_counter()
        for pos in range(n_prompt, n_prompt + n_new - 1):
            logits = method.execute([torch.tensor([[tok]], dtype=torch.long),
                                     torch.tensor([pos], dtype=torch.long), step_embeds])[0]
            tok = int(torch.argmax(logits[0, -1]))
            toks.append(tok)
        t_end = time.perf_counter()
        prefill_s, ttft_s, decode_s = t1 - t0, t_first - t0, t_end - t_decode
        return {"prefill_s": prefill_s, "ttft_s": ttft_s, "prefill_tok_s": n_prompt / prefill_s,
                "decode_s": decode_s, "decode_tok_s": (n_new - 1) / decode_s if n_new > 1 else 0.0,
                "prefill_calls": calls, "tokens": toks}

    warm = generate(first=True)
    runs = [generate(first=False) for _ in range(spec["repeats"])]
    residency["at_end"] = _residency(pte, spec["ple"])
    st = childproc.procfs.proc_status()
    return {"load_s": load_s, "threads": {"xnnpack_threadpool": portable_lib._threadpool_get_thread_count(),
                                          "torch": torch.get_num_threads()},
            "memory": {"peak_rss_bytes": st["VmHWM"], "rss_bytes": st["VmRSS"], "rss_anon_bytes": st["RssAnon"],
                       "rss_file_bytes": st["RssFile"], "vm_locked_bytes": st["VmLck"],
                       "host_rss_before_load_bytes": imported["VmRSS"],
                       "host_rss_anon_before_load_bytes": imported["RssAnon"]},
            "residency": residency, "warmup": {k: v for k, v in warm.items() if k != "tokens"},
            "program": {"methods": sorted(program.method_names), "inputs": inputs,
                        "runtime_mmaps_pte": residency["after_load"]["pte_mappings"] > 0},
            "runs": runs}


if __name__ == "__main__":
    mode, spec_json = sys.argv[1], sys.argv[2]
    result = {"export": _child_export, "run": _child_run}[mode](json.loads(spec_json))
    print(RESULT_MARK + json.dumps(result), flush=True)

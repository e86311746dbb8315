"""LiteRT-LM (Google's on-device runtime for Gemma 4) as a benchmark peer: convert a Hugging Face checkpoint to
a `.litertlm` with litert-torch, then time it with the litert-lm runtime.

    venv = ensure_venv(Path("work_dirs/peers"))                     # its own pinned torch / litert stack
    built = build(checkpoint_dir, out_dir, venv)                    # {"path", "bytes", "export_s", ...}
    timed = run(Path(built["path"]), venv, prompt_ids, n_new=16)    # medians of `repeats` runs

Every heavy step runs in a child process of the peer's venv, so each step's peak RSS is its own. This file
is also that child (`python litert_lm.py convert|quantize|ple|run SPEC_JSON`): at module level it imports
only the standard library (and it keeps its own folder off the child's sys.path, since it shares the
runtime package's name).

The build is Google's recipe for Gemma 4 E2B: `litert_torch.generative.export_hf.export` with the
embedder and the Per-Layer-Embedding table externalized (`externalize_embedder=True`: sections
`tf_lite_embedder` and `tf_lite_per_layer_embedder` beside `tf_lite_prefill_decode`), prefill signatures
of 128 and 512 tokens, a 4096-token KV cache and `experimental_lightweight_conversion`; then
ai-edge-quantizer's `gemma4_mixed48` (int4 channelwise embedder, PLE table and decoder linears; int8 for
the `per_layer` projections) over the whole `.litertlm` (`aeq.quantize_litertlm`). Two children: the
float conversion, then the quantization; `export_peak_rss_bytes` is the larger of the two. `staged=True`
converts with a 16-row PLE table and a third child swaps the real one in (see `build`).

What the pinned stack needs worked around (the installed packages are never edited):
* `import litert_torch.generative.export_hf` imports `tensorflow.lite.python.schema_py_generated` from an
  unrelated model module; a stub `tensorflow` package (re-exporting ai_edge_litert's schema) is put on the
  children's PYTHONPATH.
* litert-torch's Gemma 4 decoder (the one that takes `per_layer_embeddings` as an input) is chosen only
  for `model_type: gemma4` (Google's multimodal layout); for `gemma4_text` it falls back to a generic path
  that makes transformers 5.23 reverse the embedding with `nonzero()`, which does not lower. So the
  conversion reads a scratch overlay of the checkpoint: config.json wrapped as `gemma4` (text_config, no
  vision / audio tower), keys `model.*` renamed to `model.language_model.*` (a rewritten safetensors
  header followed by the shard's bytes, copied; shards that already use that layout are symlinked).
  (Read as `gemma4_text`, transformers 5.23 also refuses litert-torch's patched text model: "does not
  support setting experts implementation".)
* The conversion needs a tokenizer, and ours have none: the overlay gets a WordLevel `tokenizer.json` of
  exactly `vocab_size` entries, `<pad> <eos> <bos> <unk>` at 0..3 and `t<id>` for every other id. The
  runtime only takes text, so `run` writes the prompt as those words; the child checks that the
  engine's own tokenizer turns that text back into exactly the prompt ids before timing anything.
* `quantization_recipe` of the export itself takes one flat recipe (default `dynamic_wi8_afp32`!), not
  the per-section `gemma4_mixed48`: the export runs with `none` and the recipe is applied afterwards.
* The conversion is not deterministic across processes (some tensors are ordered by set iteration):
  the children run with PYTHONHASHSEED=0, and then two builds give identical sections.

Verified on this machine (2 cores, 24 GiB, shared), 2 threads, a 128-token prompt ([2] + random ids) and
16 new tokens, on two random checkpoints of the tiny preset (6 layers, hidden 64, PLE 6 x 8):
vocab 512 (`gemma-edge random-checkpoint --preset tiny`) and vocab 262144 (the same with
vocab_size = vocab_size_per_layer_input = 262144, no tokenizer, `model.*` keys):

    vocab    file      build (one-process / staged)    load    TTFT    prefill     decode     peak RSS
    512      1.5 MB    123 s, 0.88 GB / 168 s, 0.87 GB  0.05 s  0.03 s  5000 tok/s  570 tok/s  146 MB
    262144   47.8 MB   150 s, 1.27 GB / 144 s, 1.13 GB  0.67 s  0.22 s  4800 tok/s  330 tok/s  282 MB

(build: time and peak RSS of the largest child; run: medians of 3 after a warm-up.) The staged and the
one-process files have byte-identical sections (they differ only in the header's uuid and creation
time) and give the same greedy tokens. With vocab 262144 each new session's first decode step costs
0.1-0.2 s more than the others (not seen at vocab 512); TTFT includes it. Not run here: the reduced /
full E2B (by the notes: the 10-layer E2B converts in 16.5-18.5 GB in one process, the full E2B does not
fit in 24 GiB in one process).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

try:
    from . import childproc
except ImportError:  # run as a child script: this folder is on sys.path
    import childproc

VENV_NAME = "litert-venv"
# litert-torch 0.10.0 wants torch < 2.15 (2.13.0: the CPU build on disk), torchao >= 0.17, ai-edge-litert
# 2.3, ai-edge-quantizer 0.10, litert-converter 0.5; the rest is what pip resolved with them, pinned.
REQUIREMENTS = (
    "litert-lm-api==0.18.1",
    "litert-lm-builder==0.18.1",
    "litert-torch==0.10.0",
    "torch==2.13.0",
    "transformers==5.23.0",
    "torchao==0.18.0",
    "ai-edge-litert==2.3.0",
    "ai-edge-quantizer==0.10.0",
    "litert-converter==0.5.0",
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "numpy==2.4.6",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
)
RAN_ON = "this machine (2 cores, 24 GiB)"
RECIPE = "gemma4_mixed48"
PREFILL_LENGTHS = (128, 512)
CACHE_LENGTH = 4096
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")          # ids 0..3, as in Gemma
RESULT_MARK = "@@LITERT_LM_RESULT@@ "     # the child's last stdout line: this mark, then one JSON object
PLE_SECTION = "tf_lite_per_layer_embedder"
STAGED_PLE_ROWS = 16     # PLE rows the staged build converts with; the real table is swapped in after
# How `run` sets up the engine: as ../shared/docs/litert-lm-notes.md measured it (`litert_lm.Benchmark(...,
# use_ringbuffers_local_attention=True)`). Measured against the engine's defaults on the full E2B
# (`bench/litert_settings.py`, bench/results/litert_settings.json): the same speed, memory and tokens at
# 128 and 512-token prompts; `enable_ynnpack=True` is refused for this model ("UNIMPLEMENTED").
ENGINE_OPTIONS = {"use_ringbuffers_local_attention": True}
_MULTIMODAL_PREFIX = "model.language_model."
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------------------------------
# The peer's venv
# ----------------------------------------------------------------------------------------------------

def ensure_venv(root: Path) -> Path:
    """`root/litert-venv` with REQUIREMENTS installed and the `tensorflow` stub written; reused as is
    when its marker lists the same set.

    The marker (`.gemma-edge-requirements`, written last) holds the requirement lines; `install.json`
    beside it records how long the install took."""
    venv = Path(root).resolve() / VENV_NAME
    marker = venv / ".gemma-edge-requirements"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if marker.exists() and marker.read_text() == wanted and _venv_python(venv).exists():
        _write_tensorflow_stub(venv)               # cheap; repairs a venv whose stub was removed
        return venv
    t0 = time.perf_counter()
    if not _venv_python(venv).exists():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(_venv_python(venv)), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
                   check=True, env=_clean_env())
    _write_tensorflow_stub(venv)
    (venv / "install.json").write_text(json.dumps(
        {"requirements": list(REQUIREMENTS), "install_s": round(time.perf_counter() - t0, 1)}, indent=2))
    marker.write_text(wanted)
    return venv


def _stub_dir(venv: Path) -> Path:
    return Path(venv) / "peer-stubs"


def _write_tensorflow_stub(venv: Path) -> None:
    """`tensorflow.lite.python.schema_py_generated` re-exporting ai_edge_litert's: all that
    litert-torch's stray `tensorflow` import needs (no TensorFlow is installed)."""
    pkg = _stub_dir(venv) / "tensorflow" / "lite" / "python"
    pkg.mkdir(parents=True, exist_ok=True)
    for d in (pkg.parent.parent, pkg.parent, pkg):
        (d / "__init__.py").write_text('"""Stub: only what litert-torch imports, no TensorFlow."""\n')
    (pkg / "schema_py_generated.py").write_text("from ai_edge_litert.schema_py_generated import *  # noqa: F401,F403\n")


def _venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def _clean_env(venv: Path | None = None, **extra: str) -> dict:
    """A clean child environment (`childproc.clean_env`); with `venv`, its tensorflow stub on PYTHONPATH."""
    env = childproc.clean_env(JAX_PLATFORMS="cpu",
                              PYTHONHASHSEED="0")  # the converter orders some tensors by set iteration: fix it
    if venv is not None:
        env["PYTHONPATH"] = str(_stub_dir(venv))
    env.update(extra)
    return env


def _run_child(venv: Path, mode: str, spec: dict, log: Path, rss_limit_bytes: int | None = None,
               env: dict | None = None) -> dict:
    """`python this_file mode spec` in the venv (see `childproc.run`); its stage is its last log line."""
    cmd = [str(_venv_python(venv)), str(Path(__file__).resolve()), mode, json.dumps(spec)]
    return childproc.run(cmd, log, RESULT_MARK, env=env or _clean_env(venv), rss_limit_bytes=rss_limit_bytes)


# ----------------------------------------------------------------------------------------------------
# The checkpoint as litert-torch wants it: a scratch overlay (multimodal layout + a WordLevel tokenizer)
# ----------------------------------------------------------------------------------------------------

def token_word(i: int) -> str:
    """The overlay tokenizer's word for id `i`."""
    return SPECIALS[i] if i < len(SPECIALS) else f"t{i}"


def prompt_text(ids: list[int]) -> str:
    """Text that the overlay tokenizer encodes to exactly `ids` (words joined by single spaces)."""
    return " ".join(token_word(int(i)) for i in ids)


def word_level_tokenizer(vocab_size: int) -> dict:
    """tokenizer.json (HF `tokenizers` format) of exactly `vocab_size` ids: Gemma's specials at 0..3, `t<id>`
    for the rest, split on whitespace, no normalizer, nothing added around the prompt (no implicit <bos>)."""
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(SPECIALS)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": {token_word(i): i for i in range(vocab_size)},
                      "unk_token": "<unk>"}}


def _safetensors_keys(path: Path) -> list[str]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return [k for k in json.loads(f.read(n)) if k != "__metadata__"]


def _multimodal_name(key: str) -> str:
    if key.startswith(_MULTIMODAL_PREFIX) or not key.startswith("model."):
        return key
    return _MULTIMODAL_PREFIX + key[len("model."):]


def _copy_shard(src: Path, dst: Path, keep_rows: dict[str, int]) -> None:
    """`src` with every `model.*` key renamed `model.language_model.*` and the tensors named in `keep_rows`
    (new names) cut to their first rows: a new header, then each tensor's bytes copied unchanged with
    copy_file_range (no user-space buffer; tensors laid out back to back, as the format requires)."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        n = struct.unpack("<Q", f.read(8))[0]
        old = json.loads(f.read(n))
        meta = old.pop("__metadata__", None)
        plan, header, at = [], {}, 0                       # (source offset, length), in source order
        for key, info in sorted(old.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            name, (lo, hi), shape = _multimodal_name(key), info["data_offsets"], list(info["shape"])
            if name in keep_rows:
                hi = lo + (hi - lo) // shape[0] * keep_rows[name]
                shape[0] = keep_rows[name]
            header[name] = {"dtype": info["dtype"], "shape": shape, "data_offsets": [at, at + hi - lo]}
            plan.append((8 + n + lo, hi - lo))
            at += hi - lo
        if meta is not None:
            header["__metadata__"] = meta
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)                        # the format pads its header to 8 bytes
        g.write(struct.pack("<Q", len(raw)) + raw)
        g.flush()
        out = 8 + len(raw)
        for start, length in plan:
            done = 0
            while done < length:
                step = os.copy_file_range(f.fileno(), g.fileno(), length - done, start + done, out + done)
                if step == 0:
                    raise OSError(f"{src}: ended early while copying to {dst}")
                done += step
            out += length


def _ple_key(keys: list[str]) -> str:
    hits = [k for k in keys if k.endswith("embed_tokens_per_layer.weight")]
    if len(hits) != 1:
        raise ValueError(f"checkpoint: expected one *embed_tokens_per_layer.weight (the PLE table), found {hits}")
    return hits[0]


def overlay_checkpoint(ckpt: Path, dst: Path, ple_rows: int | None = None) -> dict:
    """Write `dst`: the checkpoint as litert-torch's Gemma 4 path reads it (see the module docstring).
    With `ple_rows`, the PLE table and `vocab_size_per_layer_input` are cut to that many rows (the staged
    build's first stage). Never writes into `ckpt`. Returns what it did."""
    ckpt, dst = Path(ckpt).resolve(), Path(dst)
    cfg_path = ckpt / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{ckpt}: no config.json; expected a Hugging Face Gemma 4 checkpoint")
    raw = json.loads(cfg_path.read_text())
    text = raw.get("text_config", raw)
    if raw.get("model_type") not in ("gemma4", "gemma4_text") or "hidden_size_per_layer_input" not in text:
        raise ValueError(f"{cfg_path}: model_type: expected gemma4 or gemma4_text with per-layer embeddings, "
                         f"found {raw.get('model_type')!r}")
    shards = sorted(ckpt.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{ckpt}: no *.safetensors shards")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    text = {k: v for k, v in text.items() if k != "architectures"}
    keys = {shard: _safetensors_keys(shard) for shard in shards}
    ple_key = _ple_key([k for ks in keys.values() for k in ks])
    keep_rows = {}
    if ple_rows is not None:
        text["vocab_size_per_layer_input"] = ple_rows
        keep_rows[_multimodal_name(ple_key)] = ple_rows
    config = {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"],
              "text_config": {**text, "model_type": "gemma4_text"}}
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if key in text:
            config[key] = text[key]
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    copied = 0
    for shard, names in keys.items():
        if all(k == _multimodal_name(k) and k not in keep_rows for k in names):
            (dst / shard.name).symlink_to(shard)
        else:
            mine = {_multimodal_name(k) for k in names}
            _copy_shard(shard, dst / shard.name, {k: v for k, v in keep_rows.items() if k in mine})
            copied += shard.stat().st_size
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {_multimodal_name(k): v for k, v in data["weight_map"].items()}
        (dst / index.name).write_text(json.dumps(data, indent=2))
    vocab = text["vocab_size"]
    (dst / "tokenizer.json").write_text(json.dumps(word_level_tokenizer(vocab)))
    (dst / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
         "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": CACHE_LENGTH}, indent=2))
    return {"overlay": str(dst), "vocab_size": vocab, "layers": text["num_hidden_layers"],
            "ple_key": ple_key, "ple_shard": str(next(sh for sh, ks in keys.items() if ple_key in ks)),
            "ple_rows": ple_rows,
            "keys": "model.language_model.* (as Google ships), symlinked" if not copied
            else "model.* renamed to model.language_model.* (shards copied with a new header)",
            "copied_bytes": copied}


# ----------------------------------------------------------------------------------------------------
# build: convert (float) -> quantize (gemma4_mixed48), each in a child of the venv
# ----------------------------------------------------------------------------------------------------

def build(checkpoint_dir: Path, out_dir: Path, venv: Path, staged: bool = False, *,
          rss_limit_bytes: int | None = None, keep_work: bool = False) -> dict:
    """Convert `checkpoint_dir` (HF Gemma 4: config.json + safetensors, `model.*` or
    `model.language_model.*` keys) to `out_dir/gemma4_litert_gemma4_mixed48.litertlm`.

    staged=False: convert (float) then quantize, the whole model in each child ("one-process").
    staged=True: the same with the PLE table cut to STAGED_PLE_ROWS rows (the decoder takes
    `per_layer_embeddings` as an input, so it does not change), then a third child quantizes the real
    table a block of rows at a time, exactly as the recipe does (symmetric int4 per row, checked
    bit-exact), and swaps it into the per-layer-embedder section with the quantizer's own serializer.
    For checkpoints whose float PLE table does not fit in memory beside the rest (the full E2B here).

    Returns {"path", "bytes", "export_s", "export_peak_rss_bytes", "ran_on", "method", "stages",
    "sections", "settings"}, also written beside the file as `<name>.json`. `out_dir/work` (the
    overlay, the float .litertlm) is removed afterwards unless `keep_work`. With `rss_limit_bytes`, a
    child that passes the limit is killed and {"killed_at_rss_bytes", "stage", ...} is returned
    instead. A child that fails otherwise raises RuntimeError naming its log."""
    checkpoint_dir, out_dir = Path(checkpoint_dir).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    final = out_dir / f"gemma4_litert_{RECIPE}.litertlm"
    t0 = time.perf_counter()
    overlay = overlay_checkpoint(checkpoint_dir, work / "hf", ple_rows=STAGED_PLE_ROWS if staged else None)
    stages = {"overlay": {"elapsed_s": round(time.perf_counter() - t0, 1), **overlay}}
    steps = [("convert", {"model": overlay["overlay"], "output_dir": str(work / "convert")}),
             ("quantize", {"recipe": RECIPE, "output": str(work / "stage1.litertlm" if staged else final)})]
    if staged:
        steps.append(("ple", {"input": str(work / "stage1.litertlm"), "shard": overlay["ple_shard"],
                              "key": overlay["ple_key"], "rows": STAGED_PLE_ROWS, "output": str(final)}))
    result = None
    for mode, spec in steps:
        if mode == "quantize":
            spec["input"] = result["path"]
        log = out_dir / f"{mode}.log"
        child = _run_child(venv, mode, spec, log, rss_limit_bytes)
        stages[mode] = _stage(child)
        if child["killed_at_rss_bytes"] is not None or child["rc"] != 0 or child["result"] is None:
            return _failed(child, mode, log, rss_limit_bytes, stages)
        result = child["result"]
        stages[mode].update({k: v for k, v in result.items() if k not in ("path", "sections")})
    if not keep_work:
        shutil.rmtree(work)
    out = {"path": str(final), "bytes": final.stat().st_size,
           "export_s": round(sum(s["elapsed_s"] for s in stages.values()), 1),
           "export_peak_rss_bytes": max(s["peak_rss_bytes"] for s in stages.values() if "peak_rss_bytes" in s),
           "ran_on": RAN_ON, "method": "staged" if staged else "one-process", "stages": stages,
           "sections": result["sections"], "settings": _settings(overlay)}
    final.with_suffix(".json").write_text(json.dumps(out, indent=2))
    return out


def _stage(child: dict) -> dict:
    return {"elapsed_s": round(child["elapsed_s"], 1), "peak_rss_bytes": child["peak_rss_bytes"], "rc": child["rc"]}


def _failed(child: dict, mode: str, log: Path, rss_limit_bytes: int | None, stages: dict) -> dict:
    if child["killed_at_rss_bytes"] is None:
        raise RuntimeError(f"litert {mode} exited with {child['rc']} at: {child['stage']!r} (log: {log})")
    return {"killed_at_rss_bytes": child["killed_at_rss_bytes"], "stage": child["stage"], "failed_step": mode,
            "rss_limit_bytes": rss_limit_bytes, "elapsed_s": round(child["elapsed_s"], 1),
            "export_peak_rss_bytes": child["peak_rss_bytes"], "log": str(log), "ran_on": RAN_ON, "stages": stages}


def _settings(overlay: dict) -> dict:
    return {"converter": "litert_torch.generative.export_hf.export.export (litert-torch 0.10.0)",
            "export_kwargs": {"prefill_lengths": list(PREFILL_LENGTHS), "cache_length": CACHE_LENGTH,
                              "externalize_embedder": True, "experimental_lightweight_conversion": True,
                              "quantization_recipe": "none"},
            "quantization": f"ai_edge_quantizer.aeq.quantize_litertlm(recipe={RECIPE!r}) (ai-edge-quantizer 0.10.0)",
            "checkpoint_keys": overlay["keys"], "tokenizer": f"WordLevel, {overlay['vocab_size']} entries (overlay)",
            "layers": overlay["layers"]}


# ----------------------------------------------------------------------------------------------------
# run: load the .litertlm with litert_lm.Engine and time greedy generation, in the venv
# ----------------------------------------------------------------------------------------------------

def run(model_path: Path, venv: Path, prompt_ids: list[int], n_new: int, threads: int = 2, repeats: int = 3,
        *, cold: bool = False, engine_options: dict | None = None) -> dict:
    """Prefill exactly `prompt_ids` (as overlay-tokenizer text, checked by the engine's tokenizer), then
    decode greedily (top_k = 1) up to `n_new` tokens: one warm-up run, then `repeats` timed runs, each in
    a fresh session of one engine, in one child of the venv. The runtime stops at the file's stop tokens
    (EOS cannot be ignored through its API): `decode_tokens` says how many came.

    engine_options: keyword settings of `litert_lm.Engine` (default ENGINE_OPTIONS, the notes' setup);
    `{}` leaves every one at the runtime's default.

    cold: drop the .litertlm from the page cache and delete XNNPACK's weight cache before loading (the
    first load packs the decoder weights into `<file>_*.xnnpack_cache` beside the model, mapped later).

    Returns medians of wall-clock times around the runtime's calls, the decode streamed: {"load_s" (engine
    creation), "ttft_s" (prefill start to the first streamed token), "prefill_tok_s" (prompt tokens /
    the prefill call), "decode_tok_s" and "decode_s_per_token" (tokens after the first / first to last
    streamed token; LiteRT's first token comes from a decode step, not from the prefill)}, memory at the
    end while the engine is alive {"peak_rss_bytes" (VmHWM), "rss_anon_bytes", "rss_file_bytes"}, "ple_resident_bytes"
    (bytes of the .litertlm's per-layer-embedder section mapped resident after the first prompt),
    "residency" (the file mapping's Rss, per section, at load / after the first prompt / at the end),
    "engine_benchmark" (the runtime's own BenchmarkInfo medians), "runs"."""
    model_path = Path(model_path).resolve()
    if n_new < 1 or repeats < 1:
        raise ValueError(f"n_new and repeats: expected >= 1, found {n_new} and {repeats}")
    if len(prompt_ids) + n_new > CACHE_LENGTH:
        raise ValueError(f"{model_path.name}: prompt {len(prompt_ids)} + n_new {n_new} tokens, "
                         f"expected <= cache_length {CACHE_LENGTH}")
    spec = {"model": str(model_path), "ids": [int(i) for i in prompt_ids], "text": prompt_text(prompt_ids),
            "n_new": n_new, "threads": threads, "repeats": repeats, "cold": cold,
            "engine_options": ENGINE_OPTIONS if engine_options is None else engine_options}
    log = model_path.with_suffix(f".run-{os.getpid()}.log")
    child = _run_child(venv, "run", spec, log,
                       env=_clean_env(venv, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)))
    if child["rc"] != 0 or child["result"] is None:
        raise RuntimeError(f"the .litertlm run exited with {child['rc']} at: {child['stage']!r} (log: {log})")
    log.unlink()
    res = child["result"]
    runs = res["runs"]
    med = lambda k: statistics.median(r[k] for r in runs)   # noqa: E731
    eng = lambda k: statistics.median(r["engine"][k] for r in runs)   # noqa: E731
    return {"load_s": res["load_s"], "ttft_s": med("ttft_s"), "prefill_tok_s": med("prefill_tok_s"),
            "decode_tok_s": med("decode_tok_s"), "decode_s_per_token": med("decode_s_per_token"),
            **res["memory"], "ple_resident_bytes": res["residency"]["after_first_prompt"]["ple_resident_bytes"],
            "residency": res["residency"], "weight_cache": res["weight_cache"], "threads": threads,
            "prompt_tokens": len(prompt_ids), "n_new": n_new, "decode_tokens": min(r["decode_tokens"] for r in runs),
            "stopped_at_eos": any(r["decode_tokens"] < n_new for r in runs),
            "tokens_identical_across_runs": all(r["tokens"] == runs[0]["tokens"] for r in runs),
            "engine_benchmark": {k: eng(k) for k in runs[0]["engine"]}, "cold": cold,
            "engine_options": spec["engine_options"],
            "prompt": "exactly prompt_ids (checked: engine.tokenize(text) == prompt_ids, no <bos> added)",
            "ran_on": RAN_ON, "runs": runs}


# ----------------------------------------------------------------------------------------------------
# Reading a .litertlm's sections and a TFLite section's largest tensors (no weights read)
# ----------------------------------------------------------------------------------------------------

def litertlm_sections(path: str) -> list[dict]:
    """[{index, model_type, data_type, begin, end}] from the file's header. Runs in the venv."""
    import io

    from litert_lm_builder import litertlm_core, litertlm_peek

    meta = litertlm_peek.read_litertlm_header(path, io.StringIO()).SectionMetadata()
    out = []
    for i in range(meta.ObjectsLength() if meta else 0):
        s = meta.Objects(i)
        out.append({"index": i, "model_type": litertlm_peek.get_model_type(s),
                    "data_type": litertlm_core.any_section_data_type_to_string(s.DataType()),
                    "begin": s.BeginOffset(), "end": s.EndOffset()})
    return out


_TFLITE_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 10: "float64",
                 17: "int4"}


def tflite_tensors(buf, offset: int = 0, top: int = 4) -> list[dict]:
    """The `top` largest constant tensors of the TFLite flatbuffer at `buf[offset:]` (an mmap will do; only
    the flatbuffer's tables are read): name, shape, type, bytes, quantization (scale count and axis).
    Runs in the venv."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(buf, offset)
    found = {}
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        for t in range(sg.TensorsLength()):
            ten = sg.Tensors(t)
            b = model.Buffers(ten.Buffer())
            size = b.Size() if b.Offset() > 1 else b.DataLength()
            if size and ten.Buffer() not in found:
                q = ten.Quantization()
                name = ten.Name().decode().rstrip(";").rsplit("/", 1)[-1][-60:]   # the last scope only
                found[ten.Buffer()] = {"name": name, "shape": [ten.Shape(i) for i in range(ten.ShapeLength())],
                                       "type": _TFLITE_TYPES.get(ten.Type(), ten.Type()), "bytes": int(size),
                                       "scales": q.ScaleLength() if q else 0,
                                       "quantized_dimension": q.QuantizedDimension() if q else None}
    return sorted(found.values(), key=lambda d: -d["bytes"])[:top]


# ----------------------------------------------------------------------------------------------------
# Children: convert, quantize
# ----------------------------------------------------------------------------------------------------

def _child_convert(spec: dict) -> dict:
    from litert_torch.generative.export_hf import export as litert_export

    litert_export.export(model=spec["model"], output_dir=spec["output_dir"], prefill_lengths=list(PREFILL_LENGTHS),
                         cache_length=CACHE_LENGTH, quantization_recipe="none", externalize_embedder=True,
                         experimental_lightweight_conversion=True)
    files = sorted(Path(spec["output_dir"]).glob("*.litertlm"))
    if len(files) != 1:
        raise RuntimeError(f"{spec['output_dir']}: expected one .litertlm from the export, found {len(files)}")
    return {"path": str(files[0]), "float_bytes": files[0].stat().st_size}


def _child_quantize(spec: dict) -> dict:
    from ai_edge_quantizer import aeq

    src, final = Path(spec["input"]), Path(spec["output"])
    rc = aeq.quantize_litertlm(str(src), spec["recipe"], str(src.parent), overwrite_outputs=True)
    made = src.parent / f"{src.stem}_{spec['recipe']}.litertlm"
    if rc != 0 or not made.exists():
        raise RuntimeError(f"quantize_litertlm({src}, {spec['recipe']}) returned {rc}; {made} missing")
    os.replace(made, final)
    return {"path": str(final), "sections": _tflite_sections(final)}


def _tflite_sections(path: Path) -> list[dict]:
    import mmap

    sections = litertlm_sections(str(path))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for s in sections:
            if s["data_type"] == "TFLiteModel":
                s["largest_tensors"] = tflite_tensors(mm, s["begin"])
    return sections


def quantize_rows_int4(w):
    """Symmetric int4 per row, as ai-edge-quantizer's recipe does it (`dynamic_wi4c_afp32` on an
    EMBEDDING_LOOKUP, quantized dimension 0): scale = max|row| / 7 (at least 1e-9 / 7), q = clip(rint(w /
    scale), -8, 7), two values a byte with the even element in the low nibble. w: float32 [rows, D], D
    even. Returns (packed uint8 [rows * D / 2], scales float32 [rows], worst |w - q * scale|)."""
    import numpy as np

    bound = np.maximum(np.maximum(np.abs(w.min(axis=1, keepdims=True)), np.abs(w.max(axis=1, keepdims=True))),
                       np.float32(1e-9))
    scale = bound / 7                                       # float32, as the quantizer computes it
    q = np.clip(np.rint(w / scale), -8, 7).astype(np.int8)
    err = float(np.abs(w - q * scale).max())
    q = q.reshape(-1).view(np.uint8) & 15
    return (q[1::2] << 4) | q[0::2], scale.reshape(-1), err


def _child_ple(spec: dict) -> dict:
    """Swap the real PLE table into the staged first stage's per-layer-embedder section."""
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import model_modifier
    from ai_edge_quantizer.utils import litertlm_utils
    from safetensors import safe_open

    stage1, final, rows = Path(spec["input"]), Path(spec["output"]), spec["rows"]
    lf = litertlm_utils.LiteRTLMFile(stage1)
    sid = next(i for i in range(len(lf.sections)) if lf.get_model_type(i) == PLE_SECTION)
    model = lf.read_model(sid)
    int4 = 17
    tables = [t for sg in model.subgraphs for t in sg.tensors if t.type == int4 and int(t.shape[0]) == rows]
    buffers = {t.buffer for t in tables}
    if len(buffers) != 1:
        raise RuntimeError(f"{stage1}: {PLE_SECTION}: expected one int4 table of {rows} rows, found buffers {buffers}")
    with safe_open(spec["shard"], framework="pt") as f:
        sl = f.get_slice(spec["key"])
        vocab, width = sl.get_shape()
        if width != int(tables[0].shape[1]) or width % 2:
            raise RuntimeError(f"{spec['shard']}: {spec['key']}: width {width}, "
                               f"expected {int(tables[0].shape[1])} (even)")
        packed = np.empty(vocab * width // 2, np.uint8)     # [V * D / 2]
        scales = np.empty(vocab, np.float32)                # [V]
        block, worst = max(1, (64 << 20) // (width * 4)), 0.0
        for r0 in range(0, vocab, block):
            r1 = min(vocab, r0 + block)
            p, sc, err = quantize_rows_int4(sl[r0:r1].float().numpy())
            packed[r0 * width // 2:r1 * width // 2], scales[r0:r1], worst = p, sc, max(worst, err)
    for t in tables:
        t.shape = np.array([vocab, width], np.int32)           # the schema's int32 vector
        t.quantization.scale = scales
        t.quantization.zeroPoint = np.zeros(vocab, np.int64)
    buf = model.buffers[buffers.pop()]
    buf.data, buf.offset, buf.size = packed, 0, 0
    # The quantizer's own serialization (ModelModifier.modify_model's last step), so the section is laid
    # out as in a one-process build.
    packed_data = model_modifier._PackedBufferData(model)
    section = final.with_suffix(".ple.tflite")
    if packed_data.packed_size < 256 * 1024:
        data = flatbuffer_utils.convert_object_to_bytearray(model)
    else:
        data = model_modifier.ModelModifier(model)._serialize_model(model, packed_data, serialize_to_path=section)
    lf.serialize(final, {sid: data})
    del data
    section.unlink(missing_ok=True)
    return {"path": str(final), "ple_shape": [vocab, width], "ple_int4_worst_abs_error": worst,
            "sections": _tflite_sections(final)}


# ----------------------------------------------------------------------------------------------------
# Child: run
# ----------------------------------------------------------------------------------------------------

def _residency(model: str, sections: list[dict]) -> dict:
    vmas = childproc.procfs.file_vmas(model)
    pages = childproc.procfs.resident_file_pages(vmas)
    per_section = {}
    for s in sections:
        name = s["model_type"] or s["data_type"]
        lo, hi = s["begin"] // _PAGE, (s["end"] + _PAGE - 1) // _PAGE
        per_section[name] = sum(1 for p in pages if lo <= p < hi) * _PAGE
    return {"mappings": len(vmas), "mapped_bytes": sum(v["end"] - v["start"] for v in vmas),
            "file_rss_bytes": sum(v["rss"] for v in vmas), "ple_resident_bytes": per_section.get(PLE_SECTION),
            "sections_resident_bytes": per_section}


def _drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def _child_run(spec: dict) -> dict:
    model = Path(spec["model"])
    caches = lambda: sorted(model.parent.glob(model.name + "_*.xnnpack_cache"))   # noqa: E731
    if spec["cold"]:
        _drop_page_cache(model)
        for c in caches():
            c.unlink()
    sections = litertlm_sections(str(model))
    cache_before = [c.name for c in caches()]

    import litert_lm

    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    residency = {"before_load": _residency(str(model), sections)}
    host = childproc.procfs.proc_status()   # the Python host with the runtime imported, before the model is loaded
    t0 = time.perf_counter()
    engine = litert_lm.Engine(str(model), backend=litert_lm.Backend.CPU(thread_count=spec["threads"]),
                              cache_dir=str(model.parent), enable_benchmark=True, **spec["engine_options"])
    load_s = time.perf_counter() - t0
    residency["after_load"] = _residency(str(model), sections)
    ids, text, n_new = spec["ids"], spec["text"], spec["n_new"]
    got = engine.tokenize(text)
    if got != ids:
        first = next((i for i, (a, b) in enumerate(zip(got, ids)) if a != b), min(len(got), len(ids)))
        raise RuntimeError(f"{model.name}: the engine's tokenizer turns the prompt text into {len(got)} ids, "
                           f"expected the {len(ids)} prompt ids; first difference at {first} "
                           f"(was the file built by this module's build, with its WordLevel tokenizer?)")
    sampler = litert_lm.SamplerConfig(top_k=1, temperature=0.0)

    def generate(first: bool) -> dict:
        session = engine.create_session(apply_prompt_template=False, sampler_config=sampler, max_output_tokens=n_new)
        t0 = time.perf_counter()
        session.run_prefill([text])
        t1 = time.perf_counter()
        if first:
            residency["after_prefill"] = _residency(str(model), sections)
        chunks, stamps = [], []
        for r in session.run_decode_async():       # streamed: one chunk per token (WordLevel words)
            stamps.append(time.perf_counter())
            chunks.append(r.texts[0])
        t2 = time.perf_counter()
        if first:
            residency["after_first_prompt"] = _residency(str(model), sections)
        info = session.get_benchmark_info()
        session.close()
        n = info.last_decode_token_count
        steady_s = stamps[-1] - stamps[0] if n > 1 and len(stamps) > 1 else 0.0   # after the first token
        return {"prefill_s": t1 - t0, "prefill_tok_s": len(ids) / (t1 - t0),
                "ttft_s": (stamps[0] if stamps else t2) - t0, "decode_tokens": n, "chunks": len(chunks),
                "decode_s": t2 - t1, "decode_tok_s": (n - 1) / steady_s if steady_s else 0.0,
                "decode_s_per_token": steady_s / (n - 1) if steady_s else 0.0,
                "tokens": engine.tokenize(" ".join(chunks)) if chunks else [],
                "engine": {"ttft_s": info.time_to_first_token_in_second,
                           "prefill_tokens": info.last_prefill_token_count,
                           "prefill_tok_s": info.last_prefill_tokens_per_second,
                           "decode_tokens": info.last_decode_token_count,
                           "decode_tok_s": info.last_decode_tokens_per_second}}

    warm = generate(first=True)
    runs = [generate(first=False) for _ in range(spec["repeats"])]
    residency["at_end"] = _residency(str(model), sections)
    st = childproc.procfs.proc_status()
    cache_after = caches()
    cache_vmas = [v for c in cache_after for v in childproc.procfs.file_vmas(str(c))]
    out = {"load_s": load_s,
           "memory": {"peak_rss_bytes": st["VmHWM"], "rss_bytes": st["VmRSS"], "rss_anon_bytes": st["RssAnon"],
                      "rss_file_bytes": st["RssFile"], "host_rss_before_load_bytes": host["VmRSS"],
                      "host_rss_anon_before_load_bytes": host["RssAnon"]},
           "weight_cache": {"existed_before_load": bool(cache_before),
                            "files": {c.name: c.stat().st_size for c in cache_after},
                            "rss_bytes": sum(v["rss"] for v in cache_vmas)},
           "residency": residency, "warmup": {k: v for k, v in warm.items() if k != "tokens"}, "runs": runs}
    return out


if __name__ == "__main__":
    # This file is named like the runtime's package: keep its folder off the path so `import litert_lm`
    # in the child finds the installed runtime, not this module.
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    mode, spec_json = sys.argv[1], sys.argv[2]
    child = {"convert": _child_convert, "quantize": _child_quantize, "ple": _child_ple, "run": _child_run}[mode]
    result = child(json.loads(spec_json))
    print(RESULT_MARK + json.dumps(result), flush=True)

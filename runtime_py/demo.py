"""`gemma-edge demo`: a random tiny checkpoint with a tokenizer, exported to a bundle, run once, reported.

Each stage is skipped when its output already exists in the work dir, so a second demo starts at the run.
The weights are random, so the generated text is noise; the point is the pipeline and the report.
"""
from __future__ import annotations

import time
from pathlib import Path

DEMO_PRESET = "tiny"
# 8da8w (per-channel int8) because the tiny model's PLE projection has 8 inputs, fewer than an 8da4w group.
DEMO_SETTINGS = dict(quant="8da8w", embedding_quant="int8", ple_dtype="int4", max_context=256, prefill_chunk=8)


def demo_checkpoint(work: Path) -> Path:
    from gemma_edge.contract.presets import preset
    from gemma_edge.export.random_checkpoint import write_random_checkpoint
    from gemma_edge.export.random_tokenizer import write_test_tokenizer

    ckpt = work / "checkpoint"
    if not (ckpt / "config.json").exists():
        cfg = preset(DEMO_PRESET)
        write_random_checkpoint(ckpt, cfg, seed=0, progress=False)
    if not (ckpt / "tokenizer.json").exists():
        write_test_tokenizer(ckpt, preset(DEMO_PRESET).vocab_size)
    return ckpt


def demo_bundle(work: Path, ckpt: Path) -> Path:
    from gemma_edge.contract import bundle_format as bf
    from gemma_edge.export.exporter import ExportSettings, export_bundle

    bundle = work / "bundle"
    manifest = bundle / bf.MANIFEST_FILE
    stale = manifest.exists() and (bf.read_manifest(bundle)["export"].get("program_revision", 1)
                                   != bf.PROGRAM_REVISION)   # an older gemma-edge's export: build it again
    if not manifest.exists() or stale:
        export_bundle(ckpt, bundle, ExportSettings(**DEMO_SETTINGS), progress=True, overwrite=True)
    return bundle


def run_demo(work_dir: str | Path, prompt: str = "The quick brown fox", max_new_tokens: int = 24,
             device: str = "pixel-8") -> int:
    from .run_report import run_bundle

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] random {DEMO_PRESET} checkpoint with tokenizer in {work / 'checkpoint'}")
    ckpt = demo_checkpoint(work)
    print(f"[2/4] export bundle ({', '.join(f'{k}={v}' for k, v in DEMO_SETTINGS.items())}) in {work / 'bundle'}")
    bundle = demo_bundle(work, ckpt)
    print(f"[3/4] run (Python runtime): {prompt!r}\n")
    r = run_bundle(bundle, prompt=prompt, max_new_tokens=max_new_tokens, device=device, validate=True,
                   checkpoint=ckpt)
    same = run_native(bundle, r, max_new_tokens)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s (random weights: the text is noise)")
    return 0 if r.phone.ok and same else 1


def run_native(bundle: Path, r, max_new_tokens: int) -> bool:
    """[4/4] The same prompt through the native host (C++, no Python in its process): same greedy tokens
    as the Python runtime, and the memory a phone app would hold."""
    from gemma_edge.contract import bundle_format as bf

    from . import native

    print("\n[4/4] run (native host gemma-edge-run: ExecuTorch C++ Module, no Python)")
    res = native.run(bundle, r.prompt_ids, max_new_tokens, stop_on_eos=True)
    got = res["runs"][0]
    eos = set(bf.read_manifest(bundle)["eos_token_ids"])
    same = got["tokens"] == r.tokens
    mem, mb = res["memory"], lambda n: f"{n / 2**20:.0f} MiB"   # noqa: E731
    print(f"  tokens: {len([t for t in got['tokens'] if t not in eos])} generated, "
          f"{'identical to' if same else 'DIFFERENT FROM'} the Python runtime's")
    print(f"  TTFT {got['ttft_s'] * 1e3:.1f} ms, prefill {got['prefill_tok_s']:.0f} tok/s, "
          f"decode {got['decode_tok_s']:.0f} tok/s")
    print(f"  peak RSS {mb(mem['end']['VmHWM'])} (host before loading {mb(mem['host']['VmRSS'])}); the Python "
          f"process peaked at {mb(r.rss_after['VmHWM'])} (host {mb(r.rss_before['VmRSS'])})")
    return same

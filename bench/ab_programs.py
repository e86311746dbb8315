"""Two bundles' programs side by side in one process: prefill and decode speed, run alternately.

    python bench/ab_programs.py BUNDLE_A BUNDLE_B [--rounds 6] [--prompt 128] [--decode-steps 32] [--threads 2]

Both programs are loaded once; each round runs a prefill of `--prompt` tokens (<bos> + fixed ids) and
`--decode-steps` greedy decode steps on A, then on B. The first round is a warm-up; the medians of the rest
are compared, so drift of the machine between runs (this shared VM's bandwidth moves ±20 % over an hour)
hits both alike. For comparing program revisions or export settings of the same checkpoint; prints a table
and writes JSON (bench/results/ab_programs.json by default)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def run(bundles: list[Path], rounds: int, prompt: int, decode_steps: int, threads: int) -> dict:
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama:: cache ops)
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.pybindings import portable_lib

    from gemma_edge import ple_store
    from gemma_edge.export import bundle_format as bf

    portable_lib._unsafe_reset_threadpool(threads)
    progs = {}
    for b in bundles:
        manifest = bf.read_manifest(b)
        method = bf.role_methods(manifest)
        if method[bf.PREFILL_ROLE] != method[bf.DECODE_ROLE]:
            raise SystemExit(f"{b}: a two-method program; this compares one-method bundles")
        if prompt > manifest["prefill_chunk"]:
            raise SystemExit(f"--prompt {prompt}: {b}'s prefill takes at most {manifest['prefill_chunk']} tokens")
        ple = ple_store.open(b / bf.PLE_FILE)
        ids = np.array([manifest["bos_token_id"]] + [(1000 + i) % ple.header.vocab_size for i in range(prompt - 1)], np.int64)
        progs[b] = (portable_lib._load_for_executorch(str(b / bf.PROGRAM_FILE)), method[bf.PREFILL_ROLE], ple, ids)

    def step(module, name, tokens, pos, rows):
        return module.run_method(name, (torch.from_numpy(tokens.reshape(1, -1)), torch.from_numpy(pos),
                                        torch.from_numpy(np.ascontiguousarray(rows, np.float32)[None])))

    res = {str(b): {"prefill_tok_s": [], "decode_tok_s": []} for b in bundles}
    for r in range(rounds):
        for b, (module, name, ple, ids) in progs.items():
            rows = ple.fetch(ids)
            t0 = time.perf_counter()
            out = step(module, name, ids, np.arange(prompt), rows)
            t1 = time.perf_counter()
            tok, pos = int(out[0].argmax()), prompt
            for _ in range(decode_steps):
                out = step(module, name, np.array([tok]), np.array([pos]), ple.fetch_one(tok)[None])
                tok, pos = int(out[0].argmax()), pos + 1
            t2 = time.perf_counter()
            if r:  # round 0 warms up
                res[str(b)]["prefill_tok_s"].append(prompt / (t1 - t0))
                res[str(b)]["decode_tok_s"].append(decode_steps / (t2 - t1))
    for _, _, ple, _ in progs.values():
        ple.close()
    for v in res.values():
        v["prefill_median"] = statistics.median(v["prefill_tok_s"])
        v["decode_median"] = statistics.median(v["decode_tok_s"])
    a, b = (str(x) for x in bundles)
    return {"bundles": [a, b], "rounds_timed": rounds - 1, "prompt": prompt, "decode_steps": decode_steps,
            "threads": threads, "runs": res,
            "a_over_b": {"prefill": res[a]["prefill_median"] / res[b]["prefill_median"],
                         "decode": res[a]["decode_median"] / res[b]["decode_median"]},
            "date": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle_a", type=Path)
    ap.add_argument("bundle_b", type=Path)
    ap.add_argument("--rounds", type=int, default=6, help="rounds including the warm-up (≥ 2)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "ab_programs.json")
    args = ap.parse_args()
    if args.rounds < 2:
        raise SystemExit(f"--rounds: expected ≥ 2 (one warm-up, then timed rounds), found {args.rounds}")
    out = run([args.bundle_a, args.bundle_b], args.rounds, args.prompt, args.decode_steps, args.threads)
    print(f"{'bundle':<48}{'prefill tok/s':>14}{'decode tok/s':>14}   per round (prefill / decode)")
    for name in out["bundles"]:
        v = out["runs"][name]
        print(f"{name[-48:]:<48}{v['prefill_median']:>14.1f}{v['decode_median']:>14.2f}   "
              f"{' '.join(f'{x:.0f}' for x in v['prefill_tok_s'])} / {' '.join(f'{x:.1f}' for x in v['decode_tok_s'])}")
    print(f"A / B: prefill {out['a_over_b']['prefill']:.3f}x, decode {out['a_over_b']['decode']:.3f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

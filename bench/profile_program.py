"""Where a bundle's program spends its time: ExecuTorch's ETDump of one prefill and N decode steps,
per operator (XNNPACK's own ops inside delegate calls, native kernels outside them).

    python bench/profile_program.py BUNDLE [--threads 2] [--prompt 128] [--decode-steps 16] [--json out.json]

One warm-up prefill, then a measured prefill of `--prompt` tokens (≤ the bundle's prefill chunk) from
position 0 and `--decode-steps` greedy decode steps, all in one process with the bundle's PLE rows.
Prints, per phase, the share of each operator in the program's time (milliseconds per call of the phase:
per prefill, per decode step) and writes the same as JSON. Rows:
- `Method::execute`: the whole step; `DELEGATE_CALL`: time inside XNNPACK delegate calls (the sum of their
  `DELEGATE:*` rows plus the call overhead); `OPERATOR_CALL`: time in native kernels, itemised as
  `native_call_*` / `llama::*`.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import program_steps


def profile(bundle: Path, threads: int, prompt: int, decode_steps: int) -> dict:
    from executorch.devtools import Inspector

    prog = program_steps.load(bundle, prompt, threads, etdump=True)
    prog.step(prog.ids, np.arange(prompt), prog.ple.fetch(prog.ids))            # warm-up (event run 0)
    prefill_s, decode_s, _ = program_steps.prefill_then_decode(prog, decode_steps)  # event runs 1, 2..
    decode_s /= max(decode_steps, 1)
    prog.close()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "run.etdp")
        prog.module.write_etdump_result_to_file(path)
        inspector = Inspector(etdump_path=path)
    per_phase = {"prefill": collections.defaultdict(lambda: [0, 0.0]),
                 "decode": collections.defaultdict(lambda: [0, 0.0])}
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for ev in block.events:
            for run, t in enumerate(ev.perf_data.raw if ev.perf_data else []):
                if run == 0:
                    continue
                name = f"DELEGATE:{ev.name}" if ev.delegate_debug_identifier is not None else str(ev.name)
                agg = per_phase["prefill" if run == 1 else "decode"][name]
                agg[0] += 1
                agg[1] += t
    calls = {"prefill": 1, "decode": max(decode_steps, 1)}
    phases = {}
    for phase, agg in per_phase.items():
        total = agg.get("Method::execute", [0, 0.0])[1] or sum(v[1] for v in agg.values())
        phases[phase] = [{"op": name, "calls_per_step": n / calls[phase], "ms_per_step": t / calls[phase],
                          "share": t / total if total else 0.0}
                         for name, (n, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])]
    return {"bundle": str(bundle), "threads": threads, "prompt": prompt, "decode_steps": decode_steps,
            "prefill_tok_s": prompt / prefill_s, "decode_tok_s": 1 / decode_s, "ops": phases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res = profile(args.bundle, args.threads, args.prompt, args.decode_steps)
    print(f"{res['bundle']}: {args.threads} threads, prefill {res['prefill_tok_s']:.1f} tok/s ({args.prompt} tokens), "
          f"decode {res['decode_tok_s']:.2f} tok/s ({args.decode_steps} steps; profiling on)")
    for phase, rows in res["ops"].items():
        print(f"\n{phase:<56}{'calls/step':>11}{'ms/step':>10}{'share':>8}")
        for r in rows[:args.top]:
            print(f"  {r['op'][:54]:<54}{r['calls_per_step']:>11.0f}{r['ms_per_step']:>10.2f}{100 * r['share']:>7.1f}%")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"\nwritten to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

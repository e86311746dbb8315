"""Two bundles' programs side by side in one process: prefill and decode speed, run alternately.

    python bench/ab_programs.py BUNDLE_A BUNDLE_B [--rounds 6] [--prompt 128] [--decode-steps 32] [--threads 2]

Both programs are loaded once; each round runs a prefill of `--prompt` tokens (<bos> + fixed ids) and
`--decode-steps` greedy decode steps on A, then on B. The first round is a warm-up; the medians of the rest
are compared, so drift of the machine between runs (this shared VM's bandwidth moves ±20 % over an hour)
hits both alike; the greedy tokens of A and B are compared too. For comparing program revisions or export
settings of the same checkpoint; prints a table and writes JSON (bench/results/ab_programs.json by default)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import program_steps


def run(bundles: list[Path], rounds: int, prompt: int, decode_steps: int, threads: int) -> dict:
    progs = [program_steps.load(b, prompt, threads) for b in bundles]
    res = {side: {"bundle": str(b), "prefill_tok_s": [], "decode_tok_s": []} for side, b in zip("ab", bundles)}
    for r in range(rounds):
        for side, prog in zip("ab", progs):  # keyed by side: A may be B itself (the noise floor)
            prefill_s, decode_s, tokens = program_steps.prefill_then_decode(prog, decode_steps)
            v = res[side]
            v["tokens"] = tokens  # the greedy continuation: the same every round, so kept once
            if r:  # round 0 warms up
                v["prefill_tok_s"].append(prompt / prefill_s)
                v["decode_tok_s"].append(decode_steps / decode_s)
    for prog in progs:
        prog.close()
    for v in res.values():
        v["prefill_median"] = statistics.median(v["prefill_tok_s"])
        v["decode_median"] = statistics.median(v["decode_tok_s"])
    a, b = res["a"], res["b"]
    return {"bundles": [str(x) for x in bundles], "rounds_timed": rounds - 1, "prompt": prompt,
            "decode_steps": decode_steps, "threads": threads, "runs": res,
            "a_over_b": {"prefill": a["prefill_median"] / b["prefill_median"],
                         "decode": a["decode_median"] / b["decode_median"]},
            "greedy_tokens_agree": sum(x == y for x, y in zip(a["tokens"], b["tokens"])) / len(a["tokens"]),
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
    for side, v in out["runs"].items():
        name = f"{side.upper()} {v['bundle']}"
        print(f"{name[-48:]:<48}{v['prefill_median']:>14.1f}{v['decode_median']:>14.2f}   "
              f"{' '.join(f'{x:.0f}' for x in v['prefill_tok_s'])} / {' '.join(f'{x:.1f}' for x in v['decode_tok_s'])}")
    print(f"A / B: prefill {out['a_over_b']['prefill']:.3f}x, decode {out['a_over_b']['decode']:.3f}x; "
          f"greedy tokens the same in {100 * out['greedy_tokens_agree']:.0f} % of positions")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Two checkouts' native hosts on one bundle, run alternately: did a change to the host move its figures?

    python bench/ab_native.py BUNDLE --a OLD_CHECKOUT --b NEW_CHECKOUT [--rounds 7] [--prompt 128]
        [--new-tokens 64] [--threads 2] [--out bench/results/ab_native.json]

Each checkout (a git worktree, e.g. `git worktree add ../old HEAD~3`) builds its own gemma-edge-run from its
own sources, through this venv with the checkout's code in place of the installed one, and runs it with its
own `gemma_edge.runtime.native.run` (whose flags may differ between the two). Rounds alternate A, B, A, B
(round 0 of each is a warm-up that also writes the weight cache), so the machine's drift hits both alike;
the medians of the rest are compared, and the greedy tokens of A and B must be the same. Prints a table
and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from gemma_edge.procfs import cpu_isa, isa_line

HERE = Path(__file__).resolve().parent
MARK = "AB_NATIVE_RESULT "

# Run in a child with the checkout's packages in place of the installed ones (the editable install's finder
# maps gemma_edge.* to folders; point them at the checkout), so each side builds and runs its own host.
CHILD = r"""
import json, sys
# the editable install's finder (its module name carries the package version): the one holding MAPPING
finder = next(m for m in list(sys.modules.values()) if "gemma_edge" in getattr(m, "MAPPING", {}))
root, bundle, ids, new_tokens, threads = (sys.argv[1], sys.argv[2], json.loads(sys.argv[3]),
                                          int(sys.argv[4]), int(sys.argv[5]))
for name, path in list(finder.MAPPING.items()):
    finder.MAPPING[name] = root + path[path.rindex("/"):]
from gemma_edge.runtime import native
assert native.__file__.startswith(root), native.__file__
res = native.run(bundle, ids, new_tokens, threads=threads, repeats=1)
print(%r + json.dumps({"load_s": res["load_s"], "peak_rss_bytes": res["memory"]["end"]["VmHWM"],
                       "host_rss_bytes": res["memory"]["host"]["VmRSS"], **{k: res["runs"][0][k] for k in
                       ("ttft_s", "prefill_tok_s", "decode_tok_s", "tokens")}}))
""" % MARK


def run_side(root: Path, bundle: Path, ids: list[int], new_tokens: int, threads: int) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(root), str(bundle), json.dumps(ids), str(new_tokens),
                        str(threads)], capture_output=True, text=True, cwd=root)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith(MARK)), None)
    if p.returncode or line is None:
        raise SystemExit(f"{root}: the native run failed (status {p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(line[len(MARK):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    ap.add_argument("--b", type=Path, required=True, help="checkout B")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per side, the first a warm-up")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (<bos> + fixed ids)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ab_native.json")
    args = ap.parse_args()
    if args.rounds < 2:
        raise SystemExit("--rounds: expected ≥ 2 (the first is a warm-up)")
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    vocab = manifest["vocab_size"]
    ids = [manifest["bos_token_id"]] + [(1000 + 7919 * i) % vocab for i in range(args.prompt - 1)]
    roots = {"a": args.a.resolve(), "b": args.b.resolve()}
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for side, root in roots.items():
            res = run_side(root, args.bundle.resolve(), ids, args.new_tokens, args.threads)
            print(f"round {r} {side}: TTFT {res['ttft_s']:.3f} s, prefill {res['prefill_tok_s']:.1f}, "
                  f"decode {res['decode_tok_s']:.2f} tok/s, peak RSS {res['peak_rss_bytes'] / 1e9:.3f} GB", flush=True)
            runs[side].append(res)
    keys = ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_bytes", "host_rss_bytes")
    med = {side: {k: statistics.median(x[k] for x in rs[1:]) for k in keys} for side, rs in runs.items()}
    spread = {side: {k: (min(x[k] for x in rs[1:]), max(x[k] for x in rs[1:])) for k in keys}
              for side, rs in runs.items()}
    same_tokens = all(x["tokens"] == runs["a"][0]["tokens"] for rs in runs.values() for x in rs)
    print(f"\n{'median of ' + str(args.rounds - 1) + ' rounds':<24}{'A':>14}{'B':>14}{'B / A':>9}   (A min-max)")
    for k in keys:
        a, b = med["a"][k], med["b"][k]
        lo, hi = spread["a"][k]
        print(f"{k:<24}{a:>14.4g}{b:>14.4g}{b / a if a else float('nan'):>9.3f}   ({lo:.4g}-{hi:.4g})")
    print(f"same greedy tokens: {same_tokens}; ISA: {isa_line()}")
    out = {"bundle": str(args.bundle), "a": str(roots["a"]), "b": str(roots["b"]), "isa": cpu_isa(),
           "prompt_tokens": args.prompt, "new_tokens": args.new_tokens, "threads": args.threads,
           "rounds": args.rounds, "median": med, "spread": spread,
           "ratio_b_over_a": {k: med["b"][k] / med["a"][k] for k in keys if med["a"][k]},
           "same_tokens": same_tokens, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0 if same_tokens else 1


if __name__ == "__main__":
    sys.exit(main())

"""LiteRT-LM's engine settings side by side: one `.litertlm`, the same prompt, each setting in turn.

    python bench/litert_settings.py work_dirs/h2h/<key>/litert/gemma4_litert_gemma4_mixed48.litertlm --label e2b-p128

The head-to-head must time the peer as it runs best. `../shared/docs/litert-lm-notes.md` measured it with
`use_ringbuffers_local_attention=True`, where an engine left alone takes the runtime's defaults; whether
that (or any other setting here) changes speed, memory or tokens is what this measures. It runs
every setting in SETTINGS on one file, alternating (setting A, B, C, then A, B, C again), each run a child
of the peer's venv (`bench/peers/litert_lm.run`: a warm-up, then medians of `--repeats`), and prints
prefill / decode tok/s, TTFT and peak RSS per setting with the ratio to the first one. JSON:
`bench/results/litert_settings.json`, under `--label`.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import litert_lm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "litert_settings.json"
SETTINGS = {
    "defaults": {},
    "ringbuffers": {"use_ringbuffers_local_attention": True},
    "ringbuffers+ynnpack": {"use_ringbuffers_local_attention": True, "enable_ynnpack": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a .litertlm built by bench/peers/litert_lm.build")
    ap.add_argument("--venvs", default="work_dirs/h2h/venvs")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the settings, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--label", required=True)
    args = ap.parse_args()
    model = Path(args.model)
    if not model.is_file():
        raise SystemExit(f"{model}: no such .litertlm")
    names = [s for s in args.settings.split(",") if s]
    bad = set(names) - set(SETTINGS)
    if bad:
        raise SystemExit(f"--settings: expected some of {list(SETTINGS)}, found {sorted(bad)}")
    venv = litert_lm.ensure_venv(Path(args.venvs))
    rng = random.Random(0)
    ids = [2] + [rng.randrange(3, 255999) for _ in range(args.prompt - 1)]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    failed: dict[str, str] = {}
    for r in range(args.rounds):
        for name in names:
            if name in failed:
                continue
            try:
                res = litert_lm.run(model, venv, ids, args.new_tokens, args.threads, args.repeats,
                                    engine_options=SETTINGS[name])
            except RuntimeError as e:   # e.g. the engine refuses the setting; the message names the child's log
                failed[name] = str(e)
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {e}", flush=True)
                continue
            runs[name].append(res)
            print(f"[{time.strftime('%H:%M:%S')}] round {r + 1} {name}: prefill {res['prefill_tok_s']:.1f} tok/s, "
                  f"decode {res['decode_tok_s']:.2f} tok/s, peak {res['peak_rss_bytes'] / 1e9:.2f} GB", flush=True)

    med = lambda name, k: statistics.median(x[k] for x in runs[name])   # noqa: E731
    names = [n for n in names if n not in failed]
    if not names:
        raise SystemExit("every setting failed")
    base = names[0]
    rows = {}
    for name in names:
        rows[name] = {"engine_options": SETTINGS[name],
                      **{k: med(name, k) for k in ("prefill_tok_s", "decode_tok_s", "ttft_s", "peak_rss_bytes")},
                      "decode_tokens": min(x["decode_tokens"] for x in runs[name]),
                      "same_tokens_as_first": runs[name][0]["runs"][0]["tokens"] == runs[base][0]["runs"][0]["tokens"]}
        rows[name]["decode_vs_first"] = round(rows[name]["decode_tok_s"] / rows[base]["decode_tok_s"], 3)
        rows[name]["prefill_vs_first"] = round(rows[name]["prefill_tok_s"] / rows[base]["prefill_tok_s"], 3)
    head = (f"{'setting':<22}{'prefill t/s':>12}{'decode t/s':>11}{'TTFT s':>8}{'peak GB':>9}"
            f"{'decode ×':>9}{'prefill ×':>10}  tokens")
    print(head + "\n" + "-" * len(head))
    for name, why in failed.items():
        print(f"{name:<22}failed: {why[:120]}")
    for name, x in rows.items():
        print(f"{name:<22}{x['prefill_tok_s']:>12.1f}{x['decode_tok_s']:>11.2f}{x['ttft_s']:>8.2f}"
              f"{x['peak_rss_bytes'] / 1e9:>9.2f}{x['decode_vs_first']:>9.2f}{x['prefill_vs_first']:>10.2f}  "
              f"{'same' if x['same_tokens_as_first'] else 'DIFFERENT'} ({x['decode_tokens']} decoded)")
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[args.label] = {"model": str(model), "model_bytes": model.stat().st_size, "prompt": args.prompt,
                        "new_tokens": args.new_tokens, "repeats": args.repeats, "rounds": args.rounds,
                        "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M"), "settings": rows,
                        "failed": failed}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))
    print(f"written to {RESULTS} under {args.label!r}")


if __name__ == "__main__":
    main()

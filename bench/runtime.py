"""Benchmark: prefill / decode tok/s and peak RSS of our .pte session, our eager session and transformers,
one process each.

    python bench/runtime.py --bundle DIR --checkpoint DIR [--prompt-tokens 64] [--new-tokens 32] [--label NAME]

Each system runs in its own subprocess (clean VmHWM): load, one warm-up generation, then the timed
one — greedy, same prompt ids, eos ignored. Prints a table and merges the rows into
bench/results/runtime.json under the label.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from gemma_edge.procfs import proc_status

RESULTS = Path(__file__).parent / "results" / "runtime.json"
SYSTEMS = ("pte", "eager", "transformers")


def prompt_ids(vocab: int, n: int) -> list[int]:
    import numpy as np

    return [2] + np.random.default_rng(0).integers(3, vocab, n - 1).tolist()


def mem_row(st: dict) -> dict:
    return {"peak_rss": st["VmHWM"], "rss_anon": st.get("RssAnon", 0), "rss_file": st.get("RssFile", 0)}


def run_session(system: str, bundle: str, checkpoint: str, n_prompt: int, n_new: int) -> dict:
    from gemma_edge.contract import bundle_format as bf
    from gemma_edge.runtime import Session
    from gemma_edge.runtime.backends import preload

    m = bf.read_manifest(bundle)
    if system == "pte":
        preload("pte")
    t0 = time.perf_counter()
    s = Session(bundle) if system == "pte" else Session.from_checkpoint(checkpoint, max_context=m["max_context"],
                                                                        prefill_chunk=m["prefill_chunk"])
    load_s = time.perf_counter() - t0
    ids = prompt_ids(s.config.vocab_size, n_prompt)
    list(s.generate(ids[:8], 4, stop_on_eos=False))                  # warm-up
    toks = [t.token for t in s.generate(ids, n_new, stop_on_eos=False)]
    st = s.last_run
    mem = proc_status()                                             # while the session is alive
    return {**mem_row(mem), "load_s": load_s, "prefill_tok_s": st.prefill_tok_s,
            "decode_tok_s": st.decode_tok_s, "ttft_s": st.ttft_s, "tokens": toks, "prefill_chunk": s.prefill_chunk}


def run_transformers(checkpoint: str, n_prompt: int, n_new: int, vocab: int) -> dict:
    import torch
    from transformers import Gemma4ForCausalLM

    t0 = time.perf_counter()
    model = Gemma4ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt_ids(vocab, n_prompt)])

    def gen(x, n):
        with torch.no_grad():
            t_a = time.perf_counter()
            out = model(input_ids=x, use_cache=True)
            tok = out.logits[0, -1].argmax()
            t_b = time.perf_counter()
            toks, past = [int(tok)], out.past_key_values
            for _ in range(n - 1):
                out = model(input_ids=tok.view(1, 1), past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[0, -1].argmax()
                toks.append(int(tok))
            t_c = time.perf_counter()
        return toks, t_b - t_a, t_c - t_b

    gen(ids[:, :8], 4)
    toks, prefill_s, decode_s = gen(ids, n_new)
    return {**mem_row(proc_status()), "load_s": load_s, "prefill_tok_s": ids.shape[1] / prefill_s,
            "decode_tok_s": (n_new - 1) / decode_s, "ttft_s": prefill_s, "tokens": toks}


def worker(args) -> None:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.worker == "transformers":
        from gemma_edge.contract.config import TextConfig

        vocab = TextConfig.from_json(Path(args.checkpoint) / "config.json").vocab_size
        row = run_transformers(args.checkpoint, args.prompt_tokens, args.new_tokens, vocab)
    else:
        row = run_session(args.worker, args.bundle, args.checkpoint, args.prompt_tokens, args.new_tokens)
    print("RESULT " + json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--label", default=None)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    rows = {}
    for system in args.systems.split(","):
        cmd = [sys.executable, __file__, "--worker", system, "--bundle", args.bundle, "--checkpoint", args.checkpoint,
               "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{system} failed:\n{proc.stderr[-3000:]}")
        rows[system] = json.loads(line[len("RESULT "):])
    ref = rows.get("eager", {}).get("tokens")
    print(f"{'system':<13}{'load s':>8}{'prefill tok/s':>15}{'decode tok/s':>14}{'TTFT ms':>10}{'peak RSS MiB':>14}"
          f"{'anon/file MiB':>16}  same tokens as eager")
    for name, r in rows.items():
        print(f"{name:<13}{r['load_s']:8.2f}{r['prefill_tok_s']:15.1f}{r['decode_tok_s']:14.1f}"
              f"{r['ttft_s'] * 1e3:10.1f}"
              f"{r['peak_rss'] / 2**20:14.1f}{r['rss_anon'] / 2**20:8.0f}/{r['rss_file'] / 2**20:<7.0f}  "
              f"{'-' if ref is None else r['tokens'] == ref}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    label = args.label or Path(args.bundle).name
    data[label] = {"bundle": str(args.bundle), "checkpoint": str(args.checkpoint), "prompt_tokens": args.prompt_tokens,
                   "new_tokens": args.new_tokens, "machine": "2-core / 24 GiB build machine", "systems": rows}
    RESULTS.write_text(json.dumps(data, indent=2))
    print(f"written to {RESULTS} under {label!r}")


if __name__ == "__main__":
    main()

"""A bundle's program stepped directly (no runtime session around it): what bench/profile_program.py and
bench/ab_programs.py share.

    prog = load(bundle, prompt=128, threads=2)          # the .pte, its PLE file, <bos> + fixed prompt ids
    prefill_s, decode_s, tokens = prefill_then_decode(prog, decode_steps=32)
    prog.close()
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gemma_edge.runtime.backends import pte_step_inputs


@dataclass
class Program:
    bundle: Path
    module: object  # executorch pybindings module
    method: str
    ple: object  # ple_store reader
    ids: np.ndarray  # the prompt: <bos> and fixed ids inside the vocabulary

    arity: int  # the program's inputs: 3, 4 (attend_len, revision >= 5) or 5 (soft_embeds, revision >= 6)
    soft_width: int  # soft_embeds [1, T, H]: H (0 before revision 6)

    def step(self, tokens: np.ndarray, pos: np.ndarray, rows: np.ndarray):
        """One call of the program's method: tokens [T], positions [T], PLE rows [T, L, P] (and attend_len, of
        length last position + 1, and zero soft tokens, for a program that takes them)."""
        return self.module.run_method(self.method, pte_step_inputs(tokens, pos, rows, self.arity, self.soft_width))

    def close(self) -> None:
        self.ple.close()


def load(bundle: Path, prompt: int, threads: int, etdump: bool = False) -> Program:
    """Load a one-method bundle's program (ExecuTorch's thread pool set to `threads`, process-wide) and PLE
    file; the prompt must fit the program's prefill."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama:: cache ops the program calls)
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.pybindings import portable_lib

    from gemma_edge import ple_store
    from gemma_edge.contract import bundle_format as bf

    manifest = bf.read_manifest(bundle)
    method = bf.role_methods(manifest)
    if method[bf.PREFILL_ROLE] != method[bf.DECODE_ROLE]:
        raise SystemExit(f"{bundle}: a two-method program; only one-method bundles are stepped here")
    if not 1 <= prompt <= manifest["prefill_chunk"]:
        raise SystemExit(f"--prompt {prompt}: {bundle}'s prefill takes 1..{manifest['prefill_chunk']} tokens")
    portable_lib._unsafe_reset_threadpool(threads)
    module = portable_lib._load_for_executorch(str(bundle / bf.PROGRAM_FILE), enable_etdump=etdump)
    ple = ple_store.open(bundle / bf.PLE_FILE)
    vocab = ple.header.vocab_size
    ids = np.array([manifest["bos_token_id"]] + [(1000 + i) % vocab for i in range(prompt - 1)], np.int64)
    meta = module.method_meta(method[bf.PREFILL_ROLE])
    arity = meta.num_inputs()   # as PteBackend decides
    soft_width = list(meta.input_tensor_meta(4).sizes())[-1] if arity >= 5 else 0
    return Program(bundle, module, method[bf.PREFILL_ROLE], ple, ids, arity, soft_width)


def prefill_then_decode(prog: Program, decode_steps: int) -> tuple[float, float, list[int]]:
    """Prefill the prompt from position 0 (its PLE rows in one fetch), then `decode_steps` greedy steps.
    Returns (prefill seconds, decode seconds in all, the greedy tokens: the prefill's and each step's)."""
    n = len(prog.ids)
    rows = prog.ple.fetch(prog.ids)
    t0 = time.perf_counter()
    out = prog.step(prog.ids, np.arange(n), rows)
    t1 = time.perf_counter()
    tokens = [int(out[0].argmax())]
    for pos in range(n, n + decode_steps):
        out = prog.step(np.array([tokens[-1]]), np.array([pos]), prog.ple.fetch_one(tokens[-1])[None])
        tokens.append(int(out[0].argmax()))
    return t1 - t0, time.perf_counter() - t1, tokens

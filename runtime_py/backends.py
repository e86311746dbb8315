"""The three step executors behind a Session — .pte (ExecuTorch), .onnx (onnxruntime), eager (our PyTorch model).

Each offers the same two calls, over KV-cache state it owns:
  prefill(tokens [T] i64, start_pos, ple_rows [T, L, P] f32) -> logits [V] f32 (last position)
  decode(token, pos, ple_row [L, P] f32) -> logits [V] f32
and `all_logits(tokens, ple_rows)` for validation. Positions restart at 0 for a new sequence (the
caches self-reset then). The PLE rows always come from outside: a `.ple` reader, or `TablePle` — the
in-memory table of a checkpoint behind the reader's fetch interface, so the loop is the same.
"""
from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gemma_edge.contract import bundle_format as bf
from gemma_edge.ple_store import FetchStats


def preload(backend: str) -> None:
    """Import a back-end's native libraries now (so a process's baseline memory can be measured after them)."""
    if backend == "pte":
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
        import executorch.runtime  # noqa: F401
    elif backend == "onnx":
        import onnxruntime  # noqa: F401


class TablePle:
    """The checkpoint's PLE table in RAM, with the `.ple` reader's fetch / fetch_one / fetch_log interface."""

    def __init__(self, table: torch.Tensor, num_layers: int, ple_dim: int, scale: float):
        self.table = table                          # [V, L·P], the checkpoint's dtype
        self.num_layers, self.ple_dim = num_layers, ple_dim
        self.scale = torch.tensor(scale, dtype=table.dtype)   # cast like the reference's scaled embedding
        self.fetch_log: list[FetchStats] = []

    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    def fetch(self, token_ids) -> np.ndarray:
        t0 = time.perf_counter()
        ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64))
        rows = (self.table[ids] * self.scale).float().view(len(ids), self.num_layers, self.ple_dim)
        uniq = len(torch.unique(ids))
        self.fetch_log.append(FetchStats(tokens=len(ids), unique_rows=uniq,
                                         bytes_requested=uniq * self.table.shape[1] * self.table.element_size(),
                                         pages_touched=0, read_calls=1, wall_s=time.perf_counter() - t0,
                                         strategy="in-memory"))
        return rows.numpy()

    def fetch_one(self, token_id: int) -> np.ndarray:
        return self.fetch([int(token_id)])[0]

    def resident_bytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    def evict(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# ExecuTorch
# ---------------------------------------------------------------------------------------------------

def pte_step_inputs(tokens: np.ndarray, pos: np.ndarray, rows: np.ndarray, arity: int, soft_width: int = 0,
                    soft: np.ndarray | None = None) -> list[torch.Tensor]:
    """A program step's `arity` inputs: tokens [1, T], input_pos [T], ple_rows [1, T, L, P]; from revision 5
    (four inputs) attend_len, whose length last position + 1 bounds the attended slots (its values are not
    read); from revision 6 (five) soft_embeds [1, T, soft_width]: `soft` [T, soft_width], the images' soft tokens
    at their placeholders, or zeros (a text step)."""
    inputs = [torch.from_numpy(tokens.reshape(1, -1)), torch.from_numpy(pos),
              torch.from_numpy(np.ascontiguousarray(rows, np.float32)[None])]
    if arity >= 4:
        inputs.append(torch.empty(int(pos[-1]) + 1, dtype=torch.long))
    if arity >= 5:
        inputs.append(torch.zeros(1, len(pos), soft_width) if soft is None
                      else torch.from_numpy(np.ascontiguousarray(soft, np.float32)[None]))
    return inputs


class ProgramError(bf.BundleError):
    """ExecuTorch refused to load or run a program (its status code and the method in the message)."""


_ET_LOG = re.compile(r"^\[[\w.]+:\d+\] ")   # ExecuTorch's log prefix, "[program.cpp:184] "


def executorch_call(what: str, fn, *args):
    """fn(*args) with ExecuTorch's log lines held back: on failure they become part of one ProgramError
    (`what`: the message's start), so the reason ExecuTorch logged travels with the error instead of
    preceding it on stderr; on success they are written on as they came. (ExecuTorch's bindings redirect
    its C++ log to whatever sys.stderr is at the time of the call.)"""
    real, held = sys.stderr, io.StringIO()
    sys.stderr = held
    try:
        return fn(*args)
    except RuntimeError as e:
        logged = [_ET_LOG.sub("", ln).strip() for ln in held.getvalue().splitlines()]
        logged = [ln for ln in logged if ln and not ln.startswith("arg ")]   # per-argument type dumps
        held = io.StringIO()
        reason = "; ".join(dict.fromkeys(logged))[:600] or "no reason logged"
        raise ProgramError(f"{what}: {reason} ({e})") from e
    finally:
        sys.stderr = real
        if held.getvalue():
            real.write(held.getvalue())


def load_tower_program(path: Path, sha256: str, role: str, methods, manifest_field: str):
    """A tower's program (`files.{role}`, read only when a prompt needs it): its SHA-256 checked against the
    manifest's before ExecuTorch parses it, its header checked, loaded with internal-consistency verification, and
    `methods` (the manifest's `manifest_field`) present in it."""
    from executorch.runtime import Runtime, Verification

    digest = bf.sha256_file(path)
    if digest != sha256:
        raise bf.BundleError(f"{path}: sha256: expected {sha256} (manifest files.{role}.sha256), found {digest}")
    bf.check_program_header(path)
    program = executorch_call(f"{path}: ExecuTorch cannot load this program",
                              lambda: Runtime.get().load_program(path, verification=Verification.InternalConsistency))
    missing = sorted(set(methods) - set(program.method_names))
    if missing:
        raise ProgramError(f"{path}: methods {missing} missing (manifest {manifest_field}); the program has "
                           f"{sorted(program.method_names)}")
    return program


class PteBackend:
    """The program method(s) playing prefill and decode, loaded up front and once each (two methods share
    the mutable KV-cache buffers; one dynamic method plays both roles with one copy of the packed weights).

    `vocab_size`, `max_tokens` and `max_context` are the program's own bounds, read from its method
    metadata (logits [1, V]; tokens [1, T ≤ max_tokens]; attend_len [N ≤ max_context] from revision 5):
    ids and positions past them must never reach the program, whatever a manifest says."""

    name = "pte"

    def __init__(self, path: Path, prefill_method: str = "forward", decode_method: str = "forward"):
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers llama:: kernels)
        import executorch.kernels.quantized  # noqa: F401  (quantized embedding kernels)
        from executorch.runtime import Runtime, Verification

        self.path = path
        bf.check_program_header(path)
        self.program = executorch_call(f"{path}: ExecuTorch cannot load this program",
                                       lambda: Runtime.get().load_program(
                                           path, verification=Verification.InternalConsistency))
        names = set(self.program.method_names)
        missing = [m for m in (prefill_method, decode_method) if m not in names]
        if missing:
            raise ProgramError(f"{path}: methods {missing} missing; the program has {sorted(names)}")
        load = self.program.load_method
        self._prefill = executorch_call(f"{path}: method {prefill_method}: ExecuTorch cannot load it", load,
                                        prefill_method)
        self._decode = self._prefill if decode_method == prefill_method else executorch_call(
            f"{path}: method {decode_method}: ExecuTorch cannot load it", load, decode_method)
        self._names = {id(self._prefill): prefill_method, id(self._decode): decode_method}
        metas = {m: self.program.metadata(m) for m in {prefill_method, decode_method}}
        arity = {m: meta.num_inputs() for m, meta in metas.items()}
        bad = {m: n for m, n in arity.items() if n not in (3, 4, 5)}
        if bad:
            raise ProgramError(f"{path}: methods {sorted(bad)}: expected 5 inputs ({', '.join(bf.INPUT_NAMES)}), "
                               f"or 4 / 3 (a revision < 6 / < 5 program), found {bad}")
        if len(set(arity.values())) > 1:
            raise ProgramError(f"{path}: methods disagree on their inputs: {arity}")
        # Revision >= 5 programs take attend_len, whose length (last position + 1) bounds the attended slots;
        # revision >= 6 soft_embeds, images' soft tokens.
        self.arity = next(iter(arity.values()))
        self._attend_len = self.arity >= 4
        self._read_bounds(metas[prefill_method], metas[decode_method])
        from gemma_edge.procfs import release_file_mapping

        self.released = release_file_mapping(path)  # delegates hold packed copies now; see its docstring

    def _read_bounds(self, prefill, decode) -> None:
        def sizes(meta, kind: str, i: int) -> list[int]:
            t = meta.output_tensor_meta(i) if kind == "out" else meta.input_tensor_meta(i)
            return list(t.sizes())

        logits = {tuple(sizes(m, "out", 0)) for m in (prefill, decode)}
        if len(logits) != 1 or len(next(iter(logits))) != 2 or next(iter(logits))[0] != 1:
            raise ProgramError(f"{self.path}: output logits: expected one shape [1, V] in every method, "
                               f"found {sorted(logits)}")
        self.vocab_size = next(iter(logits))[1]
        self.max_tokens = sizes(prefill, "in", 0)[-1]            # tokens [1, T]: T's upper bound
        self.ple_rows_shape = sizes(prefill, "in", 2)[2:]        # ple_rows [1, T, L, P]: [L, P]
        self.max_context = sizes(prefill, "in", 3)[0] if self._attend_len else None
        self.soft_width = sizes(prefill, "in", 4)[-1] if self.arity >= 5 else 0  # soft_embeds [1, T, H]: H

    def _run(self, method, tokens: np.ndarray, pos: np.ndarray, rows: np.ndarray,
             soft: np.ndarray | None = None) -> np.ndarray:
        out = executorch_call(f"{self.path}: method {self._names[id(method)]} failed at positions "
                              f"{int(pos[0])}..{int(pos[-1])}", method.execute,
                              pte_step_inputs(tokens, pos, rows, self.arity, self.soft_width, soft))
        return out[0].numpy().reshape(-1)

    def prefill(self, tokens: np.ndarray, start: int, rows: np.ndarray, soft: np.ndarray | None = None) -> np.ndarray:
        """`soft` [T, H]: soft tokens at image placeholders (a revision >= 6 program only)."""
        if soft is not None and self.arity < 5:
            raise ProgramError(f"{self.path}: this program takes no soft tokens (program revision < 6: export the "
                               "bundle again to run images)")
        pos = np.arange(start, start + len(tokens), dtype=np.int64)
        return self._run(self._prefill, tokens.astype(np.int64), pos, rows, soft)

    def decode(self, token: int, pos: int, row: np.ndarray) -> np.ndarray:
        return self._run(self._decode, np.array([token], np.int64), np.array([pos], np.int64), row[None])

    def all_logits(self, tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """[T, V] by running the decode role token by token (the program returns only the last position)."""
        return np.stack([self.decode(int(t), i, rows[i]) for i, t in enumerate(tokens)])


# ---------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------

def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (InvalidProtobuf, Fail, ...: they derive from Exception only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


class OnnxBackend:
    """model.onnx: one step graph with the KV caches as explicit `cache_in_*` inputs / `cache_out_*` outputs."""

    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = path
        self._errors = _onnxruntime_errors()
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except self._errors as e:
            raise ProgramError(f"{path}: ONNX Runtime cannot load this model ({type(e).__name__}: {e})") from e
        inputs = {i.name: i for i in self.sess.get_inputs()}
        outputs = [o.name for o in self.sess.get_outputs()]
        for need in ("tokens", "input_pos", "ple_rows"):
            if need not in inputs:
                raise ValueError(f"{path}: graph input {need!r} missing; inputs are {sorted(inputs)}")
        self.cache_names = sorted(n for n in inputs if n.startswith("cache_in_"))
        for n in self.cache_names:
            if "cache_out_" + n[len("cache_in_"):] not in outputs:
                raise ValueError(f"{path}: input {n} has no matching output cache_out_{n[len('cache_in_'):]}")
        self.logits_name = "logits" if "logits" in outputs else outputs[0]
        self.cache_meta = {n: inputs[n] for n in self.cache_names}
        self.caches: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
        for n, meta in self.cache_meta.items():
            if any(not isinstance(d, int) for d in meta.shape):
                raise ValueError(f"{self.path}: cache input {n} has a symbolic shape {meta.shape}; "
                                 "expected a fixed-size cache")
            self.caches[n] = np.zeros(meta.shape, types.get(meta.type, np.float32))

    def _run(self, tokens: np.ndarray, start: int, rows: np.ndarray) -> np.ndarray:
        if start == 0:
            self.reset()
        feed = {"tokens": tokens.reshape(1, -1).astype(np.int64),
                "input_pos": np.arange(start, start + len(tokens), dtype=np.int64),
                "ple_rows": np.ascontiguousarray(rows, np.float32)[None], **self.caches}
        names = [self.logits_name] + ["cache_out_" + n[len("cache_in_"):] for n in self.cache_names]
        try:
            out = self.sess.run(names, feed)
        except self._errors as e:
            raise ProgramError(f"{self.path}: ONNX Runtime failed at positions {start}..{start + len(tokens) - 1} "
                               f"({type(e).__name__}: {e})") from e
        for n, value in zip(self.cache_names, out[1:]):
            self.caches[n] = value
        return out[0].reshape(-1, out[0].shape[-1])[-1]

    def prefill(self, tokens: np.ndarray, start: int, rows: np.ndarray) -> np.ndarray:
        return self._run(tokens, start, rows)

    def decode(self, token: int, pos: int, row: np.ndarray) -> np.ndarray:
        return self._run(np.array([token]), pos, row[None])

    def all_logits(self, tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.decode(int(t), i, rows[i]) for i, t in enumerate(tokens)])


# ---------------------------------------------------------------------------------------------------
# Eager
# ---------------------------------------------------------------------------------------------------

class EagerBackend:
    """Our Gemma4CausalLM (PLE table dropped: rows come in like the program's) over setup_cache caches."""

    name = "eager"

    def __init__(self, model, max_context: int):
        self.model = model
        model.setup_cache(max_context)

    @torch.no_grad()
    def prefill(self, tokens: np.ndarray, start: int, rows: np.ndarray, soft: np.ndarray | None = None) -> np.ndarray:
        pos = torch.arange(start, start + len(tokens))
        out = self.model.forward_cached(torch.from_numpy(tokens.astype(np.int64))[None], pos,
                                        torch.from_numpy(np.ascontiguousarray(rows))[None],
                                        soft_embeds=None if soft is None else torch.from_numpy(soft)[None])
        return out[0].float().numpy()

    def decode(self, token: int, pos: int, row: np.ndarray) -> np.ndarray:
        return self.prefill(np.array([token]), pos, row[None])

    @torch.no_grad()
    def all_logits(self, tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = self.model.forward_cached(torch.from_numpy(tokens.astype(np.int64))[None], torch.arange(len(tokens)),
                                        torch.from_numpy(np.ascontiguousarray(rows))[None], all_logits=True)
        return out[0].float().numpy()

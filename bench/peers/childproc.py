"""The parent side every peer shares: start a child (often in another venv) with a clean environment,
watch its process tree's RSS (kill it past a limit rather than take the machine down), optionally with an
Android app's limits, and collect the one JSON result line it prints."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path


def _load_procfs():
    """The project's /proc tools (gemma_edge/procfs.py, standard library only), loaded by path: a child runs
    in the peer's venv, where gemma_edge is not installed, and must not put the repo's folders on sys.path."""
    path = Path(__file__).resolve().parents[2] / "gemma_edge" / "procfs.py"
    spec = importlib.util.spec_from_file_location("gemma_edge_procfs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


procfs = _load_procfs()


def clean_env(**extra: str) -> dict:
    """This process's environment without another venv's Python settings leaking into the child."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tree_rss(pid: int) -> int:
    """VmRSS of `pid` and all its descendants, in bytes (0 once it is gone)."""  # threads too: not procfs's job
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def as_android_app() -> None:
    """preexec_fn: no CAP_IPC_LOCK (dropped from the bounding set, so the exec'd child lacks it even as
    root) and RLIMIT_MEMLOCK of 64 KiB, as an Android app has: ExecuTorch's mlock of the program's
    constants then fails, which its loader ignores, leaving plain mmap with pages faulted in on use."""
    import ctypes
    import resource

    pr_capbset_drop, cap_ipc_lock = 24, 14
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_capbset_drop, cap_ipc_lock, 0, 0, 0) != 0 and os.geteuid() == 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK) failed")
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 << 10, 64 << 10))


def last_line(log: Path, prefix: str = "") -> str:
    """The last line of a log's final MiB starting with `prefix` (else its last line): a child's stage."""
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 20)))
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    marked = [ln for ln in lines if prefix and ln.startswith(prefix)]
    return (marked or lines or [""])[-1]


def run(cmd: list[str], log: Path, result_mark: str, *, env: dict | None = None, preexec_fn=None,
        rss_limit_bytes: int | None = None, stage_prefix: str = "", mark_in_json: bool = False) -> dict:
    """Run `cmd`, stdout+stderr to `log`. Polls every 0.1 s; SIGKILLs the child once its tree's RSS passes
    `rss_limit_bytes`. Returns rc, elapsed_s, peak_rss_bytes (ru_maxrss from wait4: Linux keeps it across execve, so
    it includes this process's own resident set at the fork — call this from a small process), killed_at_rss_bytes,
    stage (`last_line(log, stage_prefix)`) and result (the JSON after `result_mark`, else None; with
    mark_in_json the mark is the JSON's own beginning, as a native child prints it)."""
    t0, killed_at = time.perf_counter(), None
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or clean_env(),
                                preexec_fn=preexec_fn)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if rss_limit_bytes and killed_at is None:
                rss = tree_rss(proc.pid)
                if rss > rss_limit_bytes:
                    killed_at = rss
                    os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here; keep Popen from waiting again
    result = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(result_mark):
            result = json.loads(line if mark_in_json else line[len(result_mark):])
    return {"rc": proc.returncode, "elapsed_s": time.perf_counter() - t0, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "killed_at_rss_bytes": killed_at, "stage": last_line(log, stage_prefix), "result": result}


# ---- what the benchmarks' parents share -------------------------------------------------------------------

def log(msg: str) -> None:
    """A benchmark's progress line, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_child(script: Path, mode: str, spec: dict, log_path: Path, result_mark: str, rss_limit_bytes: int) -> dict:
    """`python script mode SPEC_JSON` in a clean environment of spec's thread count (2 by default), with an
    Android app's limits and the RSS watchdog; `run`'s result plus the log's path."""
    import sys

    cmd = [sys.executable, str(script), mode, json.dumps(spec)]
    env = clean_env(OMP_NUM_THREADS=str(spec.get("threads", 2)))
    res = run(cmd, log_path, result_mark, env=env, preexec_fn=as_android_app, rss_limit_bytes=rss_limit_bytes)
    res["log"] = str(log_path)
    return res


def output_errors(out: Path, ref: Path) -> dict | None:
    """How far the array saved at `out` is from the reference saved at `ref` (.npy files): max |Δ|, that over the
    reference's max |value|, and the relative Frobenius error; None when either is missing."""
    import numpy as np

    if not (out.exists() and ref.exists()):
        return None
    g, r = np.load(out).astype(np.float64), np.load(ref).astype(np.float64)
    if g.shape != r.shape:
        return {"shape": list(g.shape), "reference_shape": list(r.shape)}
    d = np.abs(g - r)
    return {"max_abs": float(d.max()), "max_abs_rel": float(d.max() / np.abs(r).max()),
            "rel_fro": float(np.linalg.norm(g - r) / np.linalg.norm(r))}

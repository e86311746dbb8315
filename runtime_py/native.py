"""The native host: `gemma-edge-run` (C++, runtime_py/native/) runs a bundle with no Python and no libtorch.

    exe = build()                                        # cmake against the ExecuTorch wheel's runtime libraries
    res = run(bundle, ids=[2, 818, ...], new_tokens=64)  # one child process; its JSON (runs, memory)
    res = run(bundle, ids, 64, images=["cat.png"], image_budget=280)  # a bundle with a vision program

The C++ side is a runner library an app embeds (manifest reader, program load + verify + step, the
generation loop against an abstract step, the sampler of sampling.py, the bundle's tokenizer through the HF
tokenizer of pytorch/tokenizers) and a thin CLI over it; `tool(name)` is one of the test executables built
beside it (gemma-edge-loop-golden, gemma-edge-tokenize).

Why it exists: a phone app runs the program through ExecuTorch's C++ runtime, not through Python. The
Python host that `Session` needs (torch and ExecuTorch's bindings imported) holds hundreds of MB of
resident memory before any model is loaded; this one a few MB (the README's table has the figures). Same
program, same kernels (the wheel's libexecutorch, XNNPACK and kernel libraries, which the Python bindings load
too), same PLE file: the logits are bit-identical to `PteBackend`'s at the same thread count
(tests/test_native.py).

The host reads the bundle's manifest itself: the program file with its size and SHA-256 (it refuses a
program that is not the manifest's before ExecuTorch parses it), the PLE file and its identity, the method
per role, prefill_chunk, max_context, the vocabulary, bos and eos. The prompt goes in as text through a file
or stdin (`--prompt-file`, tokenized by the host) or as ids (`--ids-file`), never on argv, whose length the
kernel limits; `run` passes ids, so that both hosts run the very ids Python tokenized. Images go as files
(`--image`, PNG or JPEG, in prompt order, at `--image-budget` soft tokens): the host decodes and preprocesses
them itself (image.cpp, bit-identical to runtime_py/image.py) and encodes them with the bundle's vision program,
which it loads for that and releases after; the prompt holds one image placeholder per image, or none. Audio
goes as WAV files (`--audio`): the host reads them with libsndfile, downmixes, resamples with its port of scipy's
resample_poly (audio.cpp: the Python host's samples within one float32 ulp, tests/golden/audio_preprocess.json),
cuts them into 30 s clips and encodes them with the bundle's audio program, loaded for that and released after.

XNNPACK's packed weights go to a cache file beside the program (`weight_cache_path`), as LiteRT-LM keeps
its `.xnnpack_cache`: the first load packs into it, every later load maps it, and no source weights are
held beside packed ones (bench/RESULTS.md has the figures). The host names it after the program's SHA-256,
so a re-exported program never maps another program's cache, and maps it only when the SHA-256 in its
sidecar (`<cache>.sha256`, written after packing) matches; otherwise it discards it and packs again.

A run that fails raises ValueError for bad input (the host's status 2) and NativeRunError otherwise — with
the host's own one-line message, or the signal that killed it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SOURCE_DIR = Path(__file__).resolve().parent / "native"
EXE_NAME = "gemma-edge-run"
TOOLS = ("gemma-edge-loop-golden", "gemma-edge-tokenize", "gemma-edge-image-golden", "gemma-edge-audio-golden")


def sources() -> list[Path]:
    """Every file the build reads (the vendored tokenizer included), in a stable order."""
    return sorted(p for p in SOURCE_DIR.rglob("*") if p.is_file() and "build" not in p.relative_to(SOURCE_DIR).parts
                  and (p.suffix in (".cpp", ".h") or p.name == "CMakeLists.txt"))


class NativeBuildError(RuntimeError):
    """The native host could not be configured or compiled (the message carries the tool's last lines)."""


class NativeRunError(RuntimeError):
    """gemma-edge-run failed for a reason other than bad input: its own one-line message, or the signal that
    killed it. `returncode` is the child's (negative: killed by that signal)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def executorch_cmake_dir() -> Path:
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise NativeBuildError("executorch: not installed in this environment (pip install executorch==1.5.1)")
    d = Path(spec.submodule_search_locations[0]) / "share" / "cmake"
    if not (d / "executorch-config.cmake").exists():
        raise NativeBuildError(f"{d}: executorch-config.cmake missing; this executorch wheel ships no C++ runtime")
    return d


def default_build_dir() -> Path:
    """One build per set of sources and ExecuTorch install (a changed wheel gets a fresh configure)."""
    h = hashlib.sha256(str(executorch_cmake_dir()).encode())
    for path in sources():
        h.update(str(path.relative_to(SOURCE_DIR)).encode() + b"\0" + path.read_bytes())
    return SOURCE_DIR / "build" / h.hexdigest()[:12]


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def build(build_dir: Path | None = None) -> Path:
    """Configure (once) and build `gemma-edge-run`; returns the executable. A no-op when up to date."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise NativeBuildError(f"{tool}: not found on PATH; the native host needs CMake ≥ 3.19 and a C++17 "
                                   "compiler (Debian: apt-get install cmake g++ zlib1g-dev libssl-dev "
                                   "nlohmann-json3-dev libre2-dev libsndfile1-dev pkg-config)")
    build_dir = Path(build_dir) if build_dir else default_build_dir()
    exe = build_dir / EXE_NAME
    if not (build_dir / "CMakeCache.txt").exists():
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        cfg = subprocess.run(["cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir), *gen, "-DCMAKE_BUILD_TYPE=Release",
                              f"-DCMAKE_PREFIX_PATH={executorch_cmake_dir()}"], capture_output=True, text=True)
        if cfg.returncode:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise NativeBuildError(f"cmake configure of {SOURCE_DIR} failed:\n{_tail(cfg.stdout + cfg.stderr)}")
    out = subprocess.run(["cmake", "--build", str(build_dir)], capture_output=True, text=True)
    if out.returncode or not exe.exists():
        raise NativeBuildError(f"cmake --build {build_dir} failed:\n{_tail(out.stdout + out.stderr)}")
    return exe


def tool(name: str, build_dir: Path | None = None) -> Path:
    """A test executable built beside gemma-edge-run (one of TOOLS), built first when needed."""
    if name not in TOOLS:
        raise ValueError(f"tool: expected one of {TOOLS}, found {name!r}")
    return build(build_dir).parent / name


def weight_cache_path(bundle: Path, manifest: dict | None = None) -> Path:
    """Where the native host keeps XNNPACK's packed weights for `bundle`'s program (created on first load);
    `manifest`: the bundle's, when the caller has read it already. The host names the file itself, from the
    digest it checks the program against: it runs no program whose SHA-256 is not the manifest's, so this
    name (from the manifest) is the one it uses. Its checksum sits beside it, in `<name>.sha256`."""
    from gemma_edge.contract import bundle_format as bf

    program = (manifest or bf.read_manifest(bundle))["files"]["program"]
    return Path(bundle) / f"{Path(program['path']).name}.{program['sha256'][:16]}.xnnpack_cache"


def write_ids(path: Path, ids) -> Path:
    """The prompt's ids as the host's --ids-file reads them: decimal, comma-separated."""
    Path(path).write_text(",".join(str(int(i)) for i in ids) + "\n")
    return Path(path)


def command(exe: Path, bundle: Path, ids, new_tokens: int, *, ids_file: Path, threads: int = 0, repeats: int = 1,
            warmup: int = 0, stop_on_eos: bool = False, logits_out: Path | None = None,
            weight_cache: bool = True, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
            seed: int = 0, images=(), image_budget: int | None = None, audio=()) -> list[str]:
    """The argv that runs `bundle` on prompt `ids`, which are written to `ids_file` (the caller's to remove);
    weight_cache: pack into / map from `weight_cache_path(bundle)`; `images`: image files (PNG or JPEG) in
    prompt order, at `image_budget` soft tokens each (None: the host's default, 280); `audio`: WAV files in prompt
    order (the host cuts each into 30 s clips). The host reads the
    manifest itself; it is read here too, so that a bundle that is not one fails with Python's BundleError
    before a child starts."""
    from gemma_edge.contract import bundle_format as bf

    bundle = Path(bundle)
    manifest = bf.read_manifest(bundle)
    cmd = [str(exe), str(bundle), "--ids-file", str(write_ids(ids_file, ids)), "--new-tokens", str(new_tokens),
           "--repeats", str(repeats), "--warmup", str(warmup), "--threads", str(threads), "--json"]
    if (temperature, top_k, top_p) != (0.0, 0, 1.0):
        cmd += ["--temperature", repr(float(temperature)), "--top-k", str(top_k), "--top-p", repr(float(top_p)),
                "--seed", str(seed)]
    if not stop_on_eos:
        cmd += ["--ignore-eos"]
    if logits_out is not None:
        cmd += ["--logits-out", str(logits_out)]
    if weight_cache:
        cmd += ["--weight-cache-dir", str(weight_cache_path(bundle, manifest).parent)]
    for image in images:
        if not isinstance(image, (str, Path)):  # the host reads files; an array has no path to give it
            raise ValueError(f"images: expected image file paths for the native host, found {type(image).__name__}")
        cmd += ["--image", str(image)]
    if image_budget is not None:
        if not images:
            raise ValueError("image_budget: needs images (a budget is per image)")
        cmd += ["--image-budget", str(int(image_budget))]
    if isinstance(audio, (str, Path)):   # one file, not a list of them
        audio = [audio]
    for clip in audio:
        if not isinstance(clip, (str, Path)):
            raise ValueError(f"audio: expected WAV file paths for the native host, found {type(clip).__name__}")
        cmd += ["--audio", str(clip)]
    return cmd


def parse_result(stdout: str, stderr: str, rc: int, cmd: list[str]) -> dict:
    """The child's one JSON line; a failed run raises with the line the runner printed (ValueError for its
    status 2, bad input), or NativeRunError naming the signal that killed it."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        raise NativeRunError(f"gemma-edge-run killed by signal {name} ({signal.strsignal(-rc) or 'unknown'})", rc)
    if rc != 0:
        lines = [ln for ln in stderr.splitlines() if ln.startswith("gemma-edge-run:")
                 and not ln.startswith("gemma-edge-run: warning:")]
        msg = lines[-1] if lines else f"gemma-edge-run exited with status {rc}: " + " | ".join(
            _tail(stderr, 3).splitlines())
        if rc == 2:
            raise ValueError(msg)
        raise NativeRunError(msg, rc)
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise NativeRunError(f"gemma-edge-run exited with status 0 but printed no result: {stdout[-200:]!r}", rc)


def run(bundle: Path, ids, new_tokens: int, *, threads: int = 0, repeats: int = 1, warmup: int = 0,
        stop_on_eos: bool = False, with_logits: bool = False, exe: Path | None = None,
        weight_cache: bool = True, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
        seed: int = 0, images=(), image_budget: int | None = None, audio=()) -> dict:
    """Run `gemma-edge-run` once on `bundle` and return its JSON; with_logits adds "logits" [steps, V]
    (the first timed run's, every step). Greedy unless temperature > 0 (sampling.Sampler's algorithm).
    `images`: files in prompt order, encoded at `image_budget` by the bundle's vision program; `audio`: WAV files,
    encoded by its audio program (`command`)."""
    exe = exe or build()
    with tempfile.TemporaryDirectory() as tmp:
        logits_path = Path(tmp) / "logits.bin" if with_logits else None
        cmd = command(exe, bundle, ids, new_tokens, ids_file=Path(tmp) / "ids.txt", threads=threads,
                      repeats=repeats, warmup=warmup, stop_on_eos=stop_on_eos, logits_out=logits_path,
                      weight_cache=weight_cache, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                      images=images, image_budget=image_budget, audio=audio)
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        res = parse_result(p.stdout, p.stderr, p.returncode, cmd)
        # what the host decided on its own, such as discarding a weight cache that failed its checksum
        res["warnings"] = [ln for ln in p.stderr.splitlines() if ln.startswith("gemma-edge-run: warning:")]
        if logits_path is not None:
            steps = len(res["runs"][0]["tokens"])
            res["logits"] = np.fromfile(logits_path, np.float32).reshape(steps, -1)
    return res

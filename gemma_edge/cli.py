"""The `gemma-edge` command line: one entry point; each package registers its own subcommands."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import warnings

# Packages that contribute subcommands through a `cli.register(subparsers)` function.
_COMMAND_MODULES = ("gemma_edge.export.cli", "gemma_edge.runtime.cli")


# Errors whose message is the whole story (bad input or a refusing environment, not a bug): printed on one
# line, no traceback. Every input error of the packages (CheckpointError, ConfigError, PleFormatError,
# BundleError, TokenizerError, ProgramError) is a ValueError; OSError covers permissions, a full disk and
# missing files (its message names the path). NativeBuildError: the native host's toolchain is missing or
# its compile failed (the message says which). Anything else is a bug and keeps its traceback;
# GEMMA_EDGE_DEBUG=1 shows the traceback of these too.
from gemma_edge.runtime.native import NativeBuildError  # noqa: E402

USER_ERRORS = (ValueError, OSError, NativeBuildError)
DEBUG_ENV = "GEMMA_EDGE_DEBUG"


# ---------------------------------------------------------------------------------------------------
# Third-party noise: each filter names one known message of one library, about that library's own setup
# ---------------------------------------------------------------------------------------------------

class _MessageFilter(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


# logger -> the message dropped from it
_LOG_FILTERS = {
    # torchao loads every `_C*.so` it ships; its CUDA kernels (cutlass, mxfp8) cannot load on a CPU-only
    # torch, which it reports at each import although the CPU paths we use need none of them.
    "torchao": r"^Failed to load \S*torchao/_C\w*\.\S*\.so: ",
    # torchao registers an Enum with torch's pytree; torch 2.13 warns that this is no longer needed.
    "torch.utils._pytree": r"is an Enum subclass and is now natively supported by torch\.compile",
}
# Lines written to stderr by C++ code that ExecuTorch's bindings redirect through Python's sys.stderr:
# XNNPACK's cpuinfo probe of ARM-only sysfs files at every method load (ExecuTorch's cpuinfo_utils.cpp).
_STDERR_LINES = re.compile(r"^\[cpuinfo_utils\.cpp:\d+\] ")
# Python warnings: (category, module regex, start of the message), each one library's notice about its own
# or torch's API, raised while it runs our export or loads our program.
_WARNINGS = (
    (FutureWarning, r"executorch\.extension\.llm\.custom_ops\.", r"_check_is_size will be removed"),
    (FutureWarning, r"copyreg$", r"`isinstance\(treespec, LeafSpec\)` is deprecated"),   # torch's pytree, via deepcopy
    (Warning, r"executorch\.extension\.pybindings\.portable_lib$", r"This API is experimental"),
    # The program's KV caches are mutated buffers by design; every step at position 0 overwrites them.
    (UserWarning, r"executorch\.exir\.emit\._emitter$", r"Mutation on a buffer in the model is detected"),
)


class _FilteredStream:
    """sys.stderr without the lines `pattern` matches (whole lines; partial writes are joined first)."""

    def __init__(self, stream, pattern: re.Pattern):
        self._stream, self._pattern, self._pending = stream, pattern, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        kept = [line + "\n" for line in lines if not self._pattern.match(line)]
        if kept:
            self._stream.write("".join(kept))
        return len(text)

    def flush(self) -> None:
        if self._pending and not self._pattern.match(self._pending):
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_third_party():
    """Drop the known third-party messages above for the duration of a command; everything else passes."""
    filters = [(logging.getLogger(name), _MessageFilter(p)) for name, p in _LOG_FILTERS.items()]
    for logger, f in filters:
        logger.addFilter(f)
    stderr = sys.stderr
    sys.stderr = _FilteredStream(stderr, _STDERR_LINES)
    try:
        with warnings.catch_warnings():
            for category, module, message in _WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
            yield
    finally:
        sys.stderr.flush()
        sys.stderr = stderr
        for logger, f in filters:
            logger.removeFilter(f)


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma-edge", description=__doc__.split(":")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def error_line(e: BaseException) -> str:
    """One line for an expected error: an OSError as `path: reason`, any other as its message (a message of
    several lines joined with "; " — except a failed native build's, whose tool output is the point)."""
    if isinstance(e, OSError) and e.strerror:
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return f"{where}: {e.strerror}" if where else e.strerror
    text = str(e) or type(e).__name__
    if isinstance(e, NativeBuildError):
        return text
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_third_party():
            return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"gemma-edge {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gemma-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

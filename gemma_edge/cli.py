"""The `gemma-edge` command line: one entry point; each package registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import sys

# Packages that contribute subcommands through a `cli.register(subparsers)` function.
_COMMAND_MODULES = ("gemma_edge.export.cli", "gemma_edge.runtime.cli")


# Errors whose message is the whole story (bad input, not a bug): printed on one line, no traceback.
# Every input error of the packages (CheckpointError, ConfigError, PleFormatError, BundleError) is a ValueError.
# NativeBuildError: the native host's toolchain is missing or its compile failed (the message says which).
from gemma_edge.runtime.native import NativeBuildError  # noqa: E402

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NativeBuildError)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        print(f"gemma-edge {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

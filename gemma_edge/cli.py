"""The `gemma-edge` command line."""
import sys


def main(argv=None) -> int:
    print("gemma-edge: under construction", file=sys.stderr)
    return 1

"""`graddoctor` command line: a thin layer over the Python API, one module per command."""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import GradDoctorError

# Each module defines `register(subparsers)`, which adds its parser with set_defaults(run=fn).
COMMANDS = ("train", "demo", "check", "run", "runs", "export", "report", "treat", "theory", "lab", "sweep")


class _Parser(argparse.ArgumentParser):
    """argparse with examples kept verbatim in --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    p = _Parser(prog="graddoctor",
                description="Find, explain and fix vanishing and exploding gradients in PyTorch models.",
                epilog="example:\n  graddoctor demo\n  graddoctor train --depth 20 --activation sigmoid")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn library errors into one line and exit code 2."""
    p = parser()
    args = p.parse_args(argv)
    if not getattr(args, "run", None):
        p.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except GradDoctorError as exc:
        print(f"graddoctor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graddoctor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

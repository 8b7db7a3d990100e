"""The ``surefoot`` command: one argparse tree, one module per command group.

Each command module exposes ``register(subparsers)``; its handlers take the parsed arguments and
return an exit code. Exit codes: 0 ok, 1 the operation failed, 2 bad usage or bad input (one line
on stderr saying what to fix).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from surefoot import __version__

# Command groups, in the order `surefoot --help` lists them.
COMMAND_MODULES = [
    "surefoot._cmd_up",
    "surefoot._cmd_drill",
    "surefoot._cmd_serve",
    "surefoot._cmd_checkpoint",
    "surefoot._cmd_render",
    "surefoot._cmd_gateway",
    "surefoot._cmd_events",
    "surefoot._cmd_functions",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surefoot", description="Fault-tolerant, event-driven LLM inference on Knative."
    )
    parser.add_argument("--version", action="version", version=f"surefoot {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"surefoot: --log-level {args.log_level!r} is not a logging level", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"surefoot {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

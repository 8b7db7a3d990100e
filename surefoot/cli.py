"""The ``surefoot`` command: one argparse tree, one module per command group.

Each command module exposes ``register(subparsers)``; its handlers take the parsed arguments and
return an exit code. The command modules are where ``os.environ`` is read: they hand it to the
settings classes, which parse it with ``envreader``. Exit codes: 0 ok, 1 the operation failed,
2 bad usage or bad input, a bad ``SUREFOOT_*`` variable included (one line on stderr saying what
to fix). Output cut short by its reader (``surefoot status | head``) ends the command quietly,
with the status a shell gives a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from envreader import EnvError
from surefoot import __version__

# Command groups, in the order `surefoot --help` lists them.
COMMAND_MODULES = [
    "surefoot._cmd_up",
    "surefoot._cmd_breakers",
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
EXIT_PIPE = 128 + 13  # SIGPIPE, as `yes | head` leaves it


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
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then ours to handle
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE


def _main(argv: Sequence[str] | None) -> int:
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
    except EnvError as exc:  # a SUREFOOT_* variable that does not convert: bad input
        print(f"surefoot {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """The reader has gone: send what is still buffered nowhere, so the interpreter's last
    flush does not report the broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured): nothing is flushed at exit
        pass


if __name__ == "__main__":
    sys.exit(main())

"""The `tddfa` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to the function that runs it (returning the process exit status).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (subcommand module, imported lazily so `tddfa --help` stays fast)
SUBCOMMANDS = (
    "tddfa_tools.assets",
    "tddfa_tools.repository",
    "tddfa_tools.serve",
    "tddfa_clients.image",
    "tddfa_clients.video",
    "tddfa_clients.batch",
    "tddfa_clients.perf",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tddfa",
        description="3DDFA_V2 dense face reconstruction served by Triton: build the model "
        "repository, serve it, and send images and videos through it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not a missing subcommand
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

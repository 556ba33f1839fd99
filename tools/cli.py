"""The `tddfa` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to the function that runs it (returning the process exit status).

One error boundary (:func:`main`): an expected failure (bad input or output, missing
assets, server down or refusing, codec unavailable...) prints ONE line,
``tddfa: error: <problem and fix>`` (plus indented details where the error lists several
items), and exits 1; argparse refuses bad arguments with exit status 2; Ctrl-C, SIGTERM and
SIGHUP run the same cleanup and exit 128 + the signal (130, 143, 129; :mod:`tddfa_tools.signals`).
Anything else is a bug: one line saying so, exit 1. ``--debug`` prints the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys

from tddfa_tools.signals import exit_status, stop_like_ctrl_c

# (subcommand module, imported lazily so `tddfa --help` stays fast)
SUBCOMMANDS = (
    "tddfa_tools.assets.command",
    "tddfa_tools.build.command",
    "tddfa_tools.serve.command",
    "tddfa_tools.guard.command",
    "tddfa_clients.image",
    "tddfa_clients.video",
    "tddfa_clients.batch",
    "tddfa_clients.perf",
)

# Errors that are the user's or the environment's, not the program's: (module, class).
EXPECTED_ERRORS = (
    ("tddfa_clients.triton_client", "ClientError"),
    ("tddfa_clients.image", "ImageError"),
    ("tddfa_clients.video_io", "VideoError"),
    ("tddfa_clients.perf", "PerfError"),
    ("tddfa_tools.serve.embedded", "TritonServerError"),
    ("tddfa_tools.assets.table", "AssetError"),
)
LOG = logging.getLogger("tddfa")
# Libraries whose INFO lines say nothing a user can act on (PyOpenGL: "No OpenGL_accelerate
# module loaded"); shown with -v.
QUIET_LIBRARIES = ("OpenGL",)


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the Python traceback of an error (implies --verbose)",
    )


def version() -> str:
    try:
        return importlib.metadata.version("tddfa-triton")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tddfa",
        description="3DDFA_V2 dense face reconstruction served by Triton: build the model "
        "repository, serve it, and send images and videos through it.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {version()} (Triton client {importlib.metadata.version('tritonclient')})",
    )
    _add_common(parser, False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not a missing subcommand
                raise
            continue
        module.register(subparsers)
    for subparser in subparsers.choices.values():  # also after the subcommand: tddfa video -v
        _add_common(subparser, argparse.SUPPRESS)
    return parser


def expected_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes :func:`main` reports as one line (OSError and ValueError
    included: missing files, permissions, refused values), importing only loaded modules."""
    types: list[type[BaseException]] = [OSError, ValueError]
    for module_name, class_name in EXPECTED_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None:
            types.append(getattr(module, class_name))
    return tuple(types)


def error_line(exc: BaseException) -> str:
    """``exc`` as the boundary prints it: its message, continuation lines indented."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    if not text:
        text = type(exc).__name__
    first, *rest = text.splitlines()
    return "\n".join([first, *(f"    {line.strip()}" for line in rest if line.strip())])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    verbose = args.verbose or args.debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        with stop_like_ctrl_c():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM, SIGHUP: cleanup has run
        return exit_status(interrupt)
    except Exception as exc:  # the one error boundary: a line, not a stack
        if args.debug:
            raise
        if isinstance(exc, expected_error_types()):
            sys.stderr.write(f"tddfa: error: {error_line(exc)}\n")
        else:
            sys.stderr.write(
                f"tddfa: internal error: {type(exc).__name__}: {error_line(exc)} (a bug: rerun "
                "with --debug for the traceback and report it)\n"
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""``tddfa guard``: the checking proxy's command line."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from tddfa_tools.guard.proxy import Guard
from tddfa_tools.guard.rules import Limits
from tddfa_tools.signals import SIGNALS as STOP_SIGNALS

LOG = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from tddfa_tools.arguments import port, positive_float, positive_int

    parser = subparsers.add_parser(
        "guard",
        help="a checking proxy in front of tritonserver, for ports exposed to a network",
        description="Forward HTTP and gRPC inference to a tritonserver on this host after "
        "checking every request (declared shapes, sizes, value ranges; admin and "
        "shared-memory endpoints refused). Run `tddfa serve` on 127.0.0.1 and this on the "
        "public address. See docs/security.md.",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default %(default)s)")
    parser.add_argument("--http-port", type=port, default=9000, metavar="N", help="default 9000")
    parser.add_argument("--grpc-port", type=port, default=9001, metavar="N", help="default 9001")
    parser.add_argument(
        "--upstream-http", default="127.0.0.1:8000", metavar="HOST:PORT", help="%(default)s"
    )
    parser.add_argument(
        "--upstream-grpc", default="127.0.0.1:8001", metavar="HOST:PORT", help="%(default)s"
    )
    parser.add_argument(
        "--max-body-mb", type=positive_int, default=64, metavar="MB", help="default 64"
    )
    parser.add_argument(
        "--max-image",
        default="4096x4096",
        metavar="HxW",
        help="largest RGB frame a request may declare (default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=600.0, metavar="S", help="default 600"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        height, width = (int(v) for v in args.max_image.lower().split("x"))
    except ValueError:
        raise ValueError(f"--max-image must look like 4096x4096, got {args.max_image!r}") from None
    limits = Limits(max_body_bytes=args.max_body_mb << 20, max_tensor_bytes=height * width * 3)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        LOG.info("%s received: stopping the guard", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    guard = Guard(
        args.host,
        args.http_port,
        args.grpc_port,
        args.upstream_http,
        args.upstream_grpc,
        limits,
        args.timeout,
    )
    try:
        guard.start()
        LOG.info("Ctrl-C stops the guard")
        stop.wait()
    finally:
        guard.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

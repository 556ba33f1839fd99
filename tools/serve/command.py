"""``tddfa serve``: tritonserver on a model repository, supervised.

The server (:class:`tddfa_tools.serve.server.TritonServer`) binds 127.0.0.1 unless ``--host`` says
otherwise, loads every model at start (explicit model control) and closes Triton's admin
APIs to requests without its admin token; the supervisor
(:class:`tddfa_tools.serve.supervisor.Supervisor`) reloads a model whose Python stub died or hung
and restarts a crashed server. Ctrl-C, SIGTERM and SIGHUP stop everything cleanly, exit status 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from tddfa_tools.locations import default_repository
from tddfa_tools.serve.allocator import ALLOCATORS
from tddfa_tools.serve.cuda_mps import (
    cuda_memory_pool_args,
    cuda_visible_devices,
    visible_gpu_count,
)
from tddfa_tools.serve.embedded import TritonServerError
from tddfa_tools.serve.server import (
    DEFAULT_PORTS,
    SUPERVISOR_PORT,
    TritonServer,
)
from tddfa_tools.signals import SIGNALS as STOP_SIGNALS

LOGGER = logging.getLogger(__name__)


# -- CLI ---------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    from tddfa_tools.arguments import non_negative_float, non_negative_int, port, positive_float

    parser = subparsers.add_parser(
        "serve",
        help="run tritonserver on a model repository, supervised (self-healing)",
        description="Start tritonserver (the embedded one of the nvidia-pytriton wheel, or "
        "--tritonserver) with the model repository, wait until it is ready and supervise it: "
        "a model whose Python stub dies or hangs is reloaded, a crashed server restarted; "
        "readiness is false meanwhile and the events are counted on the supervisor's "
        "/metrics. Stops cleanly on Ctrl-C, SIGTERM or SIGHUP (exit 0). Port 0 picks a free port.",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=default_repository(),
        help="model repository folder (default: %(default)s, where `tddfa build` writes)",
    )
    for name, number in DEFAULT_PORTS.items():
        parser.add_argument(
            f"--{name}-port", type=port, default=number, metavar="N", help=f"default {number}"
        )
    parser.add_argument(
        "--supervisor-port",
        type=port,
        default=SUPERVISOR_PORT,
        metavar="N",
        help=f"the supervisor's /metrics and /health (default {SUPERVISOR_PORT})",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes the "
        "server: put a proxy in front, see docs/security.md)",
    )
    parser.add_argument(
        "--log-verbose", type=non_negative_int, default=0, metavar="N", help="Triton log verbosity"
    )
    parser.add_argument(
        "--startup-timeout",
        type=positive_float,
        default=300.0,
        metavar="S",
        help="seconds to wait for readiness",
    )
    parser.add_argument(
        "--canary-interval",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="seconds between canary frames through the ensemble (finds hung steps; 0: off)",
    )
    parser.add_argument(
        "--no-supervise",
        dest="supervise",
        action="store_false",
        help="run tritonserver without the supervisor (nothing is reloaded or restarted)",
    )
    parser.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        metavar="BINARY",
        help="run this tritonserver with its own backends instead of the wheel's (the NGC "
        "container: /opt/tritonserver/bin/tritonserver)",
    )
    parser.add_argument(
        "--cuda-memory-pool-mb",
        type=non_negative_int,
        default=None,
        metavar="MB",
        help="Triton's CUDA memory pool per GPU (default: Triton's 64 MB); GPU builds pass "
        "device tensors between steps through it: give it about 40 MB per frame in flight",
    )
    parser.add_argument(
        "tritonserver_args",
        nargs="*",
        metavar="-- FLAG",
        help="more tritonserver flags, after --, passed as given",
    )
    parser.add_argument(
        "--cuda-mps",
        action="store_true",
        help="run the GPU model instances under a private CUDA MPS daemon (no GPU "
        "time-slicing between the instances' processes; ~4x the frames/s of a GPU build); "
        "one daemon serves every GPU this server uses",
    )
    parser.add_argument(
        "--gpus",
        type=_gpu_list,
        default=None,
        metavar="LIST",
        help="GPUs this server may use, e.g. 0 or 0,1 (its CUDA_VISIBLE_DEVICES; default: "
        "all). One server per GPU (--gpus 0 and --gpus 1 on other ports) keeps every "
        "request on one GPU",
    )
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="malloc of tritonserver and its stubs: jemalloc (returns freed memory, so RSS "
        "stays flat over days), the system's glibc malloc, or auto: jemalloc when installed",
    )
    parser.set_defaults(func=run)


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(",") if part.strip())
        cuda_visible_devices(gpus)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--gpus takes distinct GPU indices separated by commas, e.g. 0,1 ({exc})"
        ) from None
    return gpus


def spanning_gpus_warning(repository: Path, gpus: tuple[int, ...] | None) -> str | None:
    """Why one server over several GPUs is a bad layout, when this one would be: a GPU
    build and more than one GPU for it (``--gpus``, else every GPU it sees); else None."""
    configs = Path(repository).glob("*/config.pbtxt")
    if not any("KIND_GPU" in config.read_text() for config in configs):
        return None
    count = len(gpus) if gpus else visible_gpu_count()
    if count < 2:
        return None
    return (
        f"one server over {count} GPUs: Triton 2.51 sends each step of a frame to any free "
        "instance, so frames cross GPUs at every step, and such requests can stay in the "
        "server (1 of 960 never came back on two H200s, docs/multi_gpu.md). Run one server "
        "per GPU: tddfa serve --gpus 0 ..., tddfa serve --gpus 1 --grpc-port ... (other ports)"
    )


def run(args: argparse.Namespace) -> int:
    """``tddfa serve``: serve until Ctrl-C, SIGTERM or SIGHUP (exit 0), or exit 1 when the server cannot
    be started or keeps crashing (the supervisor restarts it otherwise)."""
    from tddfa_tools.serve.supervisor import Supervisor, SupervisorSettings

    stop = threading.Event()
    starting = threading.Event()
    starting.set()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            LOGGER.info("%s received: already shutting down", name)
            return
        LOGGER.info("%s received: shutting down", name)
        stop.set()
        if starting.is_set():
            raise KeyboardInterrupt  # leaves the readiness wait

    warning = spanning_gpus_warning(args.model_repository, args.gpus)
    if warning:
        LOGGER.warning("%s", warning)
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_verbose=args.log_verbose,
        startup_timeout=args.startup_timeout,
        extra_args=[
            *cuda_memory_pool_args(args.cuda_memory_pool_mb, len(args.gpus) if args.gpus else None),
            *args.tritonserver_args,
        ],
        cuda_mps=args.cuda_mps,
        binary=args.tritonserver,
        gpus=args.gpus,
        allocator=args.allocator,
    )
    supervisor = (
        Supervisor(
            server,
            SupervisorSettings(
                canary_interval=args.canary_interval,
                metrics_host=args.host,
                metrics_port=args.supervisor_port,
            ),
        )
        if args.supervise
        else None
    )
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        try:
            server.start()
            if supervisor is not None:
                supervisor.start()
            starting.clear()
            LOGGER.info(
                "serving %s: --url %s --protocol grpc, or --url %s --protocol http%s; Ctrl-C stops",
                server.model_repository,
                server.grpc_url,
                server.url,
                f"; supervisor {supervisor.metrics_url}" if supervisor else "",
            )
            while not stop.wait(0.5):
                if supervisor is None and not server.is_alive():
                    raise TritonServerError(
                        f"tritonserver exited unexpectedly with status {server.returncode()}"
                    )
                if supervisor is not None and supervisor.failed is not None:
                    raise TritonServerError(supervisor.failed)
        except KeyboardInterrupt:
            pass
        finally:
            starting.set()  # signals during shutdown are logged, not raised
            stop.set()
            if supervisor is not None:
                supervisor.stop()
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

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

from tddfa_tools.guard.proxy import Guard
from tddfa_tools.locations import default_repository
from tddfa_tools.serve.allocator import ALLOCATORS
from tddfa_tools.serve.cuda_mps import (
    cuda_memory_pool_args,
    cuda_visible_devices,
    visible_gpu_count,
)
from tddfa_tools.serve.embedded import TritonServerError
from tddfa_tools.serve.ports import (
    DEFAULT_HTTP_PORT,
    OFFSETS,
    Ports,
    bind_error,
    check_free,
    is_loopback,
)
from tddfa_tools.serve.server import TritonServer
from tddfa_tools.signals import SIGNALS as STOP_SIGNALS

LOGGER = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


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
        metavar="DIR",
        help="model repository folder (default: %(default)s, where `tddfa build` writes)",
    )
    parser.add_argument(
        "--http-port",
        type=port,
        default=DEFAULT_HTTP_PORT,
        metavar="N",
        help="HTTP port; the other ports follow it unless given (default: %(default)s)",
    )
    for name, offset in OFFSETS.items():
        what = {"grpc": "gRPC", "supervisor": "the supervisor's /metrics and /health"}.get(
            name, name
        )
        parser.add_argument(
            f"--{name}-port",
            type=port,
            default=None,
            metavar="N",
            help=f"{what} port (default: the HTTP port + {offset}; 0: any free port)",
        )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s, this machine only). Any other address "
        "puts the checking proxy of `tddfa guard` on the HTTP and gRPC ports and keeps "
        "tritonserver on 127.0.0.1 (docs/security.md); metrics and supervisor ports bind here",
    )
    parser.add_argument(
        "--expose-triton",
        action="store_true",
        help="with a --host other than loopback: bind tritonserver itself there, without the "
        "guard (every request reaches Triton unchecked: only behind your own proxy)",
    )
    parser.add_argument(
        "--log-verbose",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="Triton's --log-verbose level (default: %(default)s)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=positive_float,
        default=300.0,
        metavar="S",
        help="seconds to wait for readiness (default: %(default)s)",
    )
    parser.add_argument(
        "--exit-timeout",
        type=non_negative_int,
        default=10,
        metavar="S",
        help="on stop, seconds tritonserver waits for open connections and requests in flight "
        "before unloading the models (its --exit-timeout-secs) (default: %(default)s)",
    )
    parser.add_argument(
        "--canary-interval",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="seconds between canary frames through the ensemble (finds hung steps; 0: off) "
        "(default: %(default)s)",
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
        help="run this tritonserver with its own backends (the NGC container: "
        "/opt/tritonserver/bin/tritonserver) (default: the embedded server of the "
        "nvidia-pytriton wheel)",
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
        "stays flat over days), the system's glibc malloc, or auto: jemalloc when installed "
        "(default: %(default)s)",
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
    ports = Ports.derived(args.http_port, args.grpc_port, args.metrics_port, args.supervisor_port)
    guarded = not is_loopback(args.host) and not args.expose_triton
    check_free(
        args.host,
        {
            "--http-port": ports.http,
            "--grpc-port": ports.grpc,
            "--metrics-port": ports.metrics,
            "--supervisor-port": ports.supervisor if args.supervise else 0,
        },
    )
    server = TritonServer(
        args.model_repository,
        # behind the guard, tritonserver listens on loopback only (free ports, logged)
        host=LOOPBACK if guarded else args.host,
        http_port=0 if guarded else ports.http,
        grpc_port=0 if guarded else ports.grpc,
        metrics_host=args.host,
        metrics_port=ports.metrics,
        log_verbose=args.log_verbose,
        startup_timeout=args.startup_timeout,
        exit_timeout=args.exit_timeout,
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
                metrics_port=ports.supervisor,
            ),
        )
        if args.supervise
        else None
    )
    guard: Guard | None = None
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        try:
            server.start()
            if supervisor is not None:
                _bind(supervisor.start, args.host, ports.supervisor, "--supervisor-port")
            if guarded:
                guard = _bind(
                    lambda: Guard(
                        args.host, ports.http, ports.grpc, server.url, server.grpc_url
                    ).start(),
                    args.host,
                    ports.http,
                    "--http-port or --grpc-port",
                )
            starting.clear()
            _log_serving(server, supervisor, guard)
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
            if guard is not None:
                guard.stop()
            if supervisor is not None:
                supervisor.stop()
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _bind(start, host: str, port: int, option: str):
    """``start()``, with a bind failure (a port taken since the check) named like one."""
    try:
        return start()
    except OSError as exc:
        raise TritonServerError(bind_error(host, port, option, exc)) from exc


def _log_serving(server: TritonServer, supervisor, guard: Guard | None) -> None:
    if guard is None:
        where = f"--url {server.grpc_url} --protocol grpc, or --url {server.url} --protocol http"
    else:
        host = {"0.0.0.0": "HOST", "::": "HOST"}.get(guard.host, guard.host)
        where = (
            f"--url {host}:{guard.grpc.port} --protocol grpc, or --url {host}:{guard.http.port} "
            f"--protocol http, every request checked by the guard (tritonserver itself on "
            f"{server.grpc_url} / {server.url}, for local clients with shared memory)"
        )
    LOGGER.info(
        "serving %s: %s; metrics %s%s; Ctrl-C stops",
        server.model_repository,
        where,
        server.metrics_url,
        f"; supervisor {supervisor.metrics_url}" if supervisor else "",
    )

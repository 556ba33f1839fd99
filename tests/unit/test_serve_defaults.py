"""Safe defaults of `tddfa serve` (docs/security.md): it binds 127.0.0.1 unless told otherwise (and then puts
the guard in front), its ports follow the HTTP port and a taken one is named, it closes
Triton's admin APIs to requests without its token, controls models explicitly (the
supervisor reloads through it), and never logs the token."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from tddfa_tools.cli import build_parser
from tddfa_tools.serve.embedded import TritonServerError
from tddfa_tools.serve.ports import Ports, check_free, is_loopback
from tddfa_tools.serve.server import TritonServer


def test_cli_binds_loopback_by_default() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.supervise and not args.expose_triton
    assert build_parser().parse_args(["serve", "--host", "0.0.0.0"]).host == "0.0.0.0"


def test_ports_follow_the_http_port() -> None:
    assert Ports.derived() == Ports(8000, 8001, 8002, 8003)
    assert Ports.derived(9000) == Ports(9000, 9001, 9002, 9003)
    assert Ports.derived(9000, metrics=9100) == Ports(9000, 9001, 9100, 9003)
    assert Ports.derived(0) == Ports(0, 0, 0, 0)  # any free port, each


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3"))


def test_a_port_in_use_is_named_with_its_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TritonServerError, match=rf"port {port} \(--grpc-port\) on 127.0.0.1"):
            check_free("127.0.0.1", {"--http-port": 0, "--grpc-port": port})


def test_a_port_left_in_time_wait_is_free() -> None:
    # a server stopped a moment ago leaves its accepted connections in TIME_WAIT: it can
    # be started again at once on the same port (tritonserver binds with SO_REUSEADDR)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver's
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: it is the one in TIME_WAIT
        client.close()
    check_free("127.0.0.1", {"--http-port": port})


def test_command_line(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, http_port=18000, grpc_port=18001, metrics_port=18002)
    command = server.command(Path("/bin/tritonserver"), Path("/backends"), None)
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                 "--metrics-address=127.0.0.1", "--model-control-mode=explicit",
                 "--load-model=*", "--strict-readiness=true"):  # fmt: skip
        assert flag in command
    restricted = [c for c in command if c.startswith(("--http-restricted", "--grpc-restricted"))]
    assert len(restricted) == 2 and all(server.admin_token in c for c in restricted)
    assert all("shared-memory,model-repository" in c for c in restricted)
    assert server.shm_prefix in next(c for c in command if "shm-region-prefix-name" in c)
    assert server.url == "127.0.0.1:18000"


def test_unrestricted_and_wildcard_host(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, host="0.0.0.0", restrict_admin=False, model_control="none")
    command = server.command(Path("/bin/tritonserver"), None, None)
    flags = ("--http-restricted-api", "--grpc-restricted-protocol", "--model-control-mode")
    assert not any(c.startswith(flags) for c in command)
    assert server.url.startswith("127.0.0.1:")  # where a client on this host connects


def test_the_token_is_not_logged(tmp_path: Path, caplog, monkeypatch) -> None:
    server = TritonServer(tmp_path)
    monkeypatch.setattr(
        server,
        "_launch_plan",
        lambda: (["tritonserver", *server.command(Path("t"), None, None)], {}),
    )

    def no_process(*args, **kwargs):
        raise RuntimeError("stop here")

    monkeypatch.setattr("subprocess.Popen", no_process)
    with caplog.at_level(logging.INFO, logger="tddfa_tools.serve.server"):
        try:
            server.start()
        except RuntimeError:
            pass
    assert "starting" in caplog.text and "tddfa-admin-token=***" in caplog.text
    assert server.admin_token not in caplog.text

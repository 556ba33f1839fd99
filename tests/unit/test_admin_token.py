"""The admin token: Triton's flags, the per-port files (0600) the local clients read."""

from __future__ import annotations

import stat

import pytest

from tddfa_tools.serve import admin_token


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(admin_token.ENV_TOKEN, raising=False)
    return tmp_path


def test_server_flags_restrict_the_dangerous_apis_only() -> None:
    http, grpc = admin_token.server_args("s3cret")
    assert http == (
        "--http-restricted-api=shared-memory,model-repository,logging,trace:tddfa-admin-token=s3cret"
    )
    assert grpc.startswith("--grpc-restricted-protocol=shared-memory,model-repository,")
    for api in ("inference", "health", "metadata", "statistics"):
        assert api not in http


def test_headers_per_protocol() -> None:
    assert admin_token.headers("t", "http") == {"tddfa-admin-token": "t"}
    # Triton 2.51 looks for the gRPC metadata under a prefixed key
    assert admin_token.headers("t", "grpc") == {"triton-grpc-protocol-tddfa-admin-token": "t"}
    assert admin_token.headers(None, "http") is None


def test_published_token_is_private_and_found_for_local_urls_only(runtime_dir) -> None:
    files = admin_token.publish("tok", (8000, 8001))
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    assert admin_token.find_token("localhost:8000") == "tok"
    assert admin_token.find_token("127.0.0.1:8001") == "tok"
    assert admin_token.find_token("example.com:8000") is None  # not ours to know
    assert admin_token.find_token("localhost:8002") is None


def test_withdraw_leaves_a_newer_servers_token(runtime_dir) -> None:
    files = admin_token.publish("old", (8000,))
    admin_token.publish("new", (8000,))  # a newer server took the port
    admin_token.withdraw(files, "old")
    assert admin_token.find_token("localhost:8000") == "new"
    admin_token.withdraw(files, "new")
    assert admin_token.find_token("localhost:8000") is None


def test_environment_overrides(monkeypatch) -> None:
    monkeypatch.setenv(admin_token.ENV_TOKEN, "from-env")
    assert admin_token.find_token("remote.example:8001") == "from-env"

"""Supervisor pieces without a server: stub processes read from a fake /proc, the metrics
text, the instance -> model mapping. The real behaviour (kill -9, reload, readiness) is in
tests/integration/test_adversarial_faults.py."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tddfa_tools.serve.stubs import find_stubs, parse_stub, remove_regions
from tddfa_tools.serve.supervisor_metrics import SupervisorMetrics

STUB = "/cache/backends/python/triton_python_backend_stub"


def _stub_argv(model: str, instance: str, region: str) -> list[str]:
    return [
        STUB, f"/repo/{model}/1/model.py", region, "1048576", "1048576", "4242",
        "/cache/backends/python", "123", instance, "/cache/backends/python",
    ]  # fmt: skip


def _process(proc: Path, pid: int, argv: list[str], state: str = "S") -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / str(pid) / "stat").write_text(f"{pid} (x y) {state} 1 2 3\n")


def test_parse_stub_reads_model_instance_and_region() -> None:
    stub = parse_stub(_stub_argv("face_detector", "face_detector_0_1", "pfx_uuid"), 7)
    assert (stub.model, stub.instance, stub.region, stub.pid) == (
        "face_detector", "face_detector_0_1", "pfx_uuid", 7,
    )  # fmt: skip
    assert parse_stub(["/usr/bin/python3", "x.py"], 8) is None


def test_find_stubs_keeps_live_stubs_of_one_server(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _process(proc, 10, _stub_argv("a", "a_0_0", "mine_1"))
    _process(proc, 11, _stub_argv("b", "b_0_0", "mine_2"), state="Z")  # dead, not reaped
    _process(proc, 12, _stub_argv("a", "a_0_0", "other_1"))  # another server's
    _process(proc, 13, ["/bin/bash", "-c", "exec stub"])
    (proc / "self").mkdir()
    assert [(s.pid, s.instance) for s in find_stubs("mine_", proc)] == [(10, "a_0_0")]


def test_remove_regions_only_with_a_prefix(tmp_path: Path) -> None:
    for name in ("mine_1", "mine_2", "theirs"):
        (tmp_path / name).write_bytes(b"")
    assert remove_regions("mine_", tmp_path) == ["mine_1", "mine_2"]
    assert [p.name for p in tmp_path.iterdir()] == ["theirs"]
    try:
        remove_regions("", tmp_path)
    except ValueError as exc:
        assert "without a prefix" in str(exc)
    else:
        raise AssertionError("an empty prefix must be refused")


def test_metrics_text_counts_events() -> None:
    metrics = SupervisorMetrics()
    metrics.set_server_up(True)
    metrics.set_healthy({"a", "b"})
    metrics.failure("a", "stub_exited")
    assert not metrics.all_healthy() and metrics.summary()["broken_models"] == ["a"]
    metrics.reloaded("a")
    metrics.server_restarted()
    metrics.canary(0.25)
    metrics.canary(None)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render())
        for sample in family.samples
    }
    assert (
        samples[
            ("tddfa_supervisor_model_failures_total", (("cause", "stub_exited"), ("model", "a")))
        ]
        == 1
    )
    assert samples[("tddfa_supervisor_model_reloads_total", (("model", "a"),))] == 1
    assert samples[("tddfa_supervisor_model_healthy", (("model", "a"),))] == 1
    assert samples[("tddfa_supervisor_server_restarts_total", ())] == 1
    assert samples[("tddfa_supervisor_canary_failures_total", ())] == 1
    assert samples[("tddfa_supervisor_canary_seconds", ())] == 0.25
    assert samples[("tddfa_supervisor_server_up", ())] == 1
    assert metrics.reloads == {"a": 1} and metrics.server_restarts == 1
    assert metrics.failures == {("a", "stub_exited"): 1}
    assert metrics.all_healthy()

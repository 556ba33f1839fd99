"""benchmarks/soak.py's sampling and analysis (benchmarks/_soak.py), without a server."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    """Import a benchmarks/ module by path (benchmarks/ holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


soak = load("_soak")


def run_of(rss_by_second: dict[float, dict[str, float]], rate: float = 10.0, errors=None):
    """Samples at the given seconds with constant throughput ``rate`` frames/s."""
    samples, previous = [], None
    for t, rss in sorted(rss_by_second.items()):
        error_count = (errors or {}).get(t, 0)
        previous = soak.next_sample(previous, t, int(t * rate), error_count, rss)
        samples.append(previous)
    return samples


def flat_rss(t: float) -> dict[str, float]:
    warm = 1.0 if t >= 60 else t / 60  # grows during warm-up, then flat
    return {"tritonserver": 300 * warm, "stub:face_renderer": 200 * warm, "stub:tddfa": 50.0}


def test_throughput_is_measured_between_samples() -> None:
    first = soak.next_sample(None, 0.0, 0, 0, {})
    second = soak.next_sample(first, 10.0, 55, 1, {"tritonserver": 1.0})
    assert first.frames_per_s == 0 and second.frames_per_s == pytest.approx(5.5)
    assert second.total_mb == 1.0 and second.stubs_mb == 0.0


def test_flat_memory_after_warm_up_passes() -> None:
    samples = run_of({float(t): flat_rss(t) for t in range(0, 901, 10)})
    samples[60].rss_mb["tritonserver"] += 40  # one noisy sample moves nothing
    samples[-1].rss_mb["tritonserver"] += 40
    analysis = soak.analyse(samples, warmup_s=60)
    total = analysis.growth[0]
    assert total.group == "total" and total.start_mb == pytest.approx(550)
    assert total.percent == pytest.approx(0) and total.slope_mb_per_h == pytest.approx(
        0, abs=20
    )  # the late spike tilts it a little
    assert analysis.flat and analysis.errors == 0 and analysis.verdict.startswith("PASS")
    assert analysis.frames_per_s == pytest.approx(10) and analysis.warm_samples == 85
    assert [g.group for g in analysis.growth] == [
        "total", "stubs", "stub:face_renderer", "stub:tddfa", "tritonserver",
    ]  # fmt: skip


def test_a_leaking_stub_fails_with_its_growth_and_slope() -> None:
    def leaking(t: float) -> dict[str, float]:
        rss = flat_rss(t)
        rss["stub:face_renderer"] += max(0.0, t - 60) * 0.1  # 0.1 MB/s = 360 MB/h
        return rss

    analysis = soak.analyse(run_of({float(t): leaking(t) for t in range(0, 901, 10)}), 60)
    by_group = {g.group: g for g in analysis.growth}
    renderer = by_group["stub:face_renderer"]
    # medians of the first and last 5 samples after warm-up: at 80 s and 880 s
    assert renderer.end_mb - renderer.start_mb == pytest.approx(80)
    assert renderer.percent == pytest.approx(80 / 202 * 100)
    assert renderer.slope_mb_per_h == pytest.approx(360)
    assert by_group["total"].percent == pytest.approx(80 / 552 * 100)
    assert not analysis.flat and analysis.verdict.startswith("FAIL") and "GROWS" in analysis.verdict


def test_errors_fail_the_soak_even_with_flat_memory() -> None:
    samples = run_of({float(t): flat_rss(t) for t in range(0, 301, 10)}, errors={300.0: 3})
    analysis = soak.analyse(samples, 60)
    assert analysis.flat and analysis.errors == 3
    assert analysis.growth[0].slope_mb_per_h is None  # 4 min after warm-up: no slope
    assert soak.growth_table(analysis)[1][0][-1] == "n/a"
    assert analysis.verdict.startswith("FAIL") and "3 ERRORS" in analysis.verdict


def test_warm_up_also_waits_for_enough_frames() -> None:
    samples = run_of({float(t): flat_rss(t) for t in range(0, 601, 10)})  # 10 frames/s
    by_time = soak.analyse(samples, 60)
    by_frames = soak.analyse(samples, 60, warmup_frames=2000)  # reached at 200 s
    assert by_time.warm_samples == 55 and by_frames.warm_samples == 41
    assert soak.analyse(samples, 60, warmup_frames=10**6).growth == ()


def test_a_run_shorter_than_the_warm_up_says_so() -> None:
    analysis = soak.analyse(run_of({0.0: flat_rss(0), 30.0: flat_rss(30)}), 60)
    assert analysis.growth == () and not analysis.flat
    assert "run longer than the warm-up" in analysis.verdict
    with pytest.raises(ValueError):
        soak.analyse([], 60)


def test_csv_has_one_row_per_sample_and_a_column_per_group(tmp_path: Path) -> None:
    samples = run_of({0.0: {"tritonserver": 1.0}, 10.0: flat_rss(10)})
    path = tmp_path / "sub" / "soak.csv"
    soak.write_csv(path, samples)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 and rows[1]["frames"] == "100"
    assert rows[0]["rss_mb[stub:face_renderer]"] == "0.0"
    assert float(rows[1]["stubs_rss_mb"]) == pytest.approx(200 / 6 + 50, abs=0.1)
    assert [p.name for p in path.parent.iterdir()] == ["soak.csv"]  # no temporary left


def fake_process(proc: Path, pid: int, ppid: int, argv: list[str], rss_kb: int) -> None:
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    (entry / "stat").write_text(f"{pid} (a (b) c) S {ppid} 1 1 0 -1\n")
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (entry / "status").write_text(f"Name:\tx\nVmRSS:\t{rss_kb} kB\n")


def test_process_table_groups_stubs_by_model(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    stub = "/cache/backends/python/triton_python_backend_stub"
    fake_process(proc, 100, 1, ["tritonserver", "--model-repository=/r"], 2048)
    fake_process(proc, 101, 100, [stub, "/r/face_renderer/1/model.py", "shm", "1"], 1024)
    fake_process(proc, 102, 100, [stub, "/r/face_renderer/1/model.py", "shm", "1"], 1024)
    fake_process(proc, 103, 100, [stub, "/r/face_aligner/1/model.py", "shm", "1"], 512)
    fake_process(proc, 104, 100, ["/bin/sh", "-c", "true"], 512)  # a child, not a stub
    fake_process(proc, 105, 1, [stub, "/r/other/1/model.py"], 512)  # another server's stub
    (proc / "self").mkdir()
    table = soak.ProcessTable(100, proc)
    assert table.groups() == {
        "tritonserver": [100],
        "stub:face_renderer": [101, 102],
        "stub:face_aligner": [103],
    }
    assert table.rss_mb() == {
        "tritonserver": 2.0,
        "stub:face_renderer": 2.0,
        "stub:face_aligner": 0.5,
    }


def test_rss_of_real_processes() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        table = soak.ProcessTable(os.getpid())
        assert child.pid in [pid for pid, _ in table.children()]
        assert table.rss_mb()["tritonserver"] > 10  # this interpreter, labelled as the server
        assert soak.rss_bytes(child.pid) > 0
    finally:
        child.kill()
        child.wait()
    assert soak.rss_bytes(child.pid) is None  # gone

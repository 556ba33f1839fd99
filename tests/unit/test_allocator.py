"""tddfa_tools.serve.allocator: which malloc tritonserver and its stubs get."""

from __future__ import annotations

import pytest

from tddfa_tools.serve import allocator
from tddfa_tools.serve.embedded import TritonServerError

JEMALLOC = "libjemalloc.so.2"


@pytest.fixture
def installed(monkeypatch):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: JEMALLOC)


@pytest.fixture
def missing(monkeypatch):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)


def test_auto_preloads_jemalloc_before_other_preloads(installed) -> None:
    env = allocator.with_allocator({"LD_PRELOAD": "libfoo.so", "A": "1"})
    assert env == {
        "LD_PRELOAD": f"{JEMALLOC}:libfoo.so",
        "A": "1",
        "MALLOC_CONF": allocator.JEMALLOC_CONF,
    }


def test_an_existing_jemalloc_preload_is_kept_once(installed) -> None:
    env = {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2"}
    assert allocator.with_allocator(env, "jemalloc") == {
        **env,
        "MALLOC_CONF": allocator.JEMALLOC_CONF,
    }


def test_jemalloc_caches_large_blocks_unless_the_caller_configured_it(installed) -> None:
    assert allocator.JEMALLOC_CONF == "lg_tcache_max:23"  # 8 MiB: a frame's buffers
    env = allocator.with_allocator({"MALLOC_CONF": "narenas:2"})
    assert env["MALLOC_CONF"] == "narenas:2"


def test_the_setting_is_one_jemalloc_reads() -> None:
    """jemalloc prints "Invalid conf pair" for a setting it does not know: none here."""
    import subprocess
    import sys

    library = allocator.find_jemalloc()
    if library is None:
        pytest.skip("libjemalloc2 is not installed")
    env = {"LD_PRELOAD": library, "MALLOC_CONF": f"{allocator.JEMALLOC_CONF},stats_print:true"}
    done = subprocess.run(
        [sys.executable, "-c", "pass"], env=env, capture_output=True, text=True, check=True
    )
    assert "Invalid conf" not in done.stderr
    stats = done.stderr + done.stdout
    assert "opt.tcache_max: 8388608" in stats or "opt.lg_tcache_max: 23" in stats  # 5.3 / 5.2


def test_system_leaves_the_environment_alone(installed) -> None:
    assert allocator.with_allocator({"A": "1"}, "system") == {"A": "1"}


def test_auto_without_jemalloc_warns_and_keeps_glibc(missing, caplog) -> None:
    assert allocator.with_allocator({"A": "1"}) == {"A": "1"}
    assert "apt-get install libjemalloc2" in caplog.text


def test_jemalloc_required_but_missing_names_the_package(missing) -> None:
    with pytest.raises(TritonServerError, match="apt-get install libjemalloc2"):
        allocator.with_allocator({}, "jemalloc")


def test_unknown_allocator_is_refused() -> None:
    with pytest.raises(ValueError, match="auto"):
        allocator.with_allocator({}, "tcmalloc")

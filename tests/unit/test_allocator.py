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
    assert env == {"LD_PRELOAD": f"{JEMALLOC}:libfoo.so", "A": "1"}


def test_an_existing_jemalloc_preload_is_kept_once(installed) -> None:
    env = {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2"}
    assert allocator.with_allocator(env, "jemalloc") == env


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

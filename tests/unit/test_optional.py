"""tddfa_clients.optional.installed: safe while another thread imports the module."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from tddfa_clients.optional import installed


def test_a_module_being_imported_counts_as_installed(monkeypatch):
    # what sys.modules holds while OpenCV's package imports itself in another thread
    half_imported = types.ModuleType("tddfa_half_imported")
    half_imported.__spec__ = None
    monkeypatch.setitem(sys.modules, "tddfa_half_imported", half_imported)
    with pytest.raises(ValueError, match="__spec__ is None"):
        importlib.util.find_spec("tddfa_half_imported")  # the race this module avoids
    assert installed("tddfa_half_imported")


def test_installed_and_missing_modules():
    assert installed("numpy")
    assert not installed("tddfa_no_such_module")

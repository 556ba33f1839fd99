"""Where the ``tddfa`` command keeps its files when no option says otherwise (XDG base
directories, so an installed package never writes into site-packages or the current folder):

- ``$XDG_DATA_HOME/tddfa/model_repository`` (default ``~/.local/share/tddfa/...``): the
  repository ``tddfa build`` writes and ``tddfa serve`` serves;
- ``$XDG_CACHE_HOME/tddfa/`` (default ``~/.cache/tddfa/``): ``models/`` (exported networks
  and tables, rebuilt when missing), ``assets/`` (downloaded weights), ``tritonserver/`` (the
  embedded server's Python backend with the stub for this interpreter).
"""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(variable: str, default: str) -> Path:
    value = os.environ.get(variable)
    # the XDG spec: a relative path is invalid and must be ignored
    return Path(value) if value and os.path.isabs(value) else Path.home() / default


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tddfa`` or ``~/.cache/tddfa``."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "tddfa"


def user_data_dir() -> Path:
    """``$XDG_DATA_HOME/tddfa`` or ``~/.local/share/tddfa``."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "tddfa"


def default_repository() -> Path:
    """The model repository of ``tddfa build --out`` and ``tddfa serve --model-repository``."""
    return user_data_dir() / "model_repository"


def default_models_dir() -> Path:
    """The cache of exported networks and tables (``tddfa build --models-dir``)."""
    return user_cache_dir() / "models"

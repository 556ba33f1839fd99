"""Triton glue: the one base class every model.py of the repository subclasses.

This package is the only place that imports ``triton_python_backend_utils``; the logic
lives in :mod:`tddfa`, which never imports Triton.
"""

from tddfa_triton.adapter import LoadContext, NetworkModel, SequenceModel, StepModel

__all__ = ["LoadContext", "NetworkModel", "SequenceModel", "StepModel"]

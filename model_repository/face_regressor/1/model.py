"""Triton adapter of the face_regressor network, python flavour (runner choice: tddfa.runners)."""

from tddfa_triton import NetworkModel as TritonPythonModel

__all__ = ["TritonPythonModel"]

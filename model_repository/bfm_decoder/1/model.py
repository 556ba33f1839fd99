"""Triton adapter of the bfm_decoder network, python flavour (runner choice: tddfa.runners)."""

from tddfa_triton import NetworkModel as TritonPythonModel

__all__ = ["TritonPythonModel"]

"""Triton adapter of the face_regressor network, python flavour with --networks models
(runner choice: tddfa.runners; the steps call this model through BLS: tddfa_triton.bls)."""

from tddfa_triton import NetworkModel as TritonPythonModel

__all__ = ["TritonPythonModel"]

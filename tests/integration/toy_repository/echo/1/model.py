"""Toy Python-backend model: OUTPUT = INPUT.

It imports the project's package at load time, so a server whose Python stub cannot see
the project's virtual environment fails to load it (and the smoke test fails).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

import tddfa.config


class TritonPythonModel:
    def initialize(self, args):
        pb_utils.Logger.log_info(
            f"echo: numpy {np.__version__}, tddfa from {tddfa.config.__file__}"
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", data.copy())]))
        return responses

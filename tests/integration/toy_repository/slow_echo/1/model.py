"""Toy Python-backend model: OUTPUT = INPUT, answered after SECONDS (at most 30) seconds."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            seconds = pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()
            time.sleep(min(max(float(seconds[0]), 0.0), 30.0))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", data.copy())]))
        return responses

"""Toy Python-backend model: OUTPUT = 2 * INPUT; a request with a negative value gets an
error response naming the problem, without failing the other requests of its batch."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            if data.size and data.min() < 0:
                error = pb_utils.TritonError(
                    f"INPUT must be non-negative, got minimum {float(data.min())}"
                )
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            output = (2 * data).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", output)]))
        return responses

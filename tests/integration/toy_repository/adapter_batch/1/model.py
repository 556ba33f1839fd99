"""The repository's real adapter (config parsing, per-request reading and validation,
batching across requests, error responses) around a step that halves X and refuses
negative values, so a test can mix good and bad requests in one execute()."""

from tddfa_triton.adapter import StepModel


class HalvingStep:
    def validate(self, inputs):
        if (inputs["X"] < 0).any():
            raise ValueError(f"X must be >= 0, got {inputs['X'].min():g}")

    def run(self, inputs):
        return {"Y": inputs["X"] / 2}


class TritonPythonModel(StepModel):
    def build_step(self, context):
        return HalvingStep()

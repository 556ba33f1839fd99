"""Triton adapter of the bfm_decoder network, python flavour (runner choice: tddfa.runners)."""

from tddfa.runners import make_runner
from tddfa.steps import NetworkStep
from tddfa_triton import StepModel


class TritonPythonModel(StepModel):
    def build_step(self, context):
        runner = make_runner(
            context.model_dir,
            context.device,
            cuda_graphs=context.device != "cpu",  # one graph per batch size, replayed
            fp16=context.parameters.get("precision", "fp16") == "fp16",
        )
        warmup = getattr(runner, "warmup", None)
        if warmup is not None and context.max_batch_size:  # GPU: graphs made before traffic
            warmup(context.input_dims, range(1, context.max_batch_size + 1))
        return NetworkStep(runner, context.input_names)

"""``tddfa build``: the model repository (``repository``, ``options``, ``command``), the
exported networks and tables (``exports``, ``export_onnx``, ``detector_graph``,
``tensorrt_builder``, ``bfm_builder``, ``render_assets``, ``mesh_lod``), where each flavour
runs the networks (``flavours``) and the config reader and checkers (``model_config``)."""

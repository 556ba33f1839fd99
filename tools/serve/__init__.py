"""``tddfa serve``: a tritonserver process (``server``, ``embedded``, ``allocator``,
``cuda_mps``), its admin token (``admin_token``), the supervisor that keeps it healthy
(``supervisor``, ``supervisor_metrics``, ``model_control``, ``stubs``) and the command line
(``command``)."""

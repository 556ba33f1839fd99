"""The ``tddfa`` command and its subsystems: ``assets``, ``build``, ``serve``, ``guard``
(one package each), ``dev`` (developer tools), ``cli`` (the entry point) and ``arguments``
(argparse value types shared by every subcommand)."""

"""Model assets: the table of files (``table``), finding and downloading them (``resolve``),
loading them safely (``safe_load``) and ``tddfa assets`` (``command``)."""

"""``tddfa guard``: a checking reverse proxy in front of tritonserver (``proxy``), the checks
it applies (``rules``, pure functions) and its command line (``command``)."""

"""Developer tools, not part of the ``tddfa`` command: the README's contact sheet and clips
with known motion for the jitter benchmark and tests."""

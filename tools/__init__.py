"""Developer tools, outside the wheel: run from the repository with `python -m tools.NAME` or make."""

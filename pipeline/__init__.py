"""The DVC stage entry points: `python -m pipeline STAGE` (pipeline/__main__.py)."""

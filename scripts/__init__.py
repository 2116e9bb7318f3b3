"""Command-line tools around training runs (each one runs as `python scripts/<name>.py`, or is imported)."""

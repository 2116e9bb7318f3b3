"""Run folders: where a run writes, its lock, resume and fork checks, atomic writes and summary.json."""

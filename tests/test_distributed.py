"""Multi-process training on CPU (2 ranks, gloo) of the embedded model: whole prompt groups per rank, no
duplicated prompts, metrics reduced and weights identical across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DISTRIBUTED_RUN
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_cpu_two_ranks_split_prompts_without_duplication(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        "trainer=ddp_cpu",
        *DISTRIBUTED_RUN,
        f"hydra.run.dir={run_dir}",
        "+callbacks.probe._target_=tests.ddp_probe.RecordBatches",
        f"+callbacks.probe.path={run_dir}/probe",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        r: [
            json.loads(line)
            for line in (run_dir / "probe" / f"batches.rank{r}.jsonl").read_text().splitlines()
        ]
        for r in (0, 1)
    }
    assert len(rows[0]) == len(rows[1]) == 2
    for a, b in zip(rows[0], rows[1]):
        assert a["world"] == b["world"] == 2 and a["step"] == b["step"]
        # Each rank holds whole prompts (2 of the global 4, each with all G samples), none on both ranks.
        assert len(a["ids"]) == len(b["ids"]) == 2 and not set(a["ids"]) & set(b["ids"])
        assert a["G"] == b["G"] == 4
        # The ranks trained on different prompts, yet hold the same weights: gradients are all-reduced.
        assert a["param_sum"] == b["param_sum"]
        # Logged metrics are reduced across ranks, so both ranks report the same value.
        assert a["metrics"]["train/reward"] == b["metrics"]["train/reward"]
        assert a["metrics"]["train/effective_batch"] == 16.0
    trained = load_file(run_dir / "policy" / "model.safetensors")
    initial = load_file(ROOT / "assets" / "embedded" / "model.safetensors")
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), "the policy did not change"
    assert (run_dir / "policy" / "model.safetensors").exists()

"""trainer=deepspeed (ZeRO-2) on 2 CPU processes through DeepSpeed's CPU accelerator (tests/deepspeed_cpu.py
lifts Lightning's CUDA-only checks): identical, updated weights on both ranks, equal to DDP's with and without
clipping and with several micro-batches per step, and a non-finite step skipped on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import DISTRIBUTED_RUN
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

pytest.importorskip("deepspeed")  # the deepspeed extra: pip install -e ".[deepspeed]"
pytestmark = pytest.mark.slow  # 2-process training runs of ~50 s each (make test runs them)

ROOT = Path(__file__).resolve().parents[1]
CPU_DEEPSPEED = [
    "trainer=deepspeed",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.strategy._target_=tests.deepspeed_cpu.CPUDeepSpeedStrategy",
]
# The DDP test's run without clipping (max_grad_norm 1e9), so ZeRO-2 and DDP give bit-identical weights.
RUN = [*DISTRIBUTED_RUN, "module.optim.max_grad_norm=1e9"]


def train(run_dir: Path, *overrides: str) -> dict[int, list[dict]]:
    """train.py with the batch probe on 2 ranks: each rank's rows (step, prompt ids, weight checksum, metrics)."""
    cmd = [sys.executable, "train.py", *RUN, *overrides, f"hydra.run.dir={run_dir}"]
    cmd += [
        "+callbacks.probe._target_=tests.ddp_probe.RecordBatches",
        f"+callbacks.probe.path={run_dir}/probe",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # not an AssertionError: the expected failures below expect only those
        pytest.fail(f"train.py {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    probe = run_dir / "probe"
    return {
        r: [json.loads(x) for x in (probe / f"batches.rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    }


def policy(run_dir: Path) -> dict[str, torch.Tensor]:
    """The exported final policy's tensors."""
    return load_file(run_dir / "policy" / "model.safetensors")


@pytest.fixture(scope="module")
def zero2(tmp_path_factory) -> tuple[Path, dict[int, list[dict]]]:
    run_dir = tmp_path_factory.mktemp("deepspeed") / "run"
    return run_dir, train(run_dir, *CPU_DEEPSPEED)


def test_deepspeed_cpu_two_ranks_identical_updated_weights(zero2):
    run_dir, rows = zero2
    assert len(rows[0]) == len(rows[1]) == 2
    for a, b in zip(rows[0], rows[1]):
        assert a["world"] == b["world"] == 2 and a["step"] == b["step"]
        assert len(a["ids"]) == len(b["ids"]) == 2 and not set(a["ids"]) & set(b["ids"])
        # Different prompts on each rank, the same weights: ZeRO reduce-scatters gradients, all-gathers weights.
        assert a["param_sum"] == b["param_sum"]
        assert a["metrics"]["train/reward"] == b["metrics"]["train/reward"]
        assert a["metrics"]["train/effective_batch"] == 16.0
    initial = load_file(ROOT / "assets" / "embedded" / "model.safetensors")
    trained = policy(run_dir)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), "the policy did not change"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, dict[int, list[dict]]]:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    return run_dir, train(run_dir, "trainer=ddp_cpu")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_deepspeed_zero2_equals_ddp(zero2, ddp):
    # Two ranks: the mean of two gradients is exact in any order (a two-term sum commutes, halving is
    # exact) and both run the same AdamW on the same values, so the weights are bit-identical.
    (run_dir, rows), (ddp_dir, ddp_rows) = zero2, ddp
    assert [r["param_sum"] for r in ddp_rows[0]] == [r["param_sum"] for r in rows[0]]
    assert max_difference(policy(ddp_dir), policy(run_dir)) == 0.0


def test_deepspeed_logs_the_gradient_norm(zero2, ddp):
    # The same gradient, its norm summed in another order (ZeRO: per partition, then across ranks): float32
    # sums of ~2M squares agree to ~sqrt(n) * 6e-8 = 1e-4 relative.
    zero_norms = [r["metrics"]["train/grad_norm"] for r in zero2[1][0]]
    ddp_norms = [r["metrics"]["train/grad_norm"] for r in ddp[1][0]]
    assert max(zero_norms) > 0  # a step whose groups all have equal rewards has a zero gradient
    assert zero_norms == pytest.approx(ddp_norms, rel=1e-4)


SGD_CLIPPED = [
    "module.optim.name=sgd",
    "module.optim.momentum=0",
    "module.optim.warmup_steps=0",
    "module.optim.max_grad_norm=1.0",
]


def test_deepspeed_clips_like_ddp(tmp_path):
    # Plain SGD, so the update is lr x the clipped gradient (AdamW would hide a missing clip: it is nearly
    # scale-invariant). The two clip factors agree to the norms' 1e-4 and every clipped gradient has norm
    # 1, so the weights agree to steps x lr x 1e-4, plus each run's rounding of the updated weights.
    zero_rows = train(tmp_path / "zero2", *CPU_DEEPSPEED, *SGD_CLIPPED)
    ddp_rows = train(tmp_path / "ddp", "trainer=ddp_cpu", *SGD_CLIPPED)
    norms = [r["metrics"]["train/grad_norm"] for r in zero_rows[0]]
    assert max(norms) > 10  # clipping was engaged
    assert norms == pytest.approx([r["metrics"]["train/grad_norm"] for r in ddp_rows[0]], rel=1e-4)
    unclipped = train(tmp_path / "unclipped", *CPU_DEEPSPEED, *SGD_CLIPPED, "module.optim.max_grad_norm=1e9")
    zero, ddp_w = policy(tmp_path / "zero2"), policy(tmp_path / "ddp")
    steps = len(zero_rows[0])
    lr = float(next(o.split("=")[1] for o in RUN if o.startswith("module.optim.lr=")))
    w_max = max(float(v.abs().max()) for v in zero.values())
    rounding = 2 * steps * w_max * 2.0**-24  # half a float32 ulp per update, in each of the two runs
    tolerance = steps * lr * 1e-4 + rounding
    assert max_difference(zero, ddp_w) <= tolerance
    assert max_difference(zero, policy(tmp_path / "unclipped")) > 100 * tolerance
    assert len(unclipped[0]) == 2


def test_deepspeed_micro_batches_equal_ddp(tmp_path):
    # 2 prompts per rank: 2 backward passes per optimizer step. DDP and ZeRO-2 both reduce each backward's
    # gradient over the two ranks (exact, as above) and add the micro-batches in the same order: bit-identical.
    micro = "module.rollout_micro_batch=1"
    train(tmp_path / "ddp", "trainer=ddp_cpu", micro)
    train(tmp_path / "zero2", *CPU_DEEPSPEED, micro)
    assert max_difference(policy(tmp_path / "ddp"), policy(tmp_path / "zero2")) == 0.0


def test_deepspeed_skips_a_non_finite_step_on_every_rank(tmp_path):
    nan_once = ["+callbacks.nan._target_=tests.ddp_probe.NanLossOnce", "+callbacks.nan.rank=1"]
    # No warm-up, so the step after the skipped one has a learning rate above 0 and moves the weights.
    rows = train(tmp_path / "zero2", *CPU_DEEPSPEED, *nan_once, "module.optim.warmup_steps=0")
    initial = AutoModelForCausalLM.from_pretrained(ROOT / "assets" / "embedded")
    start = float(sum(p.detach().double().abs().sum() for p in initial.parameters()))
    for r in (0, 1):
        skipped, applied = rows[r]
        assert skipped["param_sum"] == start and skipped["metrics"]["train/skipped_steps"] == 1.0
        assert skipped["metrics"]["train/grad_norm"] == -1.0  # not finite
        assert applied["param_sum"] != start and applied["metrics"]["train/skipped_steps"] == 0.0
    assert rows[0][1]["param_sum"] == rows[1][1]["param_sum"]


def test_deepspeed_config_clipping_is_the_modules(tmp_path):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from soft_tokens.training.optimizer_step import configure_zero_clipping

    trainer = SimpleNamespace(strategy=DeepSpeedStrategy(stage=2))
    configure_zero_clipping(trainer, 0.5)
    assert trainer.strategy.config["gradient_clipping"] == 0.5
    (tmp_path / "ds.json").write_text(json.dumps({"gradient_clipping": 2.0}))
    for config in ({"gradient_clipping": 2.0}, str(tmp_path / "ds.json")):
        trainer = SimpleNamespace(strategy=DeepSpeedStrategy(config=config))
        with pytest.raises(ValueError, match="clipping=2.0 disagrees with module.optim.max_grad_norm=0.5"):
            configure_zero_clipping(trainer, 0.5)

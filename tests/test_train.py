"""The training loop end to end: config composition, a few steps through train.py, non-finite handling."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import hydra
import pytest
import torch
from helpers import compose_train
from hydra.errors import InstantiationException
from lightning.pytorch.loggers import CSVLogger

import train as train_script
from soft_tokens.estimators.grpo import grpo_advantages
from soft_tokens.training.builders import build_module
from soft_tokens.training.module import NonFiniteLossError
from soft_tokens.training.step_metrics import Group


def test_train_smoke_writes_run_folder(tmp_path, tiny_model_dir):
    cfg = compose_train(
        ["debug=fast", f"model.name_or_path={tiny_model_dir}", "callbacks.rich_progress_bar=null"], tmp_path
    )
    metrics = train_script.train(cfg)
    assert "val/accuracy" in metrics and "train/reward" in metrics
    assert (tmp_path / "config.yaml").exists()
    assert (tmp_path / "policy" / "model.safetensors").exists()
    assert (tmp_path / "policy_best" / "model.safetensors").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    "rep,est,extra",
    [
        ("soft", "rloo", []),
        ("fuzzy", "rloo", []),
        ("hard", "grpo", []),
        ("soft", "grpo", []),
        ("fuzzy", "grpo", []),
        # Several passes per rollout (clipped ratio) and a KL to the reference model.
        ("soft", "grpo", ["estimator.num_iterations=2", "estimator.beta=0.04"]),
        ("hard", "rloo", ["estimator.beta=0.04"]),
        ("gumbel", "rloo", []),
        ("gumbel", "grpo", ["estimator.num_iterations=2", "estimator.beta=0.04"]),
        # Placed noise (candidate span, forks only), with the clipped ratio and the KL.
        ("soft", "rloo", ["representer.noise_top_k=3", "representer.noise_min_entropy=0.1"]),
        ("soft", "grpo", ["representer.noise_top_k=3", "estimator.num_iterations=2", "estimator.beta=0.04"]),
        ("fuzzy", "rloo", ["representer.noise_min_entropy=0.1", "estimator.beta=0.04"]),
    ],
)
def test_train_smoke_other_components(tmp_path, tiny_model_dir, rep, est, extra):
    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            f"representer={rep}",
            f"estimator={est}",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
            *extra,
        ],
        tmp_path,
    )
    metrics = train_script.train(cfg)
    assert rep == "hard" or f"val/accuracy_{rep}" in metrics
    assert math.isfinite(metrics["train/loss"]) and "train/clip_ratio/region_mean" in metrics
    if "estimator.beta=0.04" in extra:
        assert metrics["train/kl"] >= 0


def test_non_finite_loss_is_skipped_then_stops(tmp_path, tiny_model_dir, monkeypatch):
    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            "trainer.max_steps=5",
            "module.max_bad_steps=2",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
        ],
        tmp_path,
    )
    module = build_module(cfg)
    calls = {"n": 0}
    original = module.estimator.loss

    def nan_loss(*args, **kwargs):
        calls["n"] += 1
        loss, m = original(*args, **kwargs)
        return loss * float("nan"), m

    monkeypatch.setattr(module.estimator, "loss", nan_loss)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False)
    module.configure_model()
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite(.|\n)*No checkpoint was written"):
        trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    assert calls["n"] == 2
    assert all(torch.equal(before[k], v) for k, v in module.policy.state_dict().items())


# --------------------------------------------------------------------------- one step, without a Trainer

QUESTIONS = ["What is 1 + 2?", "Ann has 3 pens and buys 4. How many?", "What is 7 - 5?", "Double 6."]
ANSWERS = ["3", "7", "2", "12"]


def attach(module, world_size: int = 1, global_rank: int = 0):
    """Give a module the few Trainer attributes one step needs (backward, world size, rank)."""
    strategy = SimpleNamespace(backward=lambda loss, optimizer: loss.backward())
    module._trainer = SimpleNamespace(world_size=world_size, global_rank=global_rank, strategy=strategy)
    return module


def tiny_module(tiny_model_dir, tmp_path, overrides: list[str]):
    cfg = compose_train(
        [
            f"model.name_or_path={tiny_model_dir}",
            "module.rollout.max_cot_tokens=6",
            "module.rollout.answer_max_tokens=3",
            *overrides,
        ],
        tmp_path,
    )
    module = build_module(cfg)
    module.configure_model()
    return attach(module)


def rollouts_with_advantages(module, questions: list[str], answers: list[str]) -> list[Group]:
    """The first three parts of a training step: rollouts, rewards, advantages."""
    groups = module.generate_rollouts(questions)
    module.score(groups, answers)
    module.assign_advantages(groups)
    return groups


def rows_of(group: Group, prompts: slice, G: int) -> Group:
    """The sub-group of whole prompts `prompts` (their G rows each), every column kept."""
    rows = list(range(prompts.start * G, prompts.stop * G))

    def pick(v):
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == len(group.advantages):
            return v[rows]
        return [v[i] for i in rows] if isinstance(v, list) else v

    ro = group.rollout
    fields = {k: pick(v) for k, v in vars(ro).items()}
    fields["aux"] = {k: v[rows] for k, v in ro.aux.items()}
    return Group(type(ro)(**fields), group.rewards[prompts], group.correct[prompts], group.advantages[rows])


@pytest.mark.parametrize(
    "est,loss_type",
    [("rloo", "sequence_sum"), ("rloo", "grpo"), ("grpo", "bnpo"), ("grpo", "dapo"), ("grpo", "dr_grpo")],
)
def test_micro_batches_weight_every_sequence_like_the_unsplit_step(tiny_model_dir, tmp_path, est, loss_type):
    # The same 4 prompt groups back-propagated whole, then as micro-batches of 3 + 1 prompts: the loss and
    # the gradient must be the same up to rounding. The model runs in float64 but the per-step log-probs
    # are float32 (categorical_log_prob), so each of the n per-step terms may move by a float32 ulp.
    module = tiny_module(
        tiny_model_dir,
        tmp_path,
        [f"estimator={est}", f"estimator.loss_type={loss_type}", "module.samples_per_prompt=2"],
    )
    module.policy.double()
    (whole,) = rollouts_with_advantages(module, QUESTIONS, ANSWERS)
    torch.manual_seed(0)
    whole.advantages = torch.randn(8, dtype=torch.float64)  # rewards of a random model are mostly equal
    split = [rows_of(whole, slice(0, 3), 2), rows_of(whole, slice(3, 4), 2)]

    def gradient(groups):
        module.policy.zero_grad(set_to_none=True)
        loss, _, _ = module.accumulate_gradients(groups, module.step_totals(groups))
        return loss, torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])

    loss_whole, grad_whole = gradient([whole])
    loss_split, grad_split = gradient(split)
    n, eps = int(whole.rollout.gen_mask.sum()), torch.finfo(torch.float32).eps
    # |per-step term| <= max|A| (ratio 1) and the normaliser is >= 1: n terms of at most that size.
    loss_atol = n * eps * whole.advantages.abs().max().item()
    torch.testing.assert_close(loss_split, loss_whole, rtol=0, atol=loss_atol)
    torch.testing.assert_close(grad_split, grad_whole, rtol=0, atol=n * eps * grad_whole.abs().max().item())


# B = 4 prompts x G = 4 samples with spread-out rewards (the batch std differs from each half's std).
REWARDS = torch.tensor(
    [[100.0, 0.0, 0.0, 10.0], [0.0, 0.0, 10.0, 0.0], [100.0, 100.0, 100.0, 0.0], [10.0, 100.0, 0.0, 0.0]]
)


def scripted_rewards(module, rewards: torch.Tensor) -> None:
    """Make the reward return the rows of `rewards`, in order, whatever the completions."""
    flat, served = rewards.reshape(-1), [0]

    def score_batch(completions, golds):
        n, start = len(completions), served[0]
        served[0] += n
        return flat[start : start + n], flat[start : start + n] > 50

    module.reward.score_batch = score_batch


def test_grpo_batch_std_covers_every_micro_batch(tiny_model_dir, tmp_path):
    module = tiny_module(
        tiny_model_dir,
        tmp_path,
        [
            "estimator=grpo",
            "estimator.scale_rewards=batch",
            "module.samples_per_prompt=4",
            "module.rollout_micro_batch=2",
        ],
    )
    scripted_rewards(module, REWARDS)
    groups = rollouts_with_advantages(module, QUESTIONS, ANSWERS)
    assert len(groups) == 2
    got = torch.cat([g.advantages for g in groups])
    torch.testing.assert_close(got, grpo_advantages(REWARDS, "batch").reshape(-1))


def test_grpo_batch_std_covers_every_rank(tiny_model_dir, tmp_path):
    # Rank 1 of 2: its two prompts' advantages use the std of all four prompts (rank 0 holds the first two).
    module = tiny_module(
        tiny_model_dir,
        tmp_path,
        ["estimator=grpo", "estimator.scale_rewards=batch", "module.samples_per_prompt=4"],
    )
    attach(module, world_size=2, global_rank=1)
    scripted_rewards(module, REWARDS[2:])
    module.all_gather = lambda local: torch.stack([REWARDS[:2], local])
    (group,) = rollouts_with_advantages(module, QUESTIONS[2:], ANSWERS[2:])
    torch.testing.assert_close(group.advantages, grpo_advantages(REWARDS, "batch")[2:].reshape(-1))


@pytest.mark.parametrize("est", ["rloo", "grpo"])
def test_one_sample_per_prompt_is_refused_for_group_estimators(tiny_model_dir, tmp_path, est):
    cfg = compose_train(
        [f"model.name_or_path={tiny_model_dir}", f"estimator={est}", "module.samples_per_prompt=1"], tmp_path
    )
    with pytest.raises(ValueError, match=r"module\.samples_per_prompt=1: (RLOO|GRPO)'s advantages compare"):
        build_module(cfg)


def test_zero_answer_temperature_is_refused_at_start(tiny_model_dir, tmp_path):
    cfg = compose_train(
        [f"model.name_or_path={tiny_model_dir}", "module.rollout.answer_temperature=0"], tmp_path
    )
    # Hydra wraps the ValueError of RolloutConfig in its InstantiationException, message kept.
    with pytest.raises(InstantiationException, match=r"answer_temperature=0 must be a finite number > 0"):
        build_module(cfg)


def test_skipped_steps_is_logged_every_step(tmp_path, tiny_model_dir, monkeypatch):
    # The first step's loss is NaN (skipped), the next ones are fine: the logged count must fall back to 0.
    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            "trainer.max_steps=3",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
        ],
        tmp_path,
    )
    module = build_module(cfg)
    original, calls = module.estimator.loss, {"n": 0}

    def nan_first(*args, **kwargs):
        calls["n"] += 1
        loss, m = original(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 1 else loss), m

    monkeypatch.setattr(module.estimator, "loss", nan_first)
    logger = CSVLogger(tmp_path / "csv", name="", version="")
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[], logger=logger, enable_checkpointing=False)
    trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    with open(tmp_path / "csv" / "metrics.csv") as f:
        skipped = [row["train/skipped_steps"] for row in csv.DictReader(f) if row.get("train/skipped_steps")]
    # A skipped step takes no optimizer step, so max_steps=3 runs 4 training steps: one logged row each.
    assert [float(v) for v in skipped] == [1.0, 0.0, 0.0, 0.0]

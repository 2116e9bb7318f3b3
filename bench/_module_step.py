"""The real `SoftTokensModule` under a Lightning Trainer, for benchmarks: a fit of a few steps, a clock and a
memory probe of its steps, seeded random rewards, and a naive log-prob pass to swap in for comparison."""

from __future__ import annotations

import contextlib
import time
import warnings
from unittest import mock

import lightning as L
import torch
from _common import PeakMeter, sync
from torch.utils.data import DataLoader

import soft_tokens.training.module as module_mod
from soft_tokens.representers import Replay
from soft_tokens.rollout import Rollout
from soft_tokens.rollout.logprobs import StepLogProbs, input_embeds
from soft_tokens.training.module import SoftTokensModule

# What a short fit on one in-memory batch always says (train.py hides the last two as well).
for message in ("does not have many workers", "no pre-optimization state", "in eval mode at the start"):
    warnings.filterwarnings("ignore", message=f".*{message}.*")


def naive_log_probs(model, ro: Rollout, rep) -> torch.Tensor:
    """The straightforward version: full float32 logits and log-softmax over [N, T, V]; [N, S] log-probs."""
    logits = model(
        inputs_embeds=input_embeds(model, ro),
        attention_mask=ro.attention_mask,
        position_ids=ro.position_ids,
        use_cache=False,
    ).logits.float()  # [N, T, V]
    P = ro.prompt_len
    logits = logits[:, P - 1 : -1]  # [N, S, V]: the logits that predict each generated position
    ids = ro.ids[:, P:]
    logp_all = torch.log_softmax(logits / ro.answer_temperature, dim=-1)  # [N, S, V] float32
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    E = model.get_input_embeddings().weight
    cot = rep.log_prob(Replay(logits, ro.fed, ids, E))  # the representer on every position, [N, S]
    logp = torch.where(ro.cot_mask, cot, logp)
    return logp * ro.gen_mask


@contextlib.contextmanager
def log_prob_pass(impl: str):
    """The module's log-prob pass as it is (ours) or replaced by the naive one, which must then be called."""
    if impl == "ours":
        yield
        return
    calls = []

    def naive(model, rollout, representer, ref_model=None, cot_grad_weight=1.0, **_) -> StepLogProbs:
        if ref_model is not None or cot_grad_weight != 1.0:
            raise ValueError("the naive log-prob pass has no KL and no CoT gradient weight")
        calls.append(1)
        return StepLogProbs(logp=naive_log_probs(model, rollout, representer), mask=rollout.gen_mask)

    with mock.patch.object(module_mod, "rollout_log_probs", naive):
        yield
    if not calls:
        raise SystemExit(
            "soft_tokens.training.module no longer calls rollout_log_probs: update bench/_module_step.py"
        )


class RandomReward:
    """Seeded random rewards (30 x N(0, 1)) in the reward's interface; the module makes the advantages."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def score_batch(self, completions: list[str], golds: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rewards = 30.0 * torch.randn(len(completions), generator=self.generator)
        return rewards, torch.zeros(len(completions), dtype=torch.bool)


def fit(
    module: SoftTokensModule, questions: list[str], device: torch.device, steps: int, callback: L.Callback
) -> None:
    """`steps` training steps of the module on one batch of questions, as train.py's Trainer runs them."""
    rows = [{"question": q, "answer": "0"} for q in questions]
    loader = DataLoader(rows, batch_size=len(rows), collate_fn=lambda b: {k: [r[k] for r in b] for k in b[0]})
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="32-true",  # no autocast, no conversion: the model runs in its own dtype
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[callback],
    )
    trainer.fit(module, train_dataloaders=loader)


class StepClock(L.Callback):
    """Wall and process CPU seconds of every training step (CUDA work waited for), and its logged loss."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.wall, self.cpu, self.loss = device, [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])
        self.loss.append(float(trainer.callback_metrics["train/loss"]))


class StepMemory(L.Callback):
    """Peak memory of the second training step's log-prob pass (the first step warms up), above what is held
    when it starts (model, optimizer state, the step's rollout): up to the backward, and to the backward's end."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.steps, self.meter, self.result = device, 0, None, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps != 2:
            return
        log_probs, backward = module_mod.rollout_log_probs, pl_module.manual_backward

        def entered(*args, **kwargs):
            self.meter = self.meter or PeakMeter(self.device)
            return log_probs(*args, **kwargs)

        def probed(loss, *args, **kwargs):
            self.result.setdefault("fwd_peak_MB", self.meter.peak_MB())
            backward(loss, *args, **kwargs)
            self.result.update(step_peak_MB=self.meter.peak_MB(), method=self.meter.method)

        self._patch = mock.patch.object(module_mod, "rollout_log_probs", entered)
        self._patch.start()
        pl_module.manual_backward = probed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.steps == 2:
            self._patch.stop()
            del pl_module.manual_backward  # the method again

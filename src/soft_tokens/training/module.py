"""The LightningModule: a policy (and, when needed, a frozen reference) trained by RL on its own rollouts.

One training step (docs/method.md, "One training step"): G rollouts of each of the B prompts (no gradient, eval
mode) -> rewards -> advantages -> for each of `num_iterations` passes: teacher-forced log-probs of every
micro-batch -> loss -> backward (gradients accumulate over the micro-batches) -> clip -> one optimizer step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.profiler import record_function
from transformers import PreTrainedModel

from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.estimators.base import Estimator, StepTotals, check_group_size
from soft_tokens.models import (
    PROBE_QUESTIONS,
    AdapterDisabled,
    CardFacts,
    ModelConfig,
    adapter_keys,
    add_adapters,
    is_peft,
    load_adapter_state,
    load_lightning_checkpoint,
    merged_copy,
    monitored_score,
    policy_state_dict,
    save_tokenizer,
    write_model_card,
)
from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine, mix_seed, rollout_log_probs
from soft_tokens.training.optim import OptimConfig, apply_changed_settings, build_optimizer
from soft_tokens.training.optimizer_step import (
    NonFiniteLossError,
    clip_and_step,
    configure_zero_clipping,
    non_finite_message,
    zero_engine,
    zero_micro_batch,
    zero_step,
)
from soft_tokens.training.step_metrics import Group, step_metrics

log = logging.getLogger(__name__)


class SoftTokensModule(L.LightningModule):
    """Policy + optional reference model, with interchangeable representer, estimator and reward."""

    def __init__(
        self,
        model: ModelConfig,
        representer: TokenRepresenter,
        estimator: Estimator,
        reward: Any,
        prompt: PromptBuilder,
        rollout: RolloutConfig,
        optim: OptimConfig,
        samples_per_prompt: int = 8,
        rollout_micro_batch: int | None = None,
        logprob_chunk_size: int = 1024,
        max_bad_steps: int = 3,
        seed: int = 0,
        freeze_embeddings: bool = False,
        cot_grad_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not representer.trainable:
            raise ValueError(
                f"representer {representer.name!r} ({type(representer).__name__}) is a training-free inference "
                "setting with no log-probability: train with representer=hard, soft, fuzzy or gumbel, and run "
                "this one in evaluate.py or as a math_eval setting"
            )
        check_group_size(estimator, int(samples_per_prompt), rollout_micro_batch)
        self.automatic_optimization = False
        self.model_cfg = model
        self.representer = representer
        self.estimator = estimator
        self.reward = reward
        self.prompt = prompt
        self.rollout_cfg = rollout
        self.optim_cfg = optim
        self.G = int(samples_per_prompt)
        self.rollout_micro_batch = rollout_micro_batch
        self.logprob_chunk_size = logprob_chunk_size
        self.max_bad_steps = max_bad_steps
        self.seed = seed
        self.freeze_embeddings = freeze_embeddings
        self.cot_grad_weight = float(cot_grad_weight)
        self.tokenizer = model.load_tokenizer()
        self.engine = RolloutEngine(self.tokenizer, rollout)
        self.policy: PreTrainedModel | None = None
        self._ref: list[PreTrainedModel] = []  # a list keeps the reference out of state_dict and optimizer
        self.bad_steps = 0
        self.generator: torch.Generator | None = None
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        hparams = {"model": asdict(model), "rollout": asdict(rollout), "optim": asdict(optim)}
        hparams["optim"]["betas"] = list(optim.betas)
        hparams.update(samples_per_prompt=self.G, rollout_micro_batch=rollout_micro_batch, seed=seed)
        hparams.update(freeze_embeddings=freeze_embeddings, cot_grad_weight=self.cot_grad_weight)
        hparams.update(representer=repr(representer), estimator=repr(estimator))
        self.save_hyperparameters(hparams, logger=False)

    # ----- models -----
    def setup(self, stage: str) -> None:
        """Before the strategy builds its engine: DeepSpeed clips to module.optim.max_grad_norm."""
        configure_zero_clipping(self.trainer, self.optim_cfg.max_grad_norm)

    def configure_model(self) -> None:
        """Load the policy (and the frozen reference when the estimator needs one); Lightning calls this."""
        if self.policy is not None:
            return
        self.policy = add_adapters(self.model_cfg.load_model(), self.model_cfg.lora).train()
        if self.freeze_embeddings:  # E, and with it a tied LM head
            self.policy.get_input_embeddings().weight.requires_grad_(False)
        if self.estimator.needs_reference and not is_peft(self.policy):  # LoRA: see ref_model
            self._ref = [self.model_cfg.load_model().eval().requires_grad_(False)]

    @property
    def ref_model(self) -> PreTrainedModel | None:
        """The frozen reference model, on the policy's device; None unless the estimator needs it.

        With LoRA it is the policy itself with its adapters disabled: the same weights, no second copy.
        """
        if self.estimator.needs_reference and is_peft(self.policy):
            return AdapterDisabled(self.policy)
        if not self._ref:
            return None
        if self._ref[0].device != self.device:
            self._ref[0].to(self.device)
        return self._ref[0]

    def format_prompt(self, question: str) -> str:
        return self.prompt(question, self.tokenizer)

    def rollout_generator(self) -> torch.Generator:
        """The rollout sampling stream: seeded from (seed, rank), on the policy's device."""
        if self.generator is None or self.generator.device != self.device:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(mix_seed(self.seed, self.global_rank))
        return self.generator

    # ----- training -----
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        max_steps = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 1000
        return build_optimizer(self.optim_cfg, params, max_steps)

    @torch.no_grad()
    def generate_rollouts(self, questions: list[str]) -> list[Group]:
        """G rollouts of each question under the training representer, per micro-batch of whole groups."""
        micro = self.rollout_micro_batch or len(questions)
        self.policy.eval()
        groups = []
        for i in range(0, len(questions), micro):
            prompts = [self.format_prompt(q) for q in questions[i : i + micro] for _ in range(self.G)]
            with record_function("rollout"):
                ro = self.engine.generate(
                    self.policy, prompts, self.representer, generator=self.rollout_generator()
                )
            groups.append(Group(ro))
        self.policy.train()
        return groups

    @torch.no_grad()
    def score(self, groups: list[Group], answers: list[str]) -> None:
        """Each group's rewards and correctness [b, G] against the gold answers of its questions."""
        golds = iter(answers)
        for grp in groups:
            b = len(grp.rollout.completions) // self.G
            mine = [next(golds) for _ in range(b)]
            with record_function("reward"):
                rewards, correct = self.reward.score_batch(
                    grp.rollout.completions, [a for a in mine for _ in range(self.G)]
                )
            grp.rewards = rewards.to(self.device).view(b, self.G)
            grp.correct = correct.to(self.device).view(b, self.G)

    def assign_advantages(self, groups: list[Group]) -> None:
        """Each group's advantages [b * G], from the rewards of the whole (global) batch."""
        advantages = self.batch_advantages(torch.cat([g.rewards for g in groups]))
        for grp, adv in zip(groups, advantages.split([len(g.rewards) for g in groups])):
            grp.advantages = adv.reshape(-1)

    def batch_advantages(self, rewards: Tensor) -> Tensor:
        """Advantages [B, G] of this rank's rewards, from the estimator run on every rank's rewards at once
        (so batch-wide statistics, GRPO's scale_rewards=batch, cover the whole global batch)."""
        world = self.trainer.world_size
        if world == 1:
            return self.estimator.advantages(rewards)
        everyone = self.all_gather(rewards).reshape(world * len(rewards), self.G)  # ranks hold equal B
        start = self.global_rank * len(rewards)
        return self.estimator.advantages(everyone)[start : start + len(rewards)]

    def training_step(self, batch: dict[str, list], batch_idx: int) -> None:
        """Rollout -> reward -> advantages -> teacher-forced log-probs -> loss -> backward -> optimizer step."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        groups = self.generate_rollouts(batch["question"])
        self.score(groups, batch["answer"])
        self.assign_advantages(groups)
        totals = self.step_totals(groups)
        old_logp: list[Tensor] | None = None
        for it in range(self.estimator.num_iterations):
            loss, metrics, logp = self.accumulate_gradients(groups, totals, old_logp)
            if it == 0 and self.estimator.num_iterations > 1:
                old_logp = logp  # the pre-update policy: no optimizer step has run yet
            with record_function("optimizer"):
                self._optimizer_step(opt, sched, loss)
        self._log_step(groups, metrics, loss)

    def accumulate_gradients(
        self, groups: list[Group], totals: StepTotals, old_logp: list[Tensor] | None = None
    ) -> tuple[Tensor, list[dict], list[Tensor]]:
        """Back-propagate the step's loss one micro-batch at a time: (the step's loss, each micro-batch's
        metrics, each micro-batch's detached log-probs)."""
        loss, metrics, logps = torch.zeros((), device=self.device), [], []
        engine = zero_engine(self.trainer)
        for k, grp in enumerate(groups):
            with record_function("logprobs"):
                lp = rollout_log_probs(
                    self.policy,
                    grp.rollout,
                    self.representer,
                    chunk_size=self.logprob_chunk_size,
                    ref_model=self.ref_model,
                    cot_grad_weight=self.cot_grad_weight,
                )
                old = old_logp[k] if old_logp is not None else None
                # The step's totals make each part this micro-batch's share: the parts sum to the unsplit loss.
                part, m = self.estimator.loss(lp.logp, grp.advantages, lp.mask, old, lp.kl, totals)
            with record_function("backward"):
                last = k == len(groups) - 1
                self.manual_backward(part if engine is None else zero_micro_batch(engine, part, last))
            loss = loss + part.detach()
            metrics.append(m)
            logps.append(lp.logp.detach())
        return loss, metrics, logps

    def step_totals(self, groups: list[Group]) -> StepTotals:
        """Sequences and log-prob-carrying steps of the whole optimisation step (micro-batches; ranks for dapo)."""
        n = torch.tensor(float(sum(int(g.rollout.gen_mask.sum()) for g in groups)), device=self.device)
        everywhere = n
        if self.trainer.world_size > 1:
            everywhere = self.trainer.strategy.reduce(n.clone(), reduce_op="sum")
        # DDP averages gradients over ranks, so each rank's share of the global normaliser is n / world.
        return StepTotals(
            sequences=sum(len(g.advantages) for g in groups),
            tokens=n.clamp(min=1),
            global_tokens=(everywhere / self.trainer.world_size).clamp(min=1),
            max_length=self.rollout_cfg.max_cot_tokens + self.rollout_cfg.answer_max_tokens,
        )

    def _optimizer_step(self, opt, sched, loss: Tensor) -> None:
        """Clip and step, or skip the step when the loss or the gradient is not finite."""
        engine = zero_engine(self.trainer)
        if engine is not None:  # ZeRO clips and skips a step with a non-finite gradient itself
            applied, grad_norm = zero_step(engine, opt)
        else:
            max_norm = self.optim_cfg.max_grad_norm
            applied, grad_norm = clip_and_step(opt, self.policy.parameters(), max_norm, loss, self.trainer)
        if applied:
            sched.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            log.warning(
                "step %d: non-finite loss (%s) or grad norm (%s); update skipped (%d in a row)",
                self.global_step,
                float(loss),
                grad_norm,
                self.bad_steps,
            )
            if self.bad_steps >= self.max_bad_steps:
                raise NonFiniteLossError(non_finite_message(self.trainer, self.bad_steps))
        # Every step, so the curve falls back to 0 after a skipped step: skipped steps in a row, up to this one.
        self.log("train/skipped_steps", float(self.bad_steps), on_step=True)
        opt.zero_grad(set_to_none=True)
        self.log("train/grad_norm", grad_norm if math.isfinite(grad_norm) else -1.0, on_step=True)

    def _log_step(self, groups: list[Group], metrics: list[dict], loss: Tensor) -> None:
        lr = self.lr_schedulers().get_last_lr()[0]
        values = step_metrics(groups, metrics, loss, lr, self.trainer.world_size)
        values = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}
        effective = values.pop("train/effective_batch")  # the same on every rank: not synchronised
        self.log_dict(values, on_step=True, sync_dist=self.trainer.world_size > 1)
        self.log("train/effective_batch", effective, on_step=True)

    # ----- checkpoints -----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Also save the rollout random stream and the non-finite streak, so a resumed run continues exactly."""
        checkpoint["rollout_rng"] = self.rollout_generator().get_state()
        checkpoint["bad_steps"] = self.bad_steps
        if is_peft(self.policy):  # LoRA: only the adapters; the base weights come from the model config
            keep = adapter_keys(self.policy, "policy.")
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {
                k: v for k, v in state.items() if k in keep or not k.startswith("policy.")
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.bad_steps = int(checkpoint.get("bad_steps", 0))
        if is_peft(self.policy):  # LoRA: the base weights the checkpoint left out are the loaded ones
            checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}
        self._rng_to_restore = checkpoint.get("rollout_rng")
        parent = checkpoint.get("hyper_parameters") or {}
        # A fork with a new seed draws new rollouts (a resume cannot change the seed: it keeps its stream).
        if "seed" in parent and int(parent["seed"]) != self.seed:
            log.info(
                "rollout stream seeded from seed=%d, not restored (the checkpoint's: seed=%s)",
                self.seed,
                parent["seed"],
            )
            self._rng_to_restore, self.generator = None, None
        self._parent_optim = parent.get("optim")

    def on_train_start(self) -> None:
        """After Lightning restored a checkpoint: the rollout stream, and a fork's changed optimizer settings."""
        state = getattr(self, "_rng_to_restore", None)
        if state is not None:
            self.rollout_generator().set_state(state.cpu())
            self._rng_to_restore = None
        before, self._parent_optim = getattr(self, "_parent_optim", None), None
        if before:
            opt = self.optimizers(use_pl_optimizer=False)
            changed = apply_changed_settings(opt, self.lr_schedulers(), before, self.optim_cfg)
            if changed:
                log.info(
                    "optimizer settings of the checkpoint replaced by this run's: %s", ", ".join(changed)
                )

    # ----- export -----
    def save_policy(self, path: str) -> None:
        """Write the policy (LoRA adapters merged in) with save_pretrained (safetensors), loadable by plain
        transformers; its tokenizer, with the training prompt as chat template; and a model card, README.md."""
        model = merged_copy(self.policy) if is_peft(self.policy) else self.policy
        model.save_pretrained(path, safe_serialization=True)
        save_tokenizer(self.tokenizer, self.prompt, path)
        write_model_card(path, self.card_facts())

    def card_facts(self) -> CardFacts:
        """What the model card states: the loaded checkpoint's step and score if one was loaded, else now's."""
        metrics = self._trainer.callback_metrics if self._trainer is not None else {}
        loaded = getattr(self, "_loaded_from", None)
        step, acc = loaded or (self.global_step, metrics.get("val/accuracy"))
        lora = self.model_cfg.lora
        return CardFacts(
            base_model=str(self.model_cfg.name_or_path),
            representer=repr(self.representer),
            estimator=repr(self.estimator),
            global_step=int(step),
            val_accuracy=None if acc is None else float(acc),
            lora=asdict(lora) if lora.enabled else None,
            example_prompt=self.format_prompt(PROBE_QUESTIONS[0]),
        )

    def load_policy_from_checkpoint(self, ckpt_path: str) -> None:
        """Load the policy weights (or LoRA adapters) of a Lightning checkpoint file (weights_only) into the policy."""
        ckpt = load_lightning_checkpoint(ckpt_path)
        state = policy_state_dict(ckpt)
        if is_peft(self.policy):
            load_adapter_state(self.policy, state, ckpt_path)
        else:
            self.policy.load_state_dict(state)
        self._loaded_from = (int(ckpt.get("global_step", 0)), monitored_score(ckpt, "val/accuracy"))

"""The evaluation run of evaluate.py: load a policy, solve a test set under the inference grid, report.

docs/method.md, "Inference settings and metrics": each model is run under six inference settings
(hard / soft / fuzzy CoT tokens, greedy or sampled; the answer is always greedy) and scored by greedy
pass@1, sample pass@1 and sample pass@k, each with its standard error over problems. Optionally it also
scores out-of-domain multiple choice (HellaSwag, ARC, MMLU). The run folder gets results.json (everything,
read by scripts/report.py), results.csv, results.md and PNG plots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from soft_tokens.configured import instantiate
from soft_tokens.data.types import Example
from soft_tokens.eval.options import check_eval_options
from soft_tokens.eval.results import (
    EvalResults,
    SettingResult,
    accuracy_se,
    completion_writer,
    fraction_summary,
    summarize,
    write_results,
)
from soft_tokens.eval.solve import EvalSetting, Solutions, build_settings, solve
from soft_tokens.models.checkpoints import load_policy
from soft_tokens.models.loading import ModelConfig
from soft_tokens.models.model_files import check_chat_template
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.seeding import mix_seed

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """`auto`: cuda when available, else cpu; any other name as torch.device reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def solve_settings(
    model: PreTrainedModel,
    engine: RolloutEngine,
    prompt: Callable[[str], str],
    examples: list[Example],
    settings: list[EvalSetting],
    score: Callable[[list[str], list[str]], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    on_solutions: Callable[[EvalSetting, Solutions], None] | None = None,
) -> list[SettingResult]:
    """Solve the examples under each setting (with a rich progress bar) and summarise each."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    results = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        tasks = {
            ev.name: bar.add_task(f"{ev.name} (x{ev.setting.num_samples})", total=len(examples))
            for ev in settings
        }
        for i, ev in enumerate(settings):
            gen = torch.Generator(device=model.device).manual_seed(mix_seed(seed, i))
            start = time.perf_counter()
            sol = solve(
                model,
                engine,
                prompt,
                examples,
                ev.setting,
                score,
                batch_size=batch_size,
                generator=gen,
                progress=lambda n, t=tasks[ev.name]: bar.advance(t, n),
            )
            res = summarize(ev, sol, time.perf_counter() - start)
            results.append(res)
            log.info("%s: %s (%.0f s)", ev.name, fraction_summary(res), res.seconds)
            if on_solutions is not None:
                on_solutions(ev, sol)
    return results


def run_evaluation(cfg: DictConfig) -> EvalResults:
    """Run the evaluation a composed `conf/evaluate.yaml` describes and write its run folder."""
    check_eval_options(cfg)  # evaluate.py checks them before torch loads; a direct call checks them here
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model_cfg: ModelConfig = instantiate(cfg.model)
    model, tokenizer, described = load_policy(model_cfg, cfg.checkpoint)
    model.to(device)
    log.info("evaluating %s on %s", described, device)

    examples = _examples(cfg)
    rollout_cfg: RolloutConfig = instantiate(cfg.rollout)
    engine = RolloutEngine(tokenizer, rollout_cfg)
    prompt_builder = instantiate(cfg.prompt)
    check_chat_template(lambda q: prompt_builder(q, tokenizer), described)
    reward = instantiate(cfg.reward)
    settings = build_settings(cfg.settings, cfg.get("only"))
    hook = completion_writer(out_dir, examples, cfg.save_completions) if cfg.save_completions else None
    results = solve_settings(
        model,
        engine,
        lambda q: prompt_builder(q, tokenizer),
        examples,
        settings,
        reward.score_batch,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=cfg.progress,
        on_solutions=hook,
    )
    ood = score_ood(model, tokenizer, cfg.ood) if cfg.get("ood") and cfg.ood.enabled else {}
    res = EvalResults(
        name=str(cfg.name),
        model=described,
        data=_data_name(cfg),
        split=str(cfg.split),
        n_problems=len(examples),
        settings=results,
        ood=ood,
        meta={
            "checkpoint": None if cfg.checkpoint is None else str(cfg.checkpoint),
            "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
            "max_cot_tokens": rollout_cfg.max_cot_tokens,
            "answer_max_tokens": rollout_cfg.answer_max_tokens,
            "seed": int(cfg.seed),
            "device": str(device),
        },
    )
    paths = write_results(res, out_dir)
    log.info("results written to %s", paths["results.md"])
    return res


def _examples(cfg: DictConfig) -> list[Example]:
    """The problems to solve: the configured split of the data config, its first `max_examples`."""
    examples = instantiate(cfg.data).examples(cfg.split)
    if cfg.max_examples is not None:
        examples = examples[: cfg.max_examples]
    if not examples:
        raise ValueError(f"the {cfg.split!r} split of the data config has no examples")
    return examples


def _data_name(cfg: DictConfig) -> str:
    """The data group's choice (e.g. gsm8k) when run by Hydra, else the split's path or target."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["data"])
    except (ValueError, KeyError):
        split = cfg.data.get(cfg.split) or {}
        return str(split.get("path") or split.get("_target_", "?"))


def score_ood(model: PreTrainedModel, tokenizer, ood_cfg: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Accuracy and per-token NLL of the correct choice on each configured multiple-choice dataset."""
    from soft_tokens.eval.ood import load_choice_items, score_choices

    out = {}
    for name, spec in ood_cfg["datasets"].items():
        if spec is None:
            continue
        items = load_choice_items(**dict(spec))
        res = score_choices(model, tokenizer, items, batch_size=int(ood_cfg.get("batch_size", 16)))
        out[str(name)] = {"accuracy": res.accuracy, "nll": res.mean_nll, "n_items": float(len(items))}
        if len(items) > 1:
            out[str(name)]["accuracy_se"] = accuracy_se(res.accuracy, len(items))
        log.info("ood %s: accuracy %.3f, nll %.3f (%d items)", name, res.accuracy, res.mean_nll, len(items))
    return out

"""The evaluation run behind evaluate.py: load a policy, solve a test set under the inference grid, report.

docs/method.md, "Inference settings and metrics": each model is run under six inference settings
(hard / soft / fuzzy CoT tokens, greedy or sampled; the answer is always greedy) and scored by greedy
pass@1, sample pass@1 and sample pass@k, each with its standard error over problems. Optionally it also
scores out-of-domain multiple choice (HellaSwag, ARC, MMLU). The run folder gets results.json (everything,
read by scripts/report.py), results.csv, results.md and PNG plots.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from soft_tokens.data.types import Example
from soft_tokens.evaluation import InferenceSetting, Solutions, solve
from soft_tokens.lora import LoraSettings, is_adapter_state, merge_adapter_state
from soft_tokens.metrics import PassAtK, default_k_values
from soft_tokens.models import ModelConfig, check_local_path
from soft_tokens.representers.base import TokenRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- inference settings


@dataclass
class EvalSetting:
    """An inference setting to run, with the k of its pass@k.

    `accuracy_key`, used by the math-eval callback, logs pass@1 under that metric name instead.
    """

    setting: InferenceSetting
    k_values: list[int]
    accuracy_key: str | None = None

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def greedy(self) -> bool:
        return bool(self.setting.representer.greedy)


def build_setting(name: str, spec: Any) -> EvalSetting:
    """An EvalSetting from a representer, or from {representer, num_samples, k_values} (configs or objects).

    k_values defaults to 1, the powers of two below num_samples, and num_samples.
    """
    if isinstance(spec, TokenRepresenter):
        return EvalSetting(InferenceSetting(name, spec, 1), [1])
    if not isinstance(spec, Mapping) or "representer" not in spec:
        raise TypeError(
            f"inference setting {name!r}: expected a representer or {{representer, num_samples}}, got {spec!r:.200}"
        )
    rep = spec["representer"]
    if not isinstance(rep, TokenRepresenter):
        rep = instantiate(rep)
    n = int(spec.get("num_samples") or 1)
    ks = sorted({int(k) for k in (spec.get("k_values") or default_k_values(n))})
    if ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"inference setting {name!r}: k_values {ks} must lie in 1..num_samples={n}")
    return EvalSetting(InferenceSetting(name, rep, n), ks)


def build_settings(specs: Mapping[str, Any], only: Sequence[str] | None = None) -> list[EvalSetting]:
    """The settings of a config mapping (name -> spec), in order, keeping `only` those names if given."""
    names = list(specs)
    if only:
        unknown = [n for n in only if n not in specs]
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}; configured: {names}")
        names = [n for n in names if n in set(only)]
    return [build_setting(str(n), specs[n]) for n in names if specs[n] is not None]


# ----------------------------------------------------------------------------- loading a policy


def load_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read with plain torch.load(weights_only=True): tensors and plain types only.

    The project's checkpoints hold nothing else (their hyper-parameters are dicts). A checkpoint that
    pickles any other object (a class, a function to call) is refused, never imported; so are old
    checkpoints that pickled config dataclasses.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ValueError(f"{path}: {'an empty file' if path.is_file() else 'no such file'}, not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: the checkpoint pickles objects other than tensors and plain types; refusing to load it "
            f"(checkpoints written before this version pickled config classes: export the policy with "
            f"save_pretrained and pass that folder as checkpoint=...). torch said: {str(err).splitlines()[0]}"
        ) from None
    except (EOFError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {err}") from None


def policy_state_dict(checkpoint: Mapping[str, Any], prefix: str = "policy.") -> dict[str, torch.Tensor]:
    """The policy's weights in a Lightning checkpoint: the `policy.*` keys of its state_dict, prefix removed."""
    state = checkpoint.get("state_dict", checkpoint)
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"no {prefix}* weights in the checkpoint (keys: {sorted(state)[:5]}...)")
    return out


def _with(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of a ModelConfig with the changes its fields know about."""
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if k in names})


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def load_policy(
    model_cfg: ModelConfig, checkpoint: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(model in eval mode, tokenizer, description) for `checkpoint`.

    checkpoint: None -> the model of `model_cfg` (the base model); a `.ckpt` file -> a Lightning checkpoint
    of this project, whose `policy.*` weights are loaded into the model built from `model_cfg` (which must
    be the training run's model); a Hugging Face folder (e.g. a run's `policy/`), or a training run folder
    holding one in `policy/` -> loaded with from_pretrained, with its own tokenizer if it has one; any other
    name -> a hub model id, loaded as from_pretrained loads it (a LoRA checkpoint's adapters are merged).
    """
    model_cfg = _with(model_cfg, gradient_checkpointing=False)
    if checkpoint is None:
        return model_cfg.load_model().eval(), model_cfg.load_tokenizer(), str(model_cfg.name_or_path)
    path = Path(checkpoint)
    if path.is_file():
        ckpt = load_lightning_checkpoint(path)
        model = model_cfg.load_model()
        state = policy_state_dict(ckpt)
        if is_adapter_state(state):  # a LoRA run's checkpoint: its adapters, merged into the base weights
            model = merge_adapter_state(model, state, trained_lora(ckpt, model_cfg), str(path))
            return model.eval(), model_cfg.load_tokenizer(), str(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            trained = (ckpt.get("hyper_parameters") or {}).get("model")
            raise RuntimeError(
                f"{path}: the policy weights do not fit the model built from model.name_or_path="
                f"{model_cfg.name_or_path} (the checkpoint was trained from {getattr(trained, 'name_or_path', '?')}"
                "): pass the training run's model config (model=... / model.name_or_path=...)"
            ) from err
        return model.eval(), model_cfg.load_tokenizer(), str(path)
    if path.is_dir() and not _is_hf_folder(path) and _is_hf_folder(path / "policy"):
        path = path / "policy"
    if not path.exists():
        return load_hub_policy(model_cfg, str(checkpoint))
    if not _is_hf_folder(path):
        raise FileNotFoundError(
            f"checkpoint={checkpoint}: neither a Lightning .ckpt file nor a Hugging Face model folder"
        )
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    cfg = _with(
        model_cfg,
        name_or_path=str(path),
        tokenizer=str(path) if has_tokenizer else (model_cfg.tokenizer or model_cfg.name_or_path),
        random_init=False,
        revision=None,
    )
    return cfg.load_model().eval(), cfg.load_tokenizer(), str(path)


def load_hub_policy(
    model_cfg: ModelConfig, name: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """A hub model id loaded as from_pretrained loads it (from the Hugging Face cache when offline), its own tokenizer."""
    check_local_path(name, "checkpoint")
    cfg = _with(model_cfg, name_or_path=name, tokenizer=name, random_init=False, revision=None)
    try:
        return cfg.load_model().eval(), cfg.load_tokenizer(), name
    except OSError as err:
        from huggingface_hub import constants

        offline = (
            " (HF_HUB_OFFLINE is set: nothing is downloaded)"
            if constants.HF_HUB_OFFLINE
            else " or on the hub"
        )
        raise FileNotFoundError(
            f"checkpoint={name}: no such file or folder, and no model {name!r} in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}{offline}. from_pretrained said: {str(err).splitlines()[0]}"
        ) from err


def trained_lora(checkpoint: Mapping[str, Any], model_cfg: ModelConfig) -> LoraSettings:
    """The LoRA settings a checkpoint was trained with (its hyper-parameters), else those of `model_cfg`."""
    trained = (checkpoint.get("hyper_parameters") or {}).get("model")
    lora = trained.get("lora") if isinstance(trained, Mapping) else getattr(trained, "lora", None)
    settings = LoraSettings.of(lora)
    return settings if settings.enabled else model_cfg.lora


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------- results


@dataclass
class SettingResult:
    """Scores of one inference setting on the test set."""

    name: str
    representer: str
    greedy: bool
    num_samples: int
    n_problems: int
    pass_at_k: dict[int, float]
    mean_reward: float
    mean_cot_length: float
    mean_entropy: float
    entropy_profile: list[float]
    seconds: float
    pass_at_k_se: dict[int, float] = field(default_factory=dict)  # standard error over problems
    entropy_rows: list[int] = field(default_factory=list)  # rows behind each position of entropy_profile

    @property
    def pass_at_1(self) -> float:
        return self.pass_at_k[1]

    def se(self, k: int) -> float:
        """Standard error of pass@k over problems (nan when unknown)."""
        return self.pass_at_k_se.get(k, math.nan)


@dataclass
class EvalResults:
    """Everything an evaluation run measured, plus what it ran on."""

    name: str
    model: str
    data: str
    split: str
    n_problems: int
    settings: list[SettingResult]
    ood: dict[str, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for s in out["settings"]:
            for key in ("pass_at_k", "pass_at_k_se"):
                s[key] = {str(k): None if math.isnan(v) else v for k, v in s[key].items()}
            s["entropy_profile"] = [None if math.isnan(v) else v for v in s["entropy_profile"]]
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> EvalResults:
        settings = []
        for s in data["settings"]:
            s = dict(s)
            for key in ("pass_at_k", "pass_at_k_se"):  # files written before standard errors lack them
                s[key] = {int(k): math.nan if v is None else float(v) for k, v in (s.get(key) or {}).items()}
            s["entropy_profile"] = [math.nan if v is None else float(v) for v in s["entropy_profile"]]
            settings.append(SettingResult(**s))
        return EvalResults(**{**data, "settings": settings})


def summarize(ev: EvalSetting, sol: Solutions, seconds: float) -> SettingResult:
    """A SettingResult from the solutions of one setting."""
    pak = PassAtK(ev.k_values, with_se=True)
    if sol.correct.shape[0]:
        pak.update(sol.correct)
    values = {k: float(v) for k, v in pak.compute().items()} if sol.correct.numel() else {}
    pass_k = {int(k.split("@")[1]): v for k, v in values.items() if not k.endswith("_se")}
    pass_se = {int(k.split("@")[1].removesuffix("_se")): v for k, v in values.items() if k.endswith("_se")}
    profile = sol.entropy_profile()
    count = sol.entropy_count.sum()
    return SettingResult(
        name=ev.name,
        representer=repr(ev.setting.representer),
        greedy=ev.greedy,
        num_samples=ev.setting.num_samples,
        n_problems=int(sol.correct.shape[0]),
        pass_at_k=pass_k or dict.fromkeys(ev.k_values, 0.0),
        mean_reward=float(sol.rewards.float().mean()) if sol.rewards.numel() else 0.0,
        mean_cot_length=float(sol.cot_lengths.float().mean()) if sol.cot_lengths.numel() else 0.0,
        mean_entropy=float(sol.entropy_sum.sum() / count) if count > 0 else math.nan,
        entropy_profile=profile.tolist(),
        seconds=seconds,
        pass_at_k_se=pass_se or dict.fromkeys(ev.k_values, math.nan),
        entropy_rows=[int(c) for c in sol.entropy_count.tolist()],
    )


def run_settings(
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
            gen = torch.Generator(device=model.device).manual_seed(seed * 1_000_003 + i)
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


def fraction_summary(res: SettingResult) -> str:
    """'pass@1=0.350 ± 0.076  pass@4=...': the log line's scores, fractions as in every logged metric."""
    parts = []
    for k, v in res.pass_at_k.items():
        se = res.se(k)
        parts.append(f"pass@{k}={v:.3f}" + ("" if math.isnan(se) else f" ± {se:.3f}"))
    return "  ".join(parts)


def accuracy_se(accuracy: float, n: int) -> float:
    """Standard error over n items of a fraction correct: sample std of the 0/1 scores / sqrt(n) (nan: n < 2)."""
    return math.sqrt(accuracy * (1 - accuracy) / (n - 1)) if n > 1 else math.nan


# ----------------------------------------------------------------------------- writing a run folder


def _pct(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def percent_with_se(v: float | None, se: float | None) -> str:
    """A fraction in % with its standard error, e.g. '35.0 ± 7.6' ('' when missing, no ± when unknown)."""
    value, error = _pct(v), _pct(se)
    return f"{value} ± {error}" if value and error else value


def results_table(res: EvalResults) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the per-setting results: pass@k in [0, 1], their standard errors, the diagnostics."""
    ks = sorted({k for s in res.settings for k in s.pass_at_k})
    header = ["setting", "decoding", "num_samples", "n_problems", *[f"pass@{k}" for k in ks]]
    header += [f"pass@{k}_se" for k in ks]
    header += ["mean_reward", "mean_cot_length", "mean_entropy", "seconds"]
    rows = []
    for s in res.settings:
        se = [s.se(k) if k in s.pass_at_k else None for k in ks]
        rows.append(
            [s.name, "greedy" if s.greedy else "sample", s.num_samples, s.n_problems]
            + [s.pass_at_k.get(k) for k in ks]
            + [None if v is not None and math.isnan(v) else v for v in se]
            + [s.mean_reward, s.mean_cot_length, s.mean_entropy, s.seconds]
        )
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_markdown(res: EvalResults) -> str:
    header, rows = results_table(res)
    n_pass = sum(h.startswith("pass@") and not h.endswith("_se") for h in header)
    shown = []
    for row in rows:
        values, errors = row[4 : 4 + n_pass], row[4 + n_pass : 4 + 2 * n_pass]
        passes = [percent_with_se(v, se) for v, se in zip(values, errors)]
        mean_reward, cot_len, entropy, secs = row[4 + 2 * n_pass :]
        shown.append(
            [*row[:4], *passes, f"{mean_reward:.1f}", f"{cot_len:.1f}", f"{entropy:.3f}", f"{secs:.0f}"]
        )
    head = [*header[:4], *[f"{h} (%)" for h in header[4 : 4 + n_pass]], *header[4 + 2 * n_pass :]]
    parts = [
        f"# Evaluation: {res.name}",
        "",
        f"- model: `{res.model}`",
        f"- data: {res.data}, split `{res.split}`, {res.n_problems} problems",
        "- answers decoded greedily; pass@k is the unbiased estimator over each setting's samples, shown as",
        f"  mean ± one standard error over the {res.n_problems} problems (one problem is"
        f" {100 / max(res.n_problems, 1):.1f} points)",
        "",
        markdown_table(head, shown),
        "",
    ]
    if res.ood:
        parts += [
            "## Out of domain (multiple choice, log-likelihood of each choice)",
            "",
            "Accuracy as mean ± one standard error over the items.",
            "",
            markdown_table(
                ["dataset", "items", "accuracy (%)", "NLL / token of the correct choice"],
                [
                    [
                        k,
                        int(v["n_items"]),
                        percent_with_se(v["accuracy"], v.get("accuracy_se")),
                        f"{v['nll']:.3f}",
                    ]
                    for k, v in res.ood.items()
                ],
            ),
            "",
        ]
    parts += ["![pass@k](pass_at_k.png)", "", "![CoT entropy](cot_entropy.png)", ""]
    return "\n".join(parts)


def write_results(res: EvalResults, out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, results.csv, results.md, pass_at_k.png and cot_entropy.png; return their paths."""
    from soft_tokens.plots import entropy_figure, pass_at_k_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.json", "results.csv", "results.md")}
    paths["results.json"].write_text(json.dumps(res.to_json(), indent=2))
    header, rows = results_table(res)
    with paths["results.csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    paths["results.md"].write_text(results_markdown(res))
    curves = {s.name: s.pass_at_k for s in res.settings if not s.greedy}
    greedy = {s.name: s.pass_at_1 for s in res.settings if s.greedy}
    errors = {s.name: s.pass_at_k_se for s in res.settings}
    title = f"pass@k ± 1 s.e., {res.name} on {res.data} ({res.n_problems} problems)"
    fig = pass_at_k_figure(curves, greedy, title=title, errors=errors)
    paths["pass_at_k.png"] = out / "pass_at_k.png"
    fig.savefig(paths["pass_at_k.png"])
    fig = entropy_figure(
        {s.name: s.entropy_profile for s in res.settings},
        title=f"CoT entropy, {res.name}",
        rows={s.name: s.entropy_rows for s in res.settings if s.entropy_rows},
    )
    paths["cot_entropy.png"] = out / "cot_entropy.png"
    fig.savefig(paths["cot_entropy.png"])
    return paths


def completion_writer(out_dir: Path, examples: list[Example], max_samples: int):
    """An on_solutions hook writing completions/<setting>.jsonl (at most max_samples per problem)."""

    def write(ev: EvalSetting, sol: Solutions) -> None:
        folder = out_dir / "completions"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{ev.name}.jsonl").open("w") as f:
            for i, ex in enumerate(examples):
                row = {
                    "id": ex.id,
                    "question": ex.question,
                    "gold": ex.answer,
                    "correct": sol.correct[i, :max_samples].tolist(),
                    "cot": sol.cot_texts[i][:max_samples],
                    "completion": sol.completions[i][:max_samples],
                }
                f.write(json.dumps(row) + "\n")

    return write


# ----------------------------------------------------------------------------- the run


def evaluate(cfg: DictConfig) -> EvalResults:
    """Run the evaluation a composed `conf/evaluate.yaml` describes and write its run folder."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model_cfg: ModelConfig = instantiate(cfg.model)
    model, tokenizer, described = load_policy(model_cfg, cfg.checkpoint)
    model.to(device)
    log.info("evaluating %s on %s", described, device)

    datamodule = instantiate(cfg.data)
    examples = datamodule.examples(cfg.split)
    if cfg.max_examples is not None:
        examples = examples[: cfg.max_examples]
    if not examples:
        raise ValueError(f"the {cfg.split!r} split of the data config has no examples")
    rollout_cfg: RolloutConfig = instantiate(cfg.rollout)
    engine = RolloutEngine(tokenizer, rollout_cfg)
    prompt_builder = instantiate(cfg.prompt)
    reward = instantiate(cfg.reward)
    settings = build_settings(cfg.settings, cfg.get("only"))
    hook = completion_writer(out_dir, examples, cfg.save_completions) if cfg.save_completions else None
    results = run_settings(
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
    ood = evaluate_ood(model, tokenizer, cfg.ood) if cfg.get("ood") and cfg.ood.enabled else {}
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
            "max_cot_tokens": rollout_cfg.max_cot_tokens,
            "answer_max_tokens": rollout_cfg.answer_max_tokens,
            "seed": int(cfg.seed),
            "device": str(device),
        },
    )
    paths = write_results(res, out_dir)
    log.info("results written to %s", paths["results.md"])
    return res


def _data_name(cfg: DictConfig) -> str:
    """The data group's choice (e.g. gsm8k) when run by Hydra, else the split's path or target."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices["data"])
    except (ValueError, KeyError):
        split = cfg.data.get(cfg.split) or {}
        return str(split.get("path") or split.get("_target_", "?"))


def evaluate_ood(
    model: PreTrainedModel, tokenizer, ood_cfg: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """Accuracy and per-token NLL of the correct choice on each configured multiple-choice dataset."""
    from soft_tokens.ood import load_choice_items, score_choices

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

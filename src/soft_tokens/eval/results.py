"""What an evaluation measured and its files: per-setting scores, results.json/csv/md, plots, completions.

Scores are fractions in [0, 1] everywhere but in the markdown tables and figures, which show percent,
each pass@k with its standard error over the problems.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soft_tokens.data.types import Example
from soft_tokens.eval.markdown import markdown_table
from soft_tokens.eval.metrics import PassAtK
from soft_tokens.eval.solve import EvalSetting, Solutions


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
        """A JSON-ready dict (nan as null, pass@k keys as strings)."""
        out = dataclasses.asdict(self)
        for s in out["settings"]:
            for key in ("pass_at_k", "pass_at_k_se"):
                s[key] = {str(k): None if math.isnan(v) else v for k, v in s[key].items()}
            s["entropy_profile"] = [None if math.isnan(v) else v for v in s["entropy_profile"]]
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> EvalResults:
        """The results of a results.json (also those written before standard errors were recorded)."""
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


def results_markdown(res: EvalResults) -> str:
    """results.md: what was evaluated, the per-setting table in % with standard errors, OOD scores, the plots."""
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
    from soft_tokens.eval.plots import entropy_figure, pass_at_k_figure

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

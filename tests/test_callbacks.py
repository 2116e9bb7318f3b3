"""The evaluation callbacks inside a tiny fit (math eval with pass@k settings, OOD eval) and in isolation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import compose_train
from omegaconf import open_dict

import train as train_script
from callbacks.math_eval import MathEval
from callbacks.ood_eval import OODEval
from soft_tokens.eval.solve import build_setting
from soft_tokens.models.checkpoints import load_policy
from soft_tokens.models.loading import ModelConfig
from soft_tokens.representers import HardRepresenter

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "ood"
HUB_SETS = ["hellaswag", "arc", "mmlu"]


def test_callbacks_log_their_metrics_in_a_tiny_fit(tmp_path, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            "representer=soft",
            "callbacks=ood",
            "callbacks/ood_sets@callbacks.ood_eval=hub",  # the multiple-choice sets, on the arith data
            "callbacks.rich_progress_bar=null",
            "callbacks.math_eval.max_examples=2",
            f"callbacks.ood_eval.datasets.arc.path={FIXTURES / 'arc_tiny.jsonl'}",
            f"callbacks.ood_eval.datasets.mmlu.path={FIXTURES / 'mmlu_tiny.jsonl'}",
            "~callbacks.ood_eval.datasets.hellaswag",
            "module.rollout.max_cot_tokens=6",
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.callbacks.math_eval.settings = {
            "hard_sample": {
                "representer": {"_target_": "soft_tokens.representers.HardRepresenter", "greedy": False},
                "num_samples": 2,
            }
        }
    metrics = train_script.train(cfg)
    for key in ("val/accuracy", "val/accuracy_soft", "val/hard_sample/pass@1", "val/hard_sample/pass@2"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0, key
    for ds in ("arc", "mmlu"):
        for key in ("accuracy", "nll", "nll_delta_vs_base", "base_accuracy", "base_nll"):
            assert f"ood/{ds}/{key}" in metrics, (ds, key)
        assert metrics[f"ood/{ds}/nll"] > 0
    assert "ood/hellaswag/accuracy" not in metrics

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert "val/cot_entropy" in tags["images"]
    steps = [e.step for e in events.Images("val/cot_entropy")]
    assert steps[0] == 0 and len(steps) >= 2  # step 0, then every step (debug=fast: every_n_steps=1)
    delta = events.Scalars("ood/arc/nll_delta_vs_base")
    assert delta[0].value == 0.0  # at step 0 the base is the policy itself
    assert events.Scalars("ood/arc/base_nll")[0].value == pytest.approx(
        events.Scalars("ood/arc/nll")[0].value
    )

    # the real Lightning checkpoint loads (weights_only) to the exported final policy
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    from_ckpt, _, _ = load_policy(model_cfg, tmp_path / "checkpoints" / "last.ckpt")
    from_hf, _, _ = load_policy(model_cfg, tmp_path / "policy")
    for (k, a), b in zip(from_ckpt.state_dict().items(), from_hf.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(("data", "sets"), [("arith", ["mnns"]), ("mnns", ["arith"]), ("gsm8k", HUB_SETS)])
def test_ood_datasets_follow_the_data_choice(data, sets):
    cfg = compose_train([f"data={data}", "callbacks=ood"])
    assert list(cfg.callbacks.ood_eval.datasets) == sets


def test_task_ood_scores_the_other_task_like_solve_and_score_choices(tmp_path):
    """On the two-task model, data=mnns scores arithmetic: greedy accuracy and the NLL of the solutions."""
    from soft_tokens.data.sources import ArithSource
    from soft_tokens.eval.ood import score_choices, solution_items
    from soft_tokens.eval.solve import InferenceSetting, solve
    from soft_tokens.training.builders import build_module

    cfg = compose_train(
        [
            "debug=fast",
            "data=mnns",
            "model=embedded_mix",
            "callbacks=ood",
            "callbacks.rich_progress_bar=null",
            "callbacks.ood_eval.datasets.arith.source.n=12",
            "trainer.max_steps=1",
            "logger=csv",
        ],
        tmp_path,
    )
    metrics = train_script.train(cfg)
    module = build_module(cfg)  # the base model, as the run loaded it
    module.configure_model()
    examples = ArithSource(split="test", n=12, seed=0).load()
    greedy = InferenceSetting("hard_greedy", HardRepresenter(greedy=True))
    batch = cfg.callbacks.ood_eval.batch_size  # the callback's batches: the same sums in the same order
    solved = solve(
        module.policy,
        module.engine,
        module.format_prompt,
        examples,
        greedy,
        module.reward.score_batch,
        batch_size=batch,
    )
    items = solution_items(examples, module.format_prompt)
    scores = score_choices(module.policy, module.tokenizer, items, batch_size=batch)
    assert metrics["ood/arith/base_accuracy"] == pytest.approx(float(solved.correct.float().mean()))
    # MeanNLL is float32 state: the float64 mean rounded to float32 (and through the logger's float)
    assert metrics["ood/arith/base_nll"] == pytest.approx(scores.mean_nll, rel=2**-23)
    assert 0 < scores.mean_nll < 1  # the model was trained on these solutions' format
    assert {"ood/arith/accuracy", "ood/arith/nll", "ood/arith/nll_delta_vs_base"} <= set(metrics)


def test_task_ood_dataset_errors_name_the_dataset():
    from soft_tokens.data.sources import ArithSource

    with pytest.raises(ValueError, match="ood dataset 'arith'.*exactly `format: task` and `source`"):
        OODEval({"arith": {"format": "task", "source": ArithSource(n=2), "limit": 5}})._load()
    with pytest.raises(ValueError, match="ood dataset 'x'.*got keys \\['format'\\]"):
        OODEval({"x": {"format": "task"}})._load()
    with pytest.raises(
        ValueError, match="ood dataset 'y': a task needs .* a data source, got 'task' and int"
    ):
        OODEval({"y": {"format": "task", "source": 3}})._load()


def test_training_free_settings_run_in_math_eval_but_do_not_train(tmp_path, tiny_model_dir):
    base = [
        "debug=fast",
        f"model.name_or_path={tiny_model_dir}",
        "callbacks.rich_progress_bar=null",
        "logger=csv",
    ]
    # A representer file as a validation setting, from the command line (Hydra's group@package syntax).
    cfg = compose_train(
        [
            *base,
            "trainer.max_steps=1",
            "+representer@callbacks.math_eval.settings.soft_thinking.representer=soft_thinking",
            "+representer@callbacks.math_eval.settings.moi.representer=mixture_of_inputs",
        ],
        tmp_path / "a",
    )
    metrics = train_script.train(cfg)
    assert 0.0 <= metrics["val/soft_thinking/pass@1"] <= 1.0 and 0.0 <= metrics["val/moi/pass@1"] <= 1.0
    for choice in ("soft_thinking", "mixture_of_inputs"):
        with pytest.raises(
            ValueError, match=f"{choice}.*training-free.*representer=hard, soft, fuzzy or gumbel"
        ):
            train_script.train(compose_train([*base, f"representer={choice}"], tmp_path / choice))


def test_math_eval_settings_validation():
    s = build_setting("x", {"representer": HardRepresenter(greedy=False), "num_samples": 8})
    assert s.k_values == [1, 2, 4, 8] and s.setting.num_samples == 8
    assert build_setting("y", HardRepresenter(greedy=True)).k_values == [1]
    with pytest.raises(ValueError, match="k_values"):
        build_setting("z", {"representer": HardRepresenter(), "num_samples": 2, "k_values": [4]})
    with pytest.raises(TypeError):
        build_setting("w", {"num_samples": 2})
    cb = MathEval(
        HardRepresenter(greedy=True), settings={"h": {"representer": HardRepresenter(), "num_samples": 2}}
    )
    assert [s.name for s in cb.settings] == ["h"]


class _Module:
    """The parts of SoftTokensModule the OOD callback uses."""

    def __init__(self, policy, ref, tokenizer):
        self.policy, self.ref_model, self.tokenizer = policy, ref, tokenizer
        self.device = torch.device("cpu")


def _trainer(step: int, metrics: dict | None = None):
    """The parts of a Trainer the evaluation callbacks use; `callback_metrics` receives what they publish."""
    return SimpleNamespace(
        global_step=step,
        global_rank=0,
        world_size=1,
        is_global_zero=True,
        max_steps=100,
        strategy=None,
        loggers=[],
        callback_metrics={} if metrics is None else metrics,
    )


def test_ood_eval_uses_the_reference_model_as_base(tiny_tokenizer):
    from soft_tokens.models.tiny import tiny_llama as build_tiny_llama

    policy, ref = build_tiny_llama(len(tiny_tokenizer), seed=1), build_tiny_llama(len(tiny_tokenizer), seed=2)
    cb = OODEval({"arc": {"format": "arc", "path": str(FIXTURES / "arc_tiny.jsonl")}}, every_n_steps=5)
    module = _Module(policy, ref, tiny_tokenizer)
    logged: dict = {}
    cb.on_train_batch_end(
        _trainer(5, logged), module, None, None, 0
    )  # a resumed run: step 5, with a reference
    logged = {k: float(v) for k, v in logged.items()}
    assert logged["ood/arc/nll_delta_vs_base"] == pytest.approx(
        logged["ood/arc/nll"] - logged["ood/arc/base_nll"]
    )
    assert logged["ood/arc/nll_delta_vs_base"] != 0.0  # two different models
    assert cb.state_dict()["base"]["arc"]["nll"] == pytest.approx(logged["ood/arc/base_nll"])

    # without a reference model and not starting at step 0: no base, so no delta (unless restored from a checkpoint)
    cb2 = OODEval({"arc": {"format": "arc", "path": str(FIXTURES / "arc_tiny.jsonl")}}, every_n_steps=5)
    module2, logged2 = _Module(policy, None, tiny_tokenizer), {}
    cb2.on_train_batch_end(_trainer(5, logged2), module2, None, None, 0)
    assert "ood/arc/accuracy" in logged2 and "ood/arc/nll_delta_vs_base" not in logged2
    cb2.load_state_dict(cb.state_dict())
    cb2.on_train_batch_end(_trainer(10, logged2), module2, None, None, 0)
    assert float(logged2["ood/arc/nll_delta_vs_base"]) == pytest.approx(
        float(logged["ood/arc/nll_delta_vs_base"])
    )


def _scalar_steps(events, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


@pytest.mark.parametrize(
    "max_steps,every,expected",
    [(6, 3, [0, 3, 6]), (3, 1, [0, 1, 2, 3]), (3, 40, [0, 3])],  # the last: a run shorter than every_n_steps
)
def test_eval_metrics_once_per_evaluation_at_their_step(tmp_path, tiny_model_dir, max_steps, every, expected):
    import csv
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = compose_train(
        [
            "debug=fast",
            f"model.name_or_path={tiny_model_dir}",
            f"trainer.max_steps={max_steps}",
            f"callbacks.math_eval.every_n_steps={every}",
            "callbacks.rich_progress_bar=null",
            "callbacks=ood",
            "callbacks/ood_sets@callbacks.ood_eval=hub",
            f"callbacks.ood_eval.datasets.arc.path={FIXTURES / 'arc_tiny.jsonl'}",
            "~callbacks.ood_eval.datasets.mmlu",
            "~callbacks.ood_eval.datasets.hellaswag",
            "logger=[tensorboard,csv]",
        ],
        tmp_path,
    )
    train_script.train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for tag in ("val/accuracy", "ood/arc/accuracy", "ood/arc/nll"):
        assert _scalar_steps(events, tag) == expected, tag
    assert [e.step for e in events.Tensors("val/completions/text_summary")] == expected
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["val/accuracy"]] == expected
    assert [int(r["step"]) for r in rows if r["ood/arc/accuracy"]] == expected
    # the best checkpoint and policy_best exist even when no step is a multiple of every_n_steps
    assert (tmp_path / "policy_best" / "model.safetensors").exists()
    if every > max_steps:
        assert list((tmp_path / "checkpoints").glob(f"step{max_steps:05d}-*.ckpt"))
    summary = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert all(k.startswith(("train/", "val/", "ood/")) for k in summary), sorted(summary)
    # HParams: the resolved config, with val/accuracy as the session's metric
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["module.samples_per_prompt"].number_value == 2 and hp["representer.name"].string_value == "hard"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in exp.metric_infos] == ["val/accuracy"]
    assert "module" in (tmp_path / "tensorboard" / "hparams.yaml").read_text()


def test_completions_markdown_escapes_cells():
    from callbacks.math_eval import completions_markdown

    text = completions_markdown([("q | x", "a\nb", "\\boxed{1}", "1", True)])
    assert text.splitlines()[2] == "| q \\| x | a b | \\boxed{1} | 1 | True |"

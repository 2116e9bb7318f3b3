"""The hyper-parameter search (conf/hparams_search/): the best-checkpoint metric, the value train.py returns
to the sweeper, and the Optuna sweep config (skipped where the [sweep] extra is not installed)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
from helpers import compose_config, compose_train
from omegaconf import OmegaConf

import train as train_script
from callbacks.best_score import BestScore
from soft_tokens.config_types import check_config_types
from soft_tokens.runs.sweep_objective import sweep_objective

SEARCH = ["hparams_search=embedded_optuna", "experiment=embedded_soft"]


def fake_trainer(best: float | None, monitor: str = "val/accuracy") -> SimpleNamespace:
    """A trainer with a checkpoint callback whose best score is `best`, and the last val/accuracy 0.25."""
    score = None if best is None else torch.tensor(best)
    ckpt = SimpleNamespace(monitor=monitor, best_model_score=score)
    return SimpleNamespace(checkpoint_callback=ckpt, callback_metrics={"val/accuracy": torch.tensor(0.25)})


def test_best_score_is_the_checkpoint_callbacks_best():
    trainer = fake_trainer(0.375)
    BestScore().on_train_end(trainer, None)
    assert float(trainer.callback_metrics["val/accuracy_best"]) == 0.375
    assert float(trainer.callback_metrics["val/accuracy"]) == 0.25  # the last value is left as it was


def test_best_score_adds_nothing_without_a_saved_checkpoint():
    for trainer in (fake_trainer(None), SimpleNamespace(checkpoint_callback=None, callback_metrics={})):
        BestScore().on_train_end(trainer, None)
        assert not any(k.endswith("_best") for k in trainer.callback_metrics)


def test_sweep_objective_reads_the_named_metric():
    metrics = {"val/accuracy": 0.25, "val/accuracy_best": 0.375}
    assert sweep_objective(metrics, "val/accuracy_best") == 0.375
    assert sweep_objective(metrics, None) is None and sweep_objective(metrics, "") is None


def test_sweep_objective_names_a_missing_metric():
    with pytest.raises(SystemExit) as err:
        sweep_objective({"val/accuracy": 0.25, "train/reward": 10.0}, "val/acc_best")
    assert str(err.value) == (
        "config error: optimized_metric='val/acc_best' is not a metric of this run (it has: train/reward, "
        "val/accuracy); set optimized_metric to one of them (val/accuracy_best needs callbacks.best_score and "
        "a checkpoint callback, as conf/hparams_search/embedded_optuna.yaml sets)"
    )


def test_run_returns_its_best_validation_accuracy(tmp_path, tiny_model_dir):
    """A real run with the callback: val/accuracy_best is the best of the evaluations after step 0."""
    cfg = compose_train(
        [
            "debug=fast",
            "trainer.max_steps=3",
            f"model.name_or_path={tiny_model_dir}",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
            "+callbacks.best_score._target_=callbacks.best_score.BestScore",
        ],
        tmp_path,
    )
    metrics = train_script.train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/accuracy")]
    assert sorted(int(r["step"]) for r in rows) == [0, 1, 2, 3]
    after_updates = max(float(r["val/accuracy"]) for r in rows if int(r["step"]) >= 1)
    assert sweep_objective(metrics, "val/accuracy_best") == pytest.approx(after_updates)


def test_optuna_search_composes():
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason='the [sweep] extra: pip install -e ".[sweep]"'
    )
    cfg = compose_config("train", SEARCH, keep_hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert (sweeper.direction, sweeper.n_jobs, sweeper.sampler.seed) == ("maximize", 1, 0)
    assert cfg.optimized_metric == "val/accuracy_best"
    assert cfg.callbacks.best_score._target_ == "callbacks.best_score.BestScore"
    # Every searched key is a key of the composed run (a renamed knob would make each trial fail).
    assert dict(sweeper.params) == {
        "module.optim.lr": "tag(log, interval(1e-5, 3e-4))",
        "representer.gamma": "choice(0.1, 0.2, 0.33, 0.5, 1.0)",
    }
    assert all(OmegaConf.select(cfg, key) is not None for key in sweeper.params)
    check_config_types(compose_train([*SEARCH, "paths.output_dir=/tmp/x"]))  # e.g. BestScore's arguments


def test_optuna_search_needs_the_extra_or_names_it():
    """Without the plugin the search fails at composition with Hydra's message naming the sweeper."""
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match="optuna"):
            compose_config("train", SEARCH, keep_hydra=True)
    else:
        pytest.skip("the [sweep] extra is installed")

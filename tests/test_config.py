"""Config composition: every choice of every group composes, components instantiate, presets build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CONF, GROUPS, compose_train
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from soft_tokens.estimators.base import Estimator
from soft_tokens.models.loading import ModelConfig
from soft_tokens.representers.base import TokenRepresenter


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in choices(g)])
def test_every_choice_composes_and_resolves(group, choice):
    cfg = compose_train([f"{group}={choice}", "paths.output_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    assert cfg.module._target_ == "soft_tokens.training.module.SoftTokensModule"
    assert "_target_" in cfg.model and "_target_" in cfg.data and "_target_" in cfg.trainer


@pytest.mark.parametrize("choice", choices("representer"))
def test_representers_instantiate(choice):
    rep = instantiate(compose_train([f"representer={choice}"]).representer)
    assert isinstance(rep, TokenRepresenter) and rep.name == choice


@pytest.mark.parametrize("choice", choices("estimator"))
def test_estimators_instantiate(choice):
    assert isinstance(instantiate(compose_train([f"estimator={choice}"]).estimator), Estimator)


def test_fuzzy_is_soft_at_tiny_temperature():
    soft = instantiate(compose_train(["representer=soft"]).representer)
    fuzzy = instantiate(compose_train(["representer=fuzzy"]).representer)
    assert type(soft) is type(fuzzy) and (soft.tau, fuzzy.tau) == (0.5, 1e-4)
    assert soft.gamma == fuzzy.gamma == 0.33


@pytest.mark.parametrize("group", ["representer", "estimator", "model", "trainer"])
def test_unknown_choice_lists_the_options(group):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose_train([f"{group}=nope"])
    msg = str(err.value)
    assert "nope" in msg and "Available options" in msg
    assert all(c in msg for c in choices(group))


@pytest.mark.parametrize("name", [c for c in choices("experiment") if c.startswith("paper_")])
def test_paper_presets_build_at_reduced_size(name):
    cfg = compose_train([f"experiment={name}", "paths.output_dir=/tmp/x"])
    assert cfg.trainer.max_steps == 4000 and cfg.module.samples_per_prompt == 32 and cfg.data.batch_size == 2
    assert cfg.module.optim.warmup_steps == 20 and cfg.module.optim.scheduler == "cosine"
    assert cfg.estimator._target_.endswith("RLOO") and cfg.estimator.beta == 0
    OmegaConf.resolve(cfg)
    spec: ModelConfig = instantiate(cfg.model)
    assert not spec.trust_remote_code
    spec.random_init = True
    spec.gradient_checkpointing = False
    spec.config_overrides = {
        "num_hidden_layers": 1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    }
    model = spec.load_model()
    arch = OmegaConf.load(Path(spec.architecture) / "config.json")
    assert model.config.vocab_size == arch.vocab_size and model.config.model_type == arch.model_type
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, arch.vocab_size)


def test_embedded_soft_experiment_differs_from_the_default_in_the_noise_and_g_only():
    cfg = compose_train(["experiment=embedded_soft", "paths.output_dir=/tmp/x"])
    default = compose_train(["paths.output_dir=/tmp/x"])
    assert cfg.representer.name == "soft" and cfg.representer.tau == 0.5 and cfg.task_name == "embedded_soft"
    assert cfg.representer.noise_top_k == 2 and cfg.representer.noise_min_entropy == 0.3
    assert cfg.representer.gamma == 0.35 and cfg.model.name_or_path.endswith("embedded")
    # everything else as the hard default (matched comparison: docs/continuous_rl_study.md, rounds 4 and 5)
    assert cfg.sampling_temperature == default.sampling_temperature and cfg.module.samples_per_prompt == 16
    default.module.samples_per_prompt = 16
    for key in ("module", "estimator", "data", "trainer"):
        assert OmegaConf.to_container(cfg[key]) == OmegaConf.to_container(default[key]), key


PLACED = ["representer.noise_top_k=2", "representer.noise_min_entropy=0.3", "representer.gamma=0.35"]


@pytest.mark.parametrize(
    ("preset", "study"),
    [
        (["experiment=mnns_hard"], ["representer=hard"]),
        (["experiment=mnns_soft"], ["representer=soft", *PLACED]),
        (["experiment=mnns_hard", "representer=soft"], ["representer=soft"]),
        (["experiment=mnns_hard", "representer=fuzzy"], ["representer=fuzzy"]),
        (["experiment=mnns_hard", "representer=soft_grpo"], ["representer=soft_grpo"]),
    ],
)
def test_mnns_presets_are_the_study_commands(preset, study):
    """experiment=mnns_* composes what the study ran (docs/second_task.md): the same config but the task name."""
    common = [
        "data=mnns",
        "model=embedded_mix",
        "sampling_temperature=1.0",
        "module.samples_per_prompt=16",
        "callbacks=ood",
        "trainer.max_steps=100",
        "callbacks.math_eval.every_n_steps=20",
    ]
    composed = OmegaConf.to_container(compose_train([*preset, "paths.output_dir=/tmp/x"]))
    ran = OmegaConf.to_container(compose_train([*common, *study, "paths.output_dir=/tmp/x"]))
    assert composed.pop("task_name") == preset[0].split("=")[1] and ran.pop("task_name") == "train"
    assert composed == ran


def test_embedded_fuzzy_preset_is_the_study_command():
    """experiment=embedded_fuzzy composes round 6's fuzzy runs: tau 0.1, placed noise at gamma 0.7, CoT term kept, lr 3e-5."""
    study = [
        "representer=fuzzy",
        "representer.tau=0.1",
        *PLACED,
        "module.samples_per_prompt=16",
        "representer.gamma=0.7",
    ]
    composed = OmegaConf.to_container(compose_train(["experiment=embedded_fuzzy", "paths.output_dir=/tmp/x"]))
    ran = OmegaConf.to_container(compose_train([*study, "module.optim.lr=3e-5", "paths.output_dir=/tmp/x"]))
    assert composed.pop("task_name") == "embedded_fuzzy" and ran.pop("task_name") == "train"
    assert composed == ran
    assert composed["module"]["cot_grad_weight"] == 1.0 and not composed["module"]["freeze_embeddings"]

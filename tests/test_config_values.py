"""What values a config key may take (soft_tokens.config_types): types from the code's annotations, followed
through re-exports, base classes and `**kwargs`, and the one table of ranges; hostile values stop before
torch loads, with the key named; LoRA's rank and module names."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import CONF, compose_config, compose_train, probe_train
from omegaconf import OmegaConf

from soft_tokens.config_types import (
    RANGES,
    ConfigTypeError,
    check_config_types,
    check_value,
    parse_range,
    range_of,
    target_arguments,
)
from soft_tokens.estimators.base import LOSS_TYPES
from soft_tokens.estimators.grpo import SCALE_REWARDS
from soft_tokens.models import tiny
from soft_tokens.models.lora import LoraSettings, add_adapters
from soft_tokens.representers import SoftRepresenter

NOWHERE = Path("/tmp")  # a run folder for the interpolations of composed configs (nothing is written there)
GROUPS = {
    g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("representer", "estimator", "reward")
}


def _flat_keys(node, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return {k for key, v in node.items() for k in _flat_keys(v, f"{prefix}.{key}" if prefix else key)}
    if isinstance(node, list):
        return {k for i, v in enumerate(node) for k in _flat_keys(v, f"{prefix}[{i}]")}
    return {prefix}


def test_every_range_parses_and_names_a_config_key():
    configs = [compose_train([f"representer={c}"], NOWHERE) for c in GROUPS["representer"]]
    configs += [compose_train([f"estimator={c}"], NOWHERE) for c in GROUPS["estimator"]]
    configs.append(compose_config("evaluate", [], NOWHERE))
    keys = set().union(*(_flat_keys(OmegaConf.to_container(c, resolve=True)) for c in configs))
    for key, text in RANGES.items():
        assert parse_range(text).text == text
        assert any(k == key or k.endswith("." + key) for k in keys), f"{key} names no config key"
    for cfg in configs:  # every shipped default is inside its range
        check_config_types(cfg)


@pytest.mark.parametrize(
    "key, good, bad",
    [
        ("model.lora.alpha", [1e-3, 32], [0, -1.0]),
        ("model.lora.dropout", [0.0, 0.99], [1.0, 1.5, -0.1]),
        ("model.lora.r", [1, 16], [0, -4]),
        ("module.optim.lr", [1e-6], [0, -1, float("nan"), math.inf]),
        ("representer.beta", [0.0, 1.0, math.inf], [-1.0, float("nan")]),  # mixture_of_inputs: inf documented
        ("estimator.beta", [0.0, 0.04], [-0.5]),
        ("representer.tau", [1e-4], [0, -0.5]),
        ("representer.temperature", [0.5], [0]),
        ("representer.gamma", [0.0, 0.33], [-0.01]),
        ("settings.soft_sample.representer.tau", [0.5], [0]),  # a key matches by its end
        ("representer.top_p", [1.0], [0.0, 1.5]),
    ],
)
def test_range_table_bounds(key, good, bad):
    assert range_of(key) is not None
    for value in good:
        check_value(key, value)
    for value in bad:
        with pytest.raises(ConfigTypeError, match=rf"{key.replace('.', '[.]')}={value!r}: must be"):
            check_value(key, value)
    with pytest.raises(ConfigTypeError, match="expected a number"):
        check_value(key, "abc")


def test_type_check_follows_reexports_base_classes_and_kwargs():
    hard = target_arguments("soft_tokens.representers.HardRepresenter")  # no __init__: the base's
    assert hard["temperature"].text == "float" and hard["greedy"].text == "bool"
    soft = target_arguments("soft_tokens.representers.SoftRepresenter")  # re-exported by the package
    assert {"tau", "gamma", "temperature", "greedy"} <= soft.keys()
    rloo, grpo = (target_arguments(f"soft_tokens.estimators.{n}") for n in ("RLOO", "GRPO"))  # **kwargs
    assert rloo["beta"].text == "float" and {"beta", "eps", "num_iterations"} <= grpo.keys()
    assert (
        target_arguments("soft_tokens.models.loading.ModelConfig")["lora"].nested_class()
        == "soft_tokens.models.lora.LoraSettings"
    )


def _scalar_keys(group: str, choice: str) -> list[tuple[str, str]]:
    """(key, annotation) of the int/float/bool arguments a group's choice sets in its YAML."""
    node = OmegaConf.to_container(compose_train([f"{group}={choice}"], NOWHERE)[group], resolve=True)
    args = target_arguments(node["_target_"])
    scalar = {"int", "float", "bool"}
    return [
        (k, args[k].text) for k in node if k in args and {p.strip() for p in args[k].text.split("|")} & scalar
    ]


@pytest.mark.parametrize("group, choice", [(g, c) for g, choices in GROUPS.items() for c in choices])
def test_every_group_key_of_the_wrong_type_is_named(group, choice):
    keys = _scalar_keys(group, choice)
    assert keys, f"{group}={choice}: no typed key found"
    for key, annotation in keys:
        with pytest.raises(ConfigTypeError, match=rf"{group}\.{key}='abc': expected {annotation.split()[0]}"):
            check_config_types(compose_train([f"{group}={choice}", f"{group}.{key}=abc"], NOWHERE))


@pytest.mark.parametrize(
    "override, key",
    [
        ("representer.temperature=abc", "representer.temperature='abc': expected float"),
        ("representer=soft representer.tau=abc", "representer.tau='abc': expected float"),
        ("representer=soft +representer.temperature=abc", "representer.temperature='abc': expected float"),
        ("representer=soft representer.gamma=-1", "representer.gamma=-1: must be >= 0"),
        ("representer=fuzzy representer.tau=0", "representer.tau=0: must be > 0"),
        ("estimator.beta=x", "estimator.beta='x': expected float"),
        ("estimator.beta=-0.5", "estimator.beta=-0.5: must be >= 0"),
        ("estimator=grpo estimator.eps=abc", "estimator.eps='abc': expected float"),
        ("reward.correct=y", "reward.correct='y': expected float"),
        ("model.lora.r=4 model.lora.alpha=0", "model.lora.alpha=0: must be > 0"),
        ("model.lora.alpha=-8", "model.lora.alpha=-8: must be > 0"),
        ("model.lora.alpha=abc", "model.lora.alpha='abc': expected float"),
        ("model.lora.dropout=-0.1", "model.lora.dropout=-0.1: must be in [0, 1)"),
        ("model.lora.dropout=1.5", "model.lora.dropout=1.5: must be in [0, 1)"),
        ("module.optim.lr=-1", "module.optim.lr=-1: must be > 0"),
        ("module.optim.lr=0", "module.optim.lr=0: must be > 0"),
        ("module.optim.lr=inf", "module.optim.lr=inf: must be > 0"),
        ("fork=no", "fork='no': expected bool"),
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5: expected int"),
        ("estimator.loss_type=foo", "estimator.loss_type='foo': must be one of sequence_sum, grpo, bnpo"),
        ("+representer.noise_top_k=2", "representer.noise_top_k: soft_tokens.representers.HardRepresenter"),
        ("representer=soft representer.noise_top_k=300", "representer.noise_top_k=300: must be <= 193"),
        ("representer=soft representer.gamma=0", "representer.gamma=0: training with soft or fuzzy"),
    ],
)
def test_hostile_values_stop_before_torch_loads_naming_the_key(override, key):
    text = probe_train(*override.split())
    assert "HEAVY []" in text and "CODE config error" in text, text
    assert f"config key {key}" in text, text


def test_lora_rank_above_a_layers_dimensions_is_refused(tiny_tokenizer):
    model = tiny.tiny_llama(len(tiny_tokenizer))  # hidden 32; k_proj and v_proj 32 x 16
    with pytest.raises(ValueError, match=r"model\.lora\.r=100000 exceeds .*hidden size.*r <= 32"):
        add_adapters(model, LoraSettings(r=100000))
    with pytest.raises(ValueError, match=r"model\.lora\.r=20 exceeds .*k_proj \(32 x 16\).*r <= 16"):
        add_adapters(tiny.tiny_llama(len(tiny_tokenizer)), LoraSettings(r=20, target_modules=["k_proj"]))


def test_lora_target_modules_as_a_bare_string_is_one_module_name(tiny_tokenizer):
    settings = LoraSettings.of({"r": 4, "target_modules": "q_proj"})
    assert settings.target_modules == ["q_proj"]
    wrapped = add_adapters(tiny.tiny_llama(len(tiny_tokenizer)), settings)
    adapted = {n.rsplit(".", 1)[-1] for n, _ in wrapped.named_modules() if n.endswith("q_proj")}
    assert adapted == {"q_proj"} and any("q_proj.lora_A" in n for n, _ in wrapped.named_parameters())
    with pytest.raises(
        ValueError, match=r"target_modules: 'q_proj\|v_proj' is not a module name.*\[q_proj,v_proj\]"
    ):
        LoraSettings.of({"r": 4, "target_modules": "q_proj|v_proj"})


def test_evaluate_checks_values_before_loading_a_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["settings.soft_sample.representer.tau=0", f"paths.log_dir={tmp_path}"]
    out = subprocess.run(
        [sys.executable, "evaluate.py", *args],
        cwd=CONF.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "config error: config key settings.soft_sample.representer.tau=0: must be > 0" in out.stderr, (
        out.stderr
    )


def _refusal(overrides: str, config: str = "train") -> str:
    """The ConfigTypeError message of the composed config `config` with `overrides` (space-separated)."""
    with pytest.raises(ConfigTypeError) as err:
        check_config_types(compose_config(config, overrides.split(), NOWHERE))
    return str(err.value)


@pytest.mark.parametrize(
    "override",
    [
        "module.optim.lr=inf",
        "module.optim.weight_decay=inf",
        "representer=soft representer.gamma=inf",
        "estimator.beta=inf",
        "module.cot_grad_weight=inf",
        "sampling_temperature=inf",
        "model.lora.r=4 model.lora.alpha=inf",
        "representer=gumbel representer.tau=-inf",
        "module.optim.weight_decay=nan",
    ],
)
def test_infinite_and_nan_floats_are_refused_naming_the_key(override):
    key, value = override.split()[-1].split("=")
    assert f"config key {key}={float(value)!r}: must be" in _refusal(override)


def test_a_float_without_a_range_must_be_finite_and_inf_only_where_documented():
    assert _refusal("reward.correct=inf") == (
        "config key reward.correct=inf: must be a finite number; fix the override or the YAML"
    )
    assert "reward.no_box=nan: must be a finite number" in _refusal("reward.no_box=nan")
    check_config_types(compose_train(["representer=mixture_of_inputs", "representer.beta=inf"], NOWHERE))


def test_noise_top_k_above_the_hidden_size_plus_one_is_refused_in_train_and_evaluate(tiny_model_dir):
    check_config_types(compose_train(["representer=soft", "representer.noise_top_k=193"], NOWHERE))
    assert _refusal("representer=soft representer.noise_top_k=194") == (
        "config key representer.noise_top_k=194: must be <= 193 (the model's hidden size 192 + 1: the "
        "differences of more candidates are linearly dependent and have no density)"
    )
    assert "settings.soft_sample.representer.noise_top_k=300: must be <= 193" in _refusal(
        "settings.soft_sample.representer.noise_top_k=300", "evaluate"
    )
    hf = f"model=hf model.name_or_path={tiny_model_dir} representer=fuzzy representer.noise_top_k=34"
    assert "noise_top_k=34: must be <= 33 (the model's hidden size 32 + 1" in _refusal(hf)
    # a hub model: its size is known once E is, at the first rollout, with the same message
    with pytest.raises(
        ConfigTypeError, match=r"representer\.noise_top_k=34: must be <= 33 \(the model's hidden"
    ):
        SoftRepresenter(noise_top_k=34).prepare(torch.zeros(300, 32))
    SoftRepresenter(noise_top_k=33).prepare(torch.zeros(300, 32))


def test_noise_min_entropy_no_step_can_reach_is_refused():
    ln_v = math.log(456)  # the embedded model's vocabulary
    check_config_types(
        compose_train(["representer=soft", f"representer.noise_min_entropy={ln_v - 0.01}"], NOWHERE)
    )
    assert _refusal(f"representer=soft representer.noise_min_entropy={ln_v}") == (
        f"config key representer.noise_min_entropy={ln_v!r}: must be < ln V = 6.1225 (V = 456, the model's "
        "vocabulary: no next-token entropy reaches it, so no CoT step would get noise)"
    )
    with pytest.raises(ConfigTypeError, match=r"noise_min_entropy=6\.0: must be < ln V = 5\.7038 \(V = 300"):
        SoftRepresenter(noise_min_entropy=6.0).prepare(torch.zeros(300, 32))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            "representer=soft representer.gamma=0",
            "config key representer.gamma=0: training with soft or fuzzy",
        ),
        (
            "representer=fuzzy representer.gamma=0.0",
            "config key representer.gamma=0: training with soft or fuzzy",
        ),
        (
            "representer=soft representer.greedy=true",
            "config key representer.greedy=true: training needs sampled",
        ),
        (
            "representer=fuzzy representer.greedy=true",
            "config key representer.greedy=true: training needs sampled",
        ),
        (
            "representer=gumbel representer.greedy=true",
            "config key representer.greedy=true: training needs sampled",
        ),
    ],
)
def test_training_refuses_a_cot_without_noise(overrides, message):
    assert message in _refusal(overrides)


def test_evaluation_keeps_greedy_and_noise_free_settings():
    cfg = compose_config("evaluate", ["settings.soft_sample.representer.gamma=0"], NOWHERE)
    check_config_types(cfg)  # the greedy settings, and gamma 0, are inference settings
    assert cfg.settings.soft_greedy.representer.greedy is True


@pytest.mark.parametrize(
    "overrides, taken_by",
    [
        (
            "+representer.noise_top_k=2",
            "HardRepresenter has no argument 'noise_top_k'; noise_top_k is taken by representer=fuzzy, soft.",
        ),
        (
            "representer=gumbel +representer.noise_top_k=2",
            "GumbelSoftmaxRepresenter has no argument 'noise_top_k'; noise_top_k is taken by representer=fuzzy, soft.",
        ),
        (
            "experiment=embedded_soft representer=hard",
            "HardRepresenter has no argument 'noise_top_k'; noise_top_k is taken by representer=fuzzy, soft.",
        ),
        (
            "estimator=rloo +estimator.scale_rewards=batch",
            "RLOO has no argument 'scale_rewards'; scale_rewards is taken by estimator=grpo.",
        ),
        (
            "+module.optim.nesterov=true",
            "OptimConfig has no argument 'nesterov'; OptimConfig takes betas, eps, lr,",
        ),
    ],
)
def test_a_key_its_target_does_not_take_names_the_choices_that_take_it(overrides, taken_by):
    assert taken_by in _refusal(overrides)


@pytest.mark.parametrize(
    "override, allowed",
    [
        ("estimator.loss_type=foo", LOSS_TYPES),
        ("estimator=grpo estimator.scale_rewards=foo", SCALE_REWARDS),
        ("module.optim.name=adam", ("adamw", "sgd")),
    ],
)
def test_unknown_options_name_the_allowed_values_from_the_code(override, allowed):
    key = override.split()[-1].split("=")[0]
    assert (
        f"config key {key}='{override.split('=')[-1]}': must be one of {', '.join(allowed)} (an argument of"
        in (_refusal(override))
    )


def test_literal_choices_come_from_the_code():
    assert target_arguments("soft_tokens.estimators.RLOO")["loss_type"].choices() == LOSS_TYPES
    assert target_arguments("soft_tokens.estimators.GRPO")["scale_rewards"].choices() == SCALE_REWARDS
    assert target_arguments("soft_tokens.estimators.GRPO")["eps"].choices() is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_steps=abc", "trainer.max_steps='abc': expected int"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5: must be >= 1"),
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5: expected int"),
        ("trainer.max_steps=-1", "trainer.max_steps=-1: must be >= 1"),  # a run has a finite length
        ("trainer.max_steps=0", "trainer.max_steps=0: must be >= 1"),
        (
            "callbacks.model_checkpoint.every_n_train_steps=-1",
            "callbacks.model_checkpoint.every_n_train_steps=-1: must be >= 0",
        ),
        ("callbacks.model_checkpoint.every_n_train_steps=2.5", "every_n_train_steps=2.5: expected int"),
        ("fork=no", "config key fork='no': expected bool"),
        ("export_policy=yes", "config key export_policy='yes': expected bool"),
    ],
)
def test_step_counts_are_positive_integers_and_booleans_are_booleans(override, message):
    assert message in _refusal(override)


def test_valid_step_counts_and_booleans_pass():
    check_config_types(
        compose_train(
            ["trainer.max_steps=1", "callbacks.model_checkpoint.every_n_train_steps=0", "fork=false"], NOWHERE
        )
    )

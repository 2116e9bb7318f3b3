"""Values checked once (issue 33 item 5): a config knob's range or choices live in config_types (RANGES, or a
`Literal` annotation), checked on the composed config before torch loads; the constructors no longer repeat
them. Each row is a check a constructor used to make, now made (and named) by the config check only."""

from __future__ import annotations

import pytest
from helpers import compose_train

from soft_tokens.config_types import ConfigTypeError, check_config_types
from soft_tokens.estimators import GRPO, RLOO
from soft_tokens.models.lora import LoraSettings
from soft_tokens.representers import (
    GumbelSoftmaxRepresenter,
    HardRepresenter,
    MixtureOfInputsRepresenter,
    SoftRepresenter,
    SoftThinkingRepresenter,
)

# (overrides, the config check's message, the constructor call that no longer checks it)
ROWS = [
    (
        "representer=hard representer.temperature=0",
        "representer.temperature=0: must be > 0",
        lambda: HardRepresenter(temperature=0.0),
    ),
    (
        "representer=hard representer.temperature=-1.0",
        "representer.temperature=-1.0: must be > 0",
        lambda: HardRepresenter(temperature=-1.0),
    ),
    (
        "representer=soft representer.tau=0",
        "representer.tau=0: must be > 0",
        lambda: SoftRepresenter(tau=0.0),
    ),
    (
        "representer=soft representer.tau=-0.5",
        "representer.tau=-0.5: must be > 0",
        lambda: SoftRepresenter(tau=-0.5),
    ),
    (
        "representer=soft representer.gamma=-0.1",
        "representer.gamma=-0.1: must be >= 0",
        lambda: SoftRepresenter(gamma=-0.1),
    ),
    (
        "representer=soft representer.noise_top_k=1",
        "representer.noise_top_k=1: must be >= 2",
        lambda: SoftRepresenter(noise_top_k=1),
    ),
    (
        "representer=soft representer.noise_min_entropy=-0.1",
        "representer.noise_min_entropy=-0.1: must be >= 0",
        lambda: SoftRepresenter(noise_min_entropy=-0.1),
    ),
    (
        "representer=soft representer.noise_on=top_k_logits representer.noise_logits_top_k=1",
        "representer.noise_logits_top_k=1: must be >= 2",
        lambda: SoftRepresenter(noise_on="top_k_logits", noise_logits_top_k=1),
    ),
    (
        "representer=gumbel representer.tau=0",
        "representer.tau=0: must be > 0",
        lambda: GumbelSoftmaxRepresenter(tau=0.0),
    ),
    (
        "representer=gumbel representer.top_k=0",
        "representer.top_k=0: must be >= 1",
        lambda: GumbelSoftmaxRepresenter(top_k=0),
    ),
    (
        "representer=gumbel representer.top_p=0.0",
        "representer.top_p=0.0: must be in (0, 1]",
        lambda: GumbelSoftmaxRepresenter(top_p=0.0),
    ),
    (
        "representer=gumbel representer.min_logprob=0.0",
        "representer.min_logprob=0.0: must be < 0",
        lambda: GumbelSoftmaxRepresenter(min_logprob=0.0),
    ),
    (
        "representer=mixture_of_inputs representer.beta=-1.0",
        "representer.beta=-1.0: must be in [0, inf]",
        lambda: MixtureOfInputsRepresenter(beta=-1.0),
    ),
    (
        "representer=mixture_of_inputs representer.temperature=0",
        "representer.temperature=0: must be > 0",
        lambda: MixtureOfInputsRepresenter(temperature=0.0),
    ),
    (
        "representer=soft_thinking representer.temperature=0",
        "representer.temperature=0: must be > 0",
        lambda: SoftThinkingRepresenter(temperature=0.0),
    ),
    (
        "representer=soft_thinking representer.top_k=0",
        "representer.top_k=0: must be >= 1",
        lambda: SoftThinkingRepresenter(top_k=0),
    ),
    (
        "representer=soft_thinking representer.top_p=1.5",
        "representer.top_p=1.5: must be in (0, 1]",
        lambda: SoftThinkingRepresenter(top_p=1.5),
    ),
    (
        "representer=soft_thinking representer.min_p=-0.1",
        "representer.min_p=-0.1: must be in [0, 1]",
        lambda: SoftThinkingRepresenter(min_p=-0.1),
    ),
    (
        "representer=soft_thinking representer.stop_patience=0",
        "representer.stop_patience=0: must be >= 1",
        lambda: SoftThinkingRepresenter(stop_patience=0),
    ),
    (
        "estimator.loss_type=token_mean",
        "estimator.loss_type='token_mean': must be one of sequence_sum, grpo, bnpo, dapo, dr_grpo",
        lambda: RLOO(loss_type="token_mean"),
    ),
    (
        "estimator=grpo estimator.loss_type=token_mean",
        "estimator.loss_type='token_mean': must be one of",
        lambda: GRPO(loss_type="token_mean"),
    ),
    (
        "estimator=grpo estimator.scale_rewards=global",
        "estimator.scale_rewards='global': must be one of group, batch, none",
        lambda: GRPO(scale_rewards="global"),
    ),
    (
        "estimator.num_iterations=0",
        "estimator.num_iterations=0: must be >= 1",
        lambda: RLOO(num_iterations=0),
    ),
    ("module.optim.name=lion", "module.optim.name='lion': must be one of adamw, sgd", None),
    (
        "+model.lora.rank=4",
        "config key model.lora.rank: soft_tokens.models.lora.LoraSettings has no argument 'rank'",
        lambda: LoraSettings.of({"r": 4, "rank": 4}),
    ),
]


@pytest.mark.parametrize("overrides, message, construct", ROWS, ids=[r[0] for r in ROWS])
def test_each_range_is_checked_by_the_config_check(overrides, message, construct):
    cfg = compose_train([*overrides.split(), "paths.output_dir=/tmp/x"])
    with pytest.raises(ConfigTypeError) as err:
        check_config_types(cfg)
    assert message in str(err.value)
    if construct is not None and "lora" not in overrides:
        construct()  # the constructor no longer repeats the check: one owner per value


def test_lora_settings_with_an_unknown_key_still_fail_outside_a_config():
    with pytest.raises(TypeError, match="rank"):  # the dataclass itself: a stored checkpoint's settings
        LoraSettings.of({"r": 4, "rank": 4})


def test_good_values_pass_the_config_check():
    for overrides in (
        "representer=soft representer.noise_top_k=2",
        "representer=mixture_of_inputs representer.beta=inf",
    ):
        check_config_types(compose_train([*overrides.split(), "paths.output_dir=/tmp/x"]))

"""Every `_target_` the configs named before the packages by concern (docs/layout.md) still resolves."""

from __future__ import annotations

import pytest
from hydra._internal.utils import _locate

import soft_tokens

# conf/'s soft_tokens `_target_`s at commit 59e32c7, before the modules moved into packages.
BEFORE_THE_MOVES = [
    "soft_tokens.builders.RunTensorBoardLogger",
    "soft_tokens.builders.RunWandbLogger",
    "soft_tokens.data.datamodule.MathDataModule",
    "soft_tokens.data.prompts.PromptBuilder",
    "soft_tokens.data.sources.ArithSource",
    "soft_tokens.data.sources.HubSource",
    "soft_tokens.data.sources.LocalSource",
    "soft_tokens.distributed.fsdp_strategy",
    "soft_tokens.estimators.GRPO",
    "soft_tokens.estimators.RLOO",
    "soft_tokens.models.ModelConfig",
    "soft_tokens.module.SoftTokensModule",
    "soft_tokens.optim.OptimConfig",
    "soft_tokens.representers.GumbelSoftmaxRepresenter",
    "soft_tokens.representers.HardRepresenter",
    "soft_tokens.representers.MixtureOfInputsRepresenter",
    "soft_tokens.representers.SoftRepresenter",
    "soft_tokens.representers.SoftThinkingRepresenter",
    "soft_tokens.rewards.MathReward",
    "soft_tokens.rollout.RolloutConfig",
]


@pytest.mark.parametrize("target", BEFORE_THE_MOVES)
def test_old_target_resolves_to_the_moved_object(target):
    obj = _locate(target)
    assert obj.__name__ == target.rsplit(".", 1)[1]
    old_module = target.rsplit(".", 1)[0]
    assert obj.__module__.startswith("soft_tokens.")
    if old_module.removeprefix("soft_tokens.") in soft_tokens.MOVED:  # reached through the package's map
        assert obj.__module__ == f"soft_tokens.{soft_tokens.MOVED[old_module.removeprefix('soft_tokens.')]}"


def test_an_unknown_old_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        soft_tokens.nonexistent  # noqa: B018

"""Models: loading a policy (ModelConfig, model folders, checkpoints), LoRA, export and tiny test models."""

from soft_tokens.models.checkpoints import load_lightning_checkpoint, policy_state_dict
from soft_tokens.models.export import (
    PROBE_QUESTIONS,
    CardFacts,
    monitored_score,
    save_tokenizer,
    write_model_card,
)
from soft_tokens.models.loading import ModelConfig
from soft_tokens.models.lora import (
    AdapterDisabled,
    LoraSettings,
    adapter_keys,
    add_adapters,
    is_peft,
    load_adapter_state,
    merged_copy,
)

__all__ = ["PROBE_QUESTIONS", "AdapterDisabled", "CardFacts", "LoraSettings", "ModelConfig", "adapter_keys"]
__all__ += ["add_adapters", "is_peft", "load_adapter_state", "load_lightning_checkpoint", "merged_copy"]
__all__ += ["monitored_score", "policy_state_dict", "save_tokenizer", "write_model_card"]

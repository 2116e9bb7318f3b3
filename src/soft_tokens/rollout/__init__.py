"""Batched, KV-cached generation of a CoT and an answer (docs/method.md, "Generation protocol").

`rollout.RolloutEngine.generate` is the protocol's loop and `rollout.Rollout` its result; `config` holds
the knobs; `decoding.Decoding` is one call's model parts, KV cache and logits, with one method per phase
of a step; `decode_state` the rows' buffers and phases and the per-vocabulary token tables; `text` the
stop-string detection and the texts; `decode_step` a one-position Llama/Qwen2 step without the module
tree; `kv_cache` the in-place KV cache; `shared_prompts` each distinct prompt encoded once; `logprobs` the
teacher-forced log-probabilities of a rollout (the training loss's input); `seeding` the seeds of its
random streams.
"""

from soft_tokens.rollout.config import RolloutConfig
from soft_tokens.rollout.decode_state import DecodeState, TokenTables
from soft_tokens.rollout.decoding import Decoding
from soft_tokens.rollout.logprobs import rollout_log_probs
from soft_tokens.rollout.rollout import (
    Rollout,
    RolloutEngine,
    check_plain_head,
    encode_prompts,
    torch_threads,
)
from soft_tokens.rollout.seeding import mix_seed
from soft_tokens.rollout.text import RolloutText

__all__ = [
    "DecodeState",
    "Decoding",
    "Rollout",
    "RolloutConfig",
    "RolloutEngine",
    "RolloutText",
    "TokenTables",
    "check_plain_head",
    "mix_seed",
    "rollout_log_probs",
    "encode_prompts",
    "torch_threads",
]

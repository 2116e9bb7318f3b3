"""The generation protocol's knobs: lengths, stop string, forced prefixes and decode-loop settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RolloutConfig:
    """Lengths, stop string and forced prefixes of the generation protocol."""

    max_cot_tokens: int = 64
    answer_max_tokens: int = 32
    answer_temperature: float = 1.0
    stop_string: str = "The final answer is:"
    early_stop_prefix: str = " \\boxed{"
    limit_prefix: str = " The final answer is: \\boxed{"
    compact_fraction: float = 0.25  # drop done rows once they are this share of the running batch
    # torch threads while decoding on CPU (null: torch's setting). One per core helps the teacher-forced pass,
    # but the decode loop's small operations gain little from a second thread and stall when cores are shared.
    decode_threads: int | None = 1
    # One-position steps of Llama/Qwen2 decoders call the layers' operations directly (decode_step.py):
    # bit-identical to the decoder's forward, without its per-call Python work; false: always the forward.
    direct_decode: bool = True

    def __post_init__(self) -> None:
        if self.max_cot_tokens < 0:
            raise ValueError(f"rollout max_cot_tokens={self.max_cot_tokens} must be >= 0 (0: no CoT)")
        if self.answer_max_tokens < 1:
            raise ValueError(f"rollout answer_max_tokens={self.answer_max_tokens} must be >= 1")
        # Answers are sampled from softmax(logits / T) and scored at T in training: T = 0 has no density.
        if not self.answer_temperature > 0 or self.answer_temperature == float("inf"):
            raise ValueError(
                f"rollout answer_temperature={self.answer_temperature} must be a finite number > 0 (in "
                "train.py: module.rollout.answer_temperature, set from sampling_temperature); greedy answers "
                "are an evaluation setting (evaluate.py and math_eval decode answers greedily)"
            )

"""An exported policy folder says how to prompt it: the training prompt as chat template, and a model card."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from soft_tokens.data.prompts import PromptBuilder

# Questions the exported chat template is checked on before it is saved (braces, backslashes, quotes,
# newlines, non-ASCII and Jinja-looking text must all come through as they are).
PROBE_QUESTIONS = (
    "Ann has 7 apples. She gets 5 more. How many apples does Ann have now?",
    'What is $\\frac{1}{2} + {x}$ if "x" = 3?\nAnswer in \\boxed{}.',
    "Évaluez {{ 2 + 2 }} {% raw %} ' \" \\n — 数学 😀",
)


def chat_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, prompt: PromptBuilder, path: str | Path) -> str:
    """Save the tokenizer with a chat template that renders a question into its training prompt; return it."""
    exported = prompt.export_chat_template(tokenizer)
    original = tokenizer.chat_template
    expected = [prompt(q, tokenizer) for q in PROBE_QUESTIONS]
    tokenizer.chat_template = exported
    try:
        for question, want in zip(PROBE_QUESTIONS, expected):
            got = tokenizer.apply_chat_template(
                chat_messages(question), tokenize=False, add_generation_prompt=True
            )
            if got != want:
                raise RuntimeError(
                    f"the exported chat template renders {question!r} as {got!r}, not as the training prompt "
                    f"{want!r}"
                )
        tokenizer.save_pretrained(path)
    finally:
        tokenizer.chat_template = original
    return exported


@dataclass
class CardFacts:
    """What a model card states about an exported policy."""

    base_model: str
    representer: str
    estimator: str
    global_step: int
    val_accuracy: float | None = None
    lora: Mapping[str, Any] | None = None
    example_prompt: str = ""


def model_card(facts: CardFacts) -> str:
    """The README.md of an exported policy: what it was trained from and how, and how to prompt it."""
    acc = "not measured" if facts.val_accuracy is None else f"{facts.val_accuracy:.4f}"
    lines = [
        "# Policy trained with soft-tokens",
        "",
        "Reinforcement learning with continuous chain-of-thought tokens (the soft-tokens framework).",
        "",
        f"- base model: `{facts.base_model}`",
        f"- representer (CoT tokens in training): `{facts.representer}`",
        f"- estimator: `{facts.estimator}`",
        f"- optimizer steps: {facts.global_step}",
        f"- validation accuracy (hard greedy, `val/accuracy`): {acc}",
    ]
    if facts.lora:
        lines.append(f"- LoRA adapters (merged into these weights): {dict(facts.lora)}")
    lines += [
        "",
        "## How to prompt it",
        "",
        "The tokenizer's chat template renders one user message, the question, into exactly the prompt the",
        "policy was trained on; tokenize that text as training did (the tokenizer's default special tokens).",
        "The policy writes its reasoning, then `The final answer is: \\boxed{...}`.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'messages = [{"role": "user", "content": question}]',
        "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
        'output = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=512)',
        "```",
        "",
        "For example, the question `Ann has 7 apples. She gets 5 more. How many apples does Ann have now?`",
        "becomes the prompt:",
        "",
        "```text",
        facts.example_prompt,
        "```",
        "",
        "`generate` decodes the chain of thought as hard tokens; soft and fuzzy CoT decoding run in the",
        "framework's `evaluate.py checkpoint=<this folder>`.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: str | Path, facts: CardFacts) -> Path:
    """Write README.md into the exported folder."""
    out = Path(path) / "README.md"
    out.write_text(model_card(facts))
    return out


def monitored_score(checkpoint: Mapping[str, Any], monitor: str) -> float | None:
    """The `monitor` score a Lightning checkpoint was saved with (its ModelCheckpoint state), if any."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, Mapping) and state.get("monitor") == monitor:
            score = state.get("current_score")
            return None if score is None else float(score)
    return None

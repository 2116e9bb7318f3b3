"""Prompt templates: the paper's zero-shot instruction and the compact one of the embedded model.

The completion the model is expected to write after the prompt is " " + solution, then EOS.
"""

from __future__ import annotations

PAPER_TEMPLATE = (
    "Solve the following math problem step by step. Explain your reasoning, then give the final answer "
    "in \\boxed{}. Use the format:\n"
    "User: [question] Assistant: [reasoning] The final answer is: \\boxed{[answer]}\n\n"
    "User: {question} Assistant:"
)
COMPACT_TEMPLATE = "User: {question} Assistant:"
TEMPLATES = {"paper": PAPER_TEMPLATE, "compact": COMPACT_TEMPLATE}


class PromptBuilder:
    """Renders a question into a prompt, optionally wrapped as the user turn of the tokenizer's chat template."""

    def __init__(self, template: str = "paper", chat_template: bool = False):
        if template in TEMPLATES:
            template = TEMPLATES[template]
        elif "{question}" not in template:
            raise ValueError(
                f"unknown template {template!r}: use one of {sorted(TEMPLATES)} or a string containing '{{question}}'"
            )
        self.template = template
        self.chat_template = chat_template

    def __call__(self, question: str, tokenizer=None) -> str:
        # plain replace, not str.format: the templates contain literal braces (\boxed{})
        text = self.template.replace("{question}", question)
        if not self.chat_template:
            return text
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("chat_template=True needs a tokenizer that has a chat template")
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

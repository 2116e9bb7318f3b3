"""Prompt templates: the paper's zero-shot instruction and the compact one of the embedded model.

The completion the model is expected to write after the prompt is " " + solution, then EOS.
"""

from __future__ import annotations

import json

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

    def __init__(self, template: str = "paper", chat_template: bool | str = False):
        if template in TEMPLATES:
            template = TEMPLATES[template]
        elif "{question}" not in template:
            raise ValueError(
                f"unknown template {template!r}: use one of {sorted(TEMPLATES)} or a string containing '{{question}}'"
            )
        if chat_template not in (True, False, "auto"):
            raise ValueError(f"prompt.chat_template={chat_template!r} is not one of true, false, auto")
        self.template = template
        self.chat_template = chat_template

    def __call__(self, question: str, tokenizer=None) -> str:
        # plain replace, not str.format: the templates contain literal braces (\boxed{})
        text = self.template.replace("{question}", question)
        if not self.uses_chat_template(tokenizer):
            return text
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def uses_chat_template(self, tokenizer=None) -> bool:
        """Whether prompts are wrapped in the tokenizer's chat template ("auto": when it has one)."""
        has_one = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None
        if self.chat_template is True and not has_one:
            raise ValueError("prompt.chat_template=true needs a tokenizer that has a chat template")
        return has_one and self.chat_template is not False

    def export_chat_template(self, tokenizer=None) -> str:
        """A Jinja chat template that renders one user message (the question) into exactly this prompt.

        Saved with an exported policy, so that `apply_chat_template([{"role": "user", "content": q}],
        tokenize=False, add_generation_prompt=True)` gives the prompt it was trained on.
        """
        pieces = self.template.split("{question}")
        content = " ~ message['content'] ~ ".join(_jinja_string(p) for p in pieces)
        check = (
            "{% if messages | length != 1 or messages[0]['role'] != 'user' %}{{ raise_exception("
            "'this policy was trained on prompts made of one user message: the question') }}{% endif %}"
            "{% set message = messages[0] %}"
        )
        if not self.uses_chat_template(tokenizer):
            return check + "{{ " + content + " }}"
        wrap = "{% set messages = [{'role': 'user', 'content': " + content + "}] %}"
        return check + wrap + tokenizer.chat_template


def _jinja_string(text: str) -> str:
    """`text` as a Jinja string literal (JSON's escapes are the ones Jinja's string literals decode)."""
    return json.dumps(text, ensure_ascii=False)

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from soft_tokens.data.prompts import COMPACT_TEMPLATE, PAPER_TEMPLATE, PromptBuilder

Q = "Ann has 7 apples. She gets 5 more. How many apples does Ann have now?"


def tiny_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )
    tok.chat_template = chat_template
    return tok


def test_paper_template():
    text = PromptBuilder("paper")(Q)
    assert text.endswith(f"User: {Q} Assistant:")
    assert "step by step" in text and "\\boxed{}" in text
    assert "User: [question] Assistant: [reasoning] The final answer is: \\boxed{[answer]}" in text
    assert text == PAPER_TEMPLATE.replace("{question}", Q)
    assert PromptBuilder()(Q) == text  # paper is the default


def test_compact_and_custom_templates():
    assert COMPACT_TEMPLATE == "User: {question} Assistant:"
    assert PromptBuilder("compact")(Q) == f"User: {Q} Assistant:"
    assert PromptBuilder("Q: {question}\nA: \\boxed{}")("2+2?") == "Q: 2+2?\nA: \\boxed{}"
    assert PromptBuilder("compact")("What is {x}?") == "User: What is {x}? Assistant:"


def test_unknown_template_raises():
    with pytest.raises(ValueError, match="compact"):
        PromptBuilder("fancy")


def test_chat_template_wrapping():
    tok = tiny_tokenizer(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert (
        PromptBuilder("compact", chat_template=True)(Q, tok) == f"<|user|>User: {Q} Assistant:<|assistant|>"
    )


def test_chat_template_missing_raises():
    builder = PromptBuilder("compact", chat_template=True)
    with pytest.raises(ValueError, match="chat template"):
        builder(Q, tiny_tokenizer(None))
    with pytest.raises(ValueError, match="chat template"):
        builder(Q)

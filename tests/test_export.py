"""An exported policy/ says how to prompt it: a chat template giving the training prompt, and a model card."""

from __future__ import annotations

import json

import jinja2
import pytest
from helpers import compose_train
from transformers import AutoModelForCausalLM, AutoTokenizer

import train as train_script
from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.models import tiny
from soft_tokens.models.export import PROBE_QUESTIONS, chat_messages, save_tokenizer

QUESTIONS = [
    *PROBE_QUESTIONS,
    "Bob has 9 pens. He gives away 3. How many pens does Bob have now?",
    "  leading and trailing spaces  ",
    "{question} {{question}} %} {# not a comment #}",
    "",
]
# A Qwen-style chat template with a default system turn (what `chat_template: true/auto` wraps prompts in).
CHAT = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BUILDERS = {
    "compact": PromptBuilder("compact"),
    "paper": PromptBuilder("paper"),
    "custom": PromptBuilder("Q: {question}\n\\boxed{} again: {question}\nA:"),
    "paper_chat": PromptBuilder("paper", chat_template=True),
    "compact_auto": PromptBuilder("compact", chat_template="auto"),
}


def rendered(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(chat_messages(question), tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_saved_chat_template_renders_the_training_prompt(tmp_path, name):
    builder = BUILDERS[name]
    tok = tiny.tiny_tokenizer()
    if name.endswith(("_chat", "_auto")):
        tok.chat_template = CHAT
    original = tok.chat_template
    save_tokenizer(tok, builder, tmp_path)
    assert tok.chat_template == original  # the training tokenizer keeps its own template
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for q in QUESTIONS:
        assert rendered(loaded, q) == builder(q, tok), q
    if name.endswith(("_chat", "_auto")):
        assert rendered(loaded, "x").startswith(
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
        )


def test_saved_chat_template_refuses_other_conversations(tmp_path):
    save_tokenizer(tiny.tiny_tokenizer(), PromptBuilder("compact"), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    two = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]
    with pytest.raises(jinja2.TemplateError, match="one user message"):
        tok.apply_chat_template(two, tokenize=False, add_generation_prompt=True)


def test_auto_chat_template_uses_the_tokenizer_template_only_when_there_is_one():
    tok = tiny.tiny_tokenizer()
    builder = PromptBuilder("compact", chat_template="auto")
    assert builder("2+2?", tok) == "User: 2+2? Assistant:"
    tok.chat_template = CHAT
    assert builder("2+2?", tok).endswith(
        "<|im_start|>user\nUser: 2+2? Assistant:<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="prompt.chat_template"):
        PromptBuilder("compact", chat_template="yes")


def test_trained_policy_folder_has_the_prompt_and_a_model_card(tmp_path):
    overrides = ["debug=fast", "callbacks.rich_progress_bar=null", "logger=csv"]
    cfg = compose_train(overrides, tmp_path)
    metrics = train_script.train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    builder = PromptBuilder("compact")  # the embedded model's prompt (conf/model/embedded.yaml)
    for folder in ("policy", "policy_best"):
        path = tmp_path / folder
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        for q in QUESTIONS:
            assert rendered(tok, q) == builder(q), (folder, q)
        card = (path / "README.md").read_text()
        assert f"- base model: `{cfg.model.name_or_path}`" in card
        assert "- representer (CoT tokens in training): `HardRepresenter(" in card
        assert "- estimator: `RLOOEstimator(" in card or "- estimator: `RLOO" in card
        assert "apply_chat_template" in card and builder(PROBE_QUESTIONS[0]) in card
        assert model.config.vocab_size == len(tok) or model.config.vocab_size >= len(tok)
    final = (tmp_path / "policy" / "README.md").read_text()
    assert f"- optimizer steps: {summary['global_step']}" in final
    assert f"`val/accuracy`): {metrics['val/accuracy']:.4f}" in final
    best = (tmp_path / "policy_best" / "README.md").read_text()
    assert "- optimizer steps: " in best and "not measured" not in best

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scripts import build_embedded_model
from soft_tokens.data.arith import generate_split
from soft_tokens.data.prompts import PromptBuilder

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "embedded"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(ASSETS)


def test_tokenizer_specials(tokenizer, model):
    assert tokenizer.padding_side == "left"
    assert tokenizer.convert_ids_to_tokens(
        [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    ) == [
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    ]
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id


def test_digits_one_per_token(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(
        tokenizer("12 + 3405 = 3417.", add_special_tokens=False).input_ids
    )
    digits = [t for t in tokens if any(c.isdigit() for c in t)]
    assert digits == list("1234053417")


def test_stop_strings_tokenize_stably(tokenizer):
    def enc(s):
        return tokenizer(s, add_special_tokens=False).input_ids

    stop, boxed = enc(" The final answer is:"), enc("\\boxed{")
    assert enc("The final answer is: \\boxed{") == enc("The final answer is:") + enc(" ") + boxed
    prompt_of = PromptBuilder("compact")
    for ex in generate_split("val", 20):
        prompt, completion = prompt_of(ex.question), " " + ex.solution
        ids = enc(completion)
        assert tokenizer(prompt + completion).input_ids == tokenizer(prompt).input_ids + ids
        i = len(ids) - len(stop) - 1 - len(boxed) - len(enc(ex.answer)) - 1
        assert ids[i : i + len(stop)] == stop
        assert ids[i + len(stop) + 1 : i + len(stop) + 1 + len(boxed)] == boxed
        assert tokenizer.decode(ids) == completion


@pytest.mark.slow
def test_greedy_accuracy_matches_model_card(tokenizer, model):
    card = (ASSETS / "README.md").read_text()
    recorded = float(
        re.search(r"greedy accuracy on the first 100 val problems \(seed 0\): ([0-9.]+)", card).group(1)
    )
    build = build_embedded_model
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as in the build, so float reductions run in the same order
    try:
        acc = build.greedy_accuracy(
            model,
            tokenizer,
            generate_split("val", 100, seed=0),
            max_new_tokens=model.generation_config.max_new_tokens,
        )
    finally:
        torch.set_num_threads(threads)
    assert acc == pytest.approx(recorded, abs=1e-9)
    assert 0.2 <= acc <= 0.6

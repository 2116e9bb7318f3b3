"""Shared fixtures: a tiny tokenizer and tiny Llama models built from a config (no network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from soft_tokens.models import tiny

# Tests run tiny models: one intra-op thread avoids oversubscription (and is much faster on a busy machine).
# SOFT_TOKENS_TEST_THREADS=N runs them with N threads (other GEMM blockings, other rounding).
torch.set_num_threads(int(os.environ.get("SOFT_TOKENS_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return tiny.tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer) -> LlamaForCausalLM:
    return tiny.tiny_llama(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random Llama and tokenizer saved in Hugging Face format."""
    path = tmp_path_factory.mktemp("tiny")
    tiny.tiny_llama(len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path

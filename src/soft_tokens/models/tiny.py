"""Tiny random models and a tiny tokenizer, for tests and benchmark smoke runs (no download)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "User: Ann has 7 apples. She gets 5 more. How many apples does Ann have now? Assistant:"
    " 7 + 5 = 12. The final answer is: \\boxed{12}",
    "User: Bob has 9 pens. He gives away 3. How many pens does Bob have now? Assistant:"
    " 9 - 3 = 6. The final answer is: \\boxed{6}",
    "\\frac{1}{2} {} {{ }} x y z 0 1 2 3 4 5 6 7 8 9 + - = . , : ?",
]


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (one token per digit) with pad/bos/eos = 0/1/2, trained on a few lines.

    Any tokenizer works for a model with random weights: ids only need to be below the model's vocabulary;
    ids the tokenizer does not know decode to nothing.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        padding_side="left",
    )


def tiny_llama(
    vocab_size: int,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    max_positions: int = 512,
    tied: bool = False,
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama (float32, eval mode) with pad/bos/eos = 0/1/2; `tied`: the head is E."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()

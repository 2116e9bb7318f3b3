"""The knobs of the continuous-token RL study: frozen / untied E, E detached in the mixture, CoT gradient
weight, the optimizer choice (docs/continuous_rl_study.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_train
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import train as train_script
from soft_tokens.config_types import ConfigTypeError, check_config_types
from soft_tokens.models import tiny
from soft_tokens.models.loading import ModelConfig, untie_embeddings
from soft_tokens.representers import Replay, SoftRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.logprobs import rollout_log_probs, scale_gradient


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random Llama whose LM head is its input embedding matrix, saved in Hugging Face format."""
    path = tmp_path_factory.mktemp("tied")
    tiny.tiny_llama(len(tiny_tokenizer), tied=True).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


EMBEDDED = Path(__file__).resolve().parents[1] / "assets" / "embedded"


def _train(tmp_path, *extra: str) -> None:
    """Two RL steps of the embedded (tied) model with soft tokens sampled at temperature 1: rewards vary."""
    overrides = [
        "debug=fast",
        "representer=soft",
        "sampling_temperature=1.0",
        "module.samples_per_prompt=4",
        "data.batch_size=4",
        "module.rollout.max_cot_tokens=64",  # debug=fast's 16 cut every CoT: all rewards equal
        "module.optim.warmup_steps=0",
        "module.optim.lr=1e-2",
        "callbacks.rich_progress_bar=null",
        "logger=csv",
        *extra,
    ]
    train_script.train(compose_train(overrides, tmp_path))


@pytest.mark.slow
def test_frozen_embeddings_are_bit_identical_after_training(tmp_path, tied_model_dir):
    _train(tmp_path, "module.freeze_embeddings=true")
    before = load_file(EMBEDDED / "model.safetensors")
    after = load_file(tmp_path / "policy" / "model.safetensors")
    key = "model.embed_tokens.weight"
    assert torch.equal(before[key], after[key])
    changed = [k for k in before if k != key and not torch.equal(before[k], after[k])]
    assert changed, "nothing else trained either: the test would pass for a run that did nothing"


def test_untie_embeddings_copies_the_head_and_keeps_the_function(tied_model_dir):
    model = ModelConfig(name_or_path=str(tied_model_dir), untie_embeddings=True).load_model()
    tied = ModelConfig(name_or_path=str(tied_model_dir)).load_model()
    head, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is not emb and head.data_ptr() != emb.data_ptr() and torch.equal(head, emb)
    assert not model.config.tie_word_embeddings
    ids = torch.tensor([[1, 5, 9, 14]])
    assert torch.equal(model(ids).logits, tied(ids).logits)
    assert untie_embeddings(model) is model and model.get_output_embeddings().weight is head


@pytest.mark.slow
def test_untied_model_trains_apart_and_reloads_with_from_pretrained(tmp_path, tied_model_dir):
    _train(tmp_path, "model.untie_embeddings=true")
    saved = load_file(tmp_path / "policy" / "model.safetensors")
    assert not torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert not reloaded.config.tie_word_embeddings
    assert torch.equal(reloaded.lm_head.weight, saved["lm_head.weight"])
    assert torch.equal(reloaded.model.embed_tokens.weight, saved["model.embed_tokens.weight"])


@pytest.mark.parametrize("embedding_grad", [True, False])
def test_embedding_grad_false_gives_E_no_gradient_from_the_cot_term(embedding_grad):
    torch.manual_seed(0)
    E = torch.randn(7, 4, requires_grad=True)
    logits = torch.randn(3, 7, requires_grad=True)
    rep = SoftRepresenter(tau=0.5, gamma=0.5, embedding_grad=embedding_grad)
    fed = torch.randn(3, 4)
    ref_logits = torch.randn(3, 7)
    loss = rep.log_prob(Replay(logits, fed, logits.argmax(-1), E)).sum()
    loss = (
        loss
        + rep.kl(
            Replay(logits, fed, logits.argmax(-1), E), Replay(ref_logits, fed, logits.argmax(-1), E.detach())
        ).sum()
    )
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert (E.grad is not None and E.grad.abs().sum() > 0) == embedding_grad


def test_scale_gradient_keeps_values_and_scales_gradients():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = scale_gradient(x * 2, torch.tensor([True, False, True]), 0.25)
    assert torch.equal(y, torch.tensor([2.0, 4.0, 6.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.5, 2.0, 0.5]))


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_cot_grad_weight_scales_only_the_cot_steps_gradient(tiny_model, tiny_tokenizer, weight):
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=3))
    rep = SoftRepresenter()
    ro = engine.generate(
        tiny_model, ["User: Ann has 7 apples. Assistant:"] * 2, rep, torch.Generator().manual_seed(0)
    )
    params = [p for p in tiny_model.parameters()]

    def grads(w: float, steps: torch.Tensor) -> list[torch.Tensor]:
        lp = rollout_log_probs(tiny_model, ro, rep, cot_grad_weight=w)
        return lp.logp, torch.autograd.grad((lp.logp * steps).sum(), params, allow_unused=True)

    cot, answer = ro.cot_mask.float(), (ro.gen_mask & ~ro.cot_mask).float()
    full_logp, full_cot = grads(1.0, cot)
    logp, scaled_cot = grads(weight, cot)
    assert torch.equal(logp, full_logp)  # values (and so every ratio) are unchanged
    for g, f in zip(scaled_cot, full_cot):
        if f is not None:
            torch.testing.assert_close(g, weight * f, rtol=0, atol=1e-6 * float(f.abs().max()))
    for g, f in zip(grads(weight, answer)[1], grads(1.0, answer)[1]):
        if f is not None:
            assert torch.equal(g, f)


@pytest.mark.slow
def test_sgd_trains(tmp_path):
    _train(tmp_path, "module.optim.name=sgd", "module.optim.momentum=0.5")
    before = load_file(EMBEDDED / "model.safetensors")
    after = load_file(tmp_path / "policy" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_unknown_optimizer_is_refused_by_name(tmp_path):  # by the config check, before anything is built
    with pytest.raises(ConfigTypeError, match="module.optim.name='lion': must be one of adamw, sgd"):
        check_config_types(compose_train(["module.optim.name=lion"], tmp_path))

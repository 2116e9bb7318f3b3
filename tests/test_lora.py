"""LoRA through peft: adapters only train, the reference is the adapter-disabled policy, exports merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_train
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import train as train_script
from soft_tokens.models import tiny
from soft_tokens.models.checkpoints import load_policy
from soft_tokens.models.loading import ModelConfig
from soft_tokens.models.lora import AdapterDisabled, LoraSettings, add_adapters, is_peft, merged_copy
from soft_tokens.representers import HardRepresenter, SoftRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine
from soft_tokens.rollout.logprobs import rollout_log_probs
from soft_tokens.training.builders import build_module

EMBEDDED = Path(__file__).resolve().parents[1] / "assets" / "embedded"
LORA = ["model.lora.r=4", "model.lora.alpha=8", "model.lora.target_modules=[q_proj,v_proj,down_proj]"]
PROMPTS = ["User: Ann has 7 apples. She gets 5 more. How many? Assistant:", "User: 9 - 3? Assistant:"] * 2
# float32 rounding (eps 1.2e-7) of a two-layer decoder, W x + B A x vs (W + B A) x, amplified by the soft
# log-density's 1 / sigma^2 (sigma = 0.33 RMS(E)) over d = 32 dimensions: well under 1e-3 in absolute terms.
ATOL = 1e-3


def lora_policy(tiny_tokenizer, seed: int = 3):
    """A tiny Llama with LoRA adapters whose B matrices are non-zero (so the adapters change the outputs)."""
    base = tiny.tiny_llama(len(tiny_tokenizer))
    model = add_adapters(base, LoraSettings(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_only_adapters_train_and_E_is_the_base_matrix(tiny_tokenizer):
    base = tiny.tiny_llama(len(tiny_tokenizer))
    E, head = base.get_input_embeddings().weight, base.get_output_embeddings()
    model = add_adapters(base, LoraSettings(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert model.get_input_embeddings().weight is E and model.get_output_embeddings() is head
    assert not E.requires_grad
    assert add_adapters(base, LoraSettings(r=None)) is base  # r null: nothing changes


def test_adapters_on_the_embeddings_are_refused(tiny_tokenizer):
    base = tiny.tiny_llama(len(tiny_tokenizer))
    with pytest.raises(ValueError, match="model.lora.target_modules.*input embeddings"):
        add_adapters(base, LoraSettings(r=4, target_modules=["embed_tokens", "q_proj"]))


def test_soft_rollout_and_log_probs_through_the_peft_wrapper(tiny_tokenizer):
    """A soft rollout of the LoRA policy replays to its decode-time log-probs; so does the merged model."""
    model = lora_policy(tiny_tokenizer)
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=4))
    rep = SoftRepresenter(tau=0.5, gamma=0.33)
    ro = engine.generate(model, PROMPTS, rep, generator=torch.Generator().manual_seed(0))
    assert ro.fed is not None and ro.cot_mask.any()
    with torch.no_grad():
        lp = rollout_log_probs(model, ro, rep)
        merged = rollout_log_probs(merged_copy(model), ro, rep)
    cot = ro.cot_mask
    torch.testing.assert_close(lp.logp[cot], ro.logp[cot], rtol=0, atol=ATOL)
    torch.testing.assert_close(merged.logp, lp.logp, rtol=0, atol=ATOL)
    # the adapters matter: without them the log-probs of the same rollout differ
    with model.disable_adapter(), torch.no_grad():
        plain = rollout_log_probs(model, ro, rep)
    assert (plain.logp - lp.logp).abs().max() > 100 * ATOL

    model.train()
    lp = rollout_log_probs(model, ro, rep)
    (-(lp.logp * lp.mask).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads.values())


def test_reference_is_the_policy_with_adapters_disabled(tiny_tokenizer):
    model = lora_policy(tiny_tokenizer)
    base = tiny.tiny_llama(len(tiny_tokenizer))  # the same weights as the LoRA model's base, separately
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=4))
    for rep in (SoftRepresenter(tau=0.5, gamma=0.33), HardRepresenter()):
        ro = engine.generate(model, PROMPTS, rep, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = rollout_log_probs(model, ro, rep, ref_model=AdapterDisabled(model))
            want = rollout_log_probs(model, ro, rep, ref_model=base)
        torch.testing.assert_close(got.kl, want.kl, rtol=0, atol=0)
        assert float(got.kl.abs().max()) > 0
        torch.testing.assert_close(got.logp, want.logp, rtol=0, atol=0)  # the adapters are back on after


def test_module_with_lora_and_beta_loads_one_model(tmp_path, tiny_model_dir):
    cfg = compose_train(
        ["debug=fast", f"model.name_or_path={tiny_model_dir}", "estimator.beta=0.1", *LORA], tmp_path
    )
    module = build_module(cfg)
    module.configure_model()
    assert is_peft(module.policy) and module._ref == []
    assert isinstance(module.ref_model, AdapterDisabled) and module.ref_model.model is module.policy
    assert all("lora_" in n for n, p in module.policy.named_parameters() if p.requires_grad)
    full = compose_train(
        ["debug=fast", f"model.name_or_path={tiny_model_dir}", "estimator.beta=0.1"], tmp_path
    )
    plain = build_module(full)
    plain.configure_model()
    assert not is_peft(plain.policy) and len(plain._ref) == 1


def test_train_with_lora_checkpoints_adapters_and_exports_merged(tmp_path):
    """The embedded model (its rewards vary, so the adapters learn) with LoRA and a KL term."""
    overrides = [
        "debug=fast", "data.batch_size=4", "module.samples_per_prompt=4", "callbacks.rich_progress_bar=null",
        "logger=csv", "sampling_temperature=1.0", "estimator.beta=0.05", "module.optim.lr=1e-2",
        "module.optim.warmup_steps=0", *LORA,
    ]  # fmt: skip
    train_script.train(compose_train(overrides, tmp_path / "run"))
    ckpt_path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "policy")  # plain transformers
    base = AutoModelForCausalLM.from_pretrained(EMBEDDED)
    saved = load_file(tmp_path / "run" / "policy" / "model.safetensors")
    assert not any("lora" in k for k in saved)
    best = load_file(tmp_path / "run" / "policy_best" / "model.safetensors")  # the best checkpoint, merged
    assert best.keys() == saved.keys()
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, exported.state_dict()[k])]
    assert changed and all(any(m in k for m in ("q_proj", "v_proj", "down_proj")) for k in changed)

    # the checkpoint's adapters, merged by evaluate.py, give the exported weights
    from_ckpt, _, _ = load_policy(ModelConfig(name_or_path=str(EMBEDDED)), ckpt_path)
    ids = torch.tensor([[1, 5, 9, 14, 20]])
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(ids).logits, exported(ids).logits, rtol=0, atol=1e-5)

    # a LoRA run resumes from its adapter-only checkpoint
    resumed = compose_train(
        [*overrides, "trainer.max_steps=3", f"ckpt_path={ckpt_path}"], tmp_path / "resumed"
    )
    train_script.train(resumed)
    assert (
        torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    )

"""The benchmark scripts run end to end at tiny shapes (`--tiny`) and write their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from soft_tokens.representers.sampling import sample_categorical
from soft_tokens.representers.soft import SoftRepresenter, _sparse_mixture

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(ROOT / "bench" / script), "--tiny", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_rollout_bench_tiny(tmp_path):
    # Without the static-cache anchor, whose compilation alone takes about a minute per model and length.
    proc = run_bench("rollout.py", "--out", str(tmp_path), "--no-static-anchor")
    res = json.loads((tmp_path / "rollout_tiny.json").read_text())
    assert (tmp_path / "rollout_tiny.md").read_text().startswith("# Rollout throughput")
    variants = {(r["model"], r["L"], r["variant"]) for r in res["rows"]}
    models = {m for m, _, _ in variants}
    assert len(models) == 2 and len(variants) == 2 * 2 * 5  # 2 models x (L, 4L) x (generate + 4 rollouts)
    for r in res["rows"]:
        assert r["tok_per_s"] > 0
    # Every variant generated the same number of tokens at a given model and length.
    for m in models:
        for L in {r["L"] for r in res["rows"] if r["model"] == m}:
            assert len({r["tokens"] for r in res["rows"] if r["model"] == m and r["L"] == L}) == 1
    assert any(r["part"].startswith("soft.mixture") for r in res["micro"])
    assert res["targets"] and "Targets" in proc.stdout


@pytest.mark.slow
def test_train_step_bench_tiny(tmp_path):
    run_bench("train_step.py", "--representers", "soft", "--out", str(tmp_path))
    res = json.loads((tmp_path / "train_step_tiny.json").read_text())
    rows = {(r["representer"], r["impl"]): r for r in res["rows"]}
    assert set(rows) == {("soft", "ours"), ("soft", "naive")}
    for r in rows.values():
        assert r["tok_per_s"] > 0 and r["step_peak_MB"] > 0 and r["fwd_peak_MB"] > 0
        assert r["logp_max_rel_err"] < 1e-4  # ours and the naive version compute the same log-probs


# The fast paths the benchmarks led to give what the plain computations give.


def test_sample_categorical_draws_from_the_weights():
    w = torch.tensor([0.2, 0.0, 1.2, 0.6])  # unnormalised; a zero weight is never drawn
    ids = sample_categorical(w.expand(100_000, 4), torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    assert freq[1] == 0
    torch.testing.assert_close(freq, w / w.sum(), rtol=0, atol=0.01)
    again = sample_categorical(w.expand(100_000, 4), torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)
    with pytest.raises(ValueError):
        sample_categorical(torch.tensor([[0.5, float("nan")]]))


def dense_mixture(logits, E, tau):
    return torch.softmax(logits.float() / tau, dim=-1) @ E


def test_sparse_mixture_equals_the_dense_matmul():
    g = torch.Generator().manual_seed(0)
    V, tau = 20_000, 1e-4
    E = torch.randn(V, 8, generator=g)
    logits = 3 * torch.randn(5, V, generator=g)
    h, ids = _sparse_mixture(logits, E, tau)  # fuzzy: one nonzero probability per row
    assert torch.equal(h, dense_mixture(logits, E, tau))
    assert torch.equal(ids, logits.argmax(-1))
    # Several nonzero probabilities: equal up to float32 rounding of the normalisation and of a sum of 4 terms.
    near = torch.full((4, V), -10.0)
    near[:, [3, 70, 9000, 9500]] = torch.tensor([0.0, -0.5 * tau, -1.2 * tau, 0.0])  # 3 and 9500 tie
    h, ids = _sparse_mixture(near, E, tau)
    ulps = 8 * 2.0**-24
    torch.testing.assert_close(h, dense_mixture(near, E, tau), rtol=ulps, atol=ulps * float(E.abs().max()))
    assert (ids == 3).all() and torch.equal(ids, near.argmax(-1))  # a tie goes to the first, as argmax
    # A token 100 tau below the max has a subnormal probability, exp(-100) = 3.7e-44: still counted (a row of
    # E at 1e38 makes it visible); one 300 tau below has probability exactly 0 and is left out.
    big = E.clone()
    big[[70, 9000]] = 1e38
    edge = torch.full((1, V), -10.0)
    edge[0, [3, 70, 9000]] = torch.tensor([0.0, -100 * tau, -300 * tau])
    h, _ = _sparse_mixture(edge, big, tau)
    torch.testing.assert_close(h, dense_mixture(edge, big, tau), rtol=ulps, atol=0.0)
    assert (h - E[3]).abs().max() > 1e-6
    assert _sparse_mixture(logits, E, 1.0) is None  # dense: left to the matmul
    assert _sparse_mixture(logits[:, :4096], E[:4096], tau) is None  # small vocabulary: the matmul is cheaper
    bad = logits.clone()
    bad[1, 5] = float("nan")
    assert _sparse_mixture(bad, E, tau) is None  # non-finite logits: the dense path propagates them
    # Gradients: the dense ones, in the logits and in E (the teacher-forced pass and the KL use them).
    upstream = torch.randn(4, 8, generator=g)
    grads = []
    for mix in (lambda z, e: _sparse_mixture(z, e, tau)[0], lambda z, e: dense_mixture(z, e, tau)):
        z, e = near.clone().requires_grad_(), E.clone().requires_grad_()
        (mix(z, e) * upstream).sum().backward()
        grads.append((z.grad, e.grad))
    (sz, se), (dz, de) = grads
    assert torch.equal(sz != 0, dz != 0) and int((dz != 0).sum()) == 4 * 4  # the 4 tokens of each row
    # dh/dz_j = p_j (E_j - h) / tau: rounding of h and of the sums, amplified by 1 / tau.
    scale = float(E.abs().max() * upstream.abs().max()) * 8 / tau
    torch.testing.assert_close(sz, dz, rtol=ulps, atol=ulps * scale)
    torch.testing.assert_close(se, de, rtol=ulps, atol=ulps * float(upstream.abs().max()))
    rep = SoftRepresenter(tau=tau)
    z = logits.clone().requires_grad_()
    rep.mixture(z, E).sum().backward()  # one nonzero per row: a gradient of exactly zero, as the dense one
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.slow
def test_lora_memory_bench_tiny(tmp_path):
    run_bench("lora_memory.py", "--out", str(tmp_path))
    res = json.loads((tmp_path / "lora_memory_tiny.json").read_text())
    full, lora = (next(r for r in res["rows"] if r["variant"] == v) for v in ("full", "lora"))
    assert full["global_step"] == lora["global_step"] == 1  # one optimizer step ran
    assert full["reference_GB"] == full["weights_GB"] and lora["reference_GB"] == 0  # no second copy
    for r in (full, lora):
        # float32 AdamW: two moments per trainable weight, plus a scalar step count per tensor (< 1%)
        assert r["adamw_GB"] == pytest.approx(2 * r["grads_GB"], rel=1e-2) and r["measured_peak_GB"] > 0
    assert lora["trainable"] < full["trainable"] / 4 and lora["counted_GB"] < full["counted_GB"] / 2
    full_8b = res["estimate_8b"][0]
    assert full_8b["params"] == 8_030_261_248  # Llama 3.1 8B's published parameter count
    assert full_8b["beta_0_GB"] == pytest.approx(16 * 8.030261248) and full_8b[
        "beta_gt_0_GB"
    ] == pytest.approx(20 * 8.030261248)


def test_bandwidth_bound_by_hand(tmp_path):
    # 1M bf16 parameters (2 MB) + KV of 8 rows x 10 positions (prompt 5 + half of 10 generated) x 2 layers x
    # (K, V) x 2 KV heads x head dim 16 x 2 bytes = 20,480 B per step; at 1 GB/s: 8 / 2.02048e-3 s tok/s.
    model = {"dtype": "bfloat16", "hidden": 64, "heads": 4, "kv_heads": 2, "layers": 2, "params_M": 1.0}
    bound = 8 / (2_020_480 / 1e9)
    row = {"model": "m", "L": 4, "variant": "hard", "batch": 8, "prompt_len": 5, "tokens": 80}
    payload = {"machine": {}, "models": {"m": model}, "rows": [{**row, "tok_per_s": bound / 2}]}
    path = tmp_path / "rollout.json"
    path.write_text(json.dumps(payload))
    cmd = [sys.executable, str(ROOT / "bench" / "bandwidth_bound.py"), str(path), "--bandwidth-gbs", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert f"| m | 4 | hard | {bound / 2:.0f} | {bound:.0f} | 0.50 |" in out

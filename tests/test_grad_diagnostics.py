"""scripts/grad_diagnostics.py: the signal-to-noise estimate, its bootstrap interval and a tiny run."""

import torch

from scripts import grad_diagnostics as gd


def test_snr_of_synthetic_estimates_is_signal_over_noise():
    # g_k = s + n_k with |s|^2 = 1 and E|n|^2 = 4 (P = 400 dims of variance 0.01): SNR 0.25.
    g = torch.Generator().manual_seed(0)
    s = torch.zeros(400)
    s[0] = 1.0
    est = s + 0.1 * torch.randn(200, 400, generator=g)
    gram = est.double() @ est.double().T
    snr = gd.gram_snr(gram)
    lo, hi = gd.bootstrap_interval(gram, draws=200)
    assert abs(snr - 0.25) < 0.05 and lo < snr < hi and lo < 0.25 < hi
    # A resample that repeats a batch leaves its self-pairs out of the signal: duplicates change nothing.
    idx = torch.tensor([0, 0, 1, 1])
    assert gd.gram_snr(gram, idx) == gd.gram_snr(gram[:2, :2])


def test_tiny_run_reports_snr_interval_and_forks(tiny_model_dir, capsys):
    rows = gd.main(
        [
            "--model",
            str(tiny_model_dir),
            "--representers",
            "hard,soft",
            "--B",
            "2",
            "--G",
            "2",
            "--max-cot",
            "4",
            "--snr",
            "3",
            "--prompt-seeds",
            "0,1",
            "--noise-top-k",
            "3",
            "--control-variate",
        ]
    )
    assert {r["prompt_seed"] for r in rows} == {0, 1} and {r["representer"] for r in rows} == {"hard", "soft"}
    row = rows[0]
    assert len(row["snr_90ci"]) == 2 and 0 <= row["steps_entropy_ge_0.1"] <= 1
    assert 1 <= row["distinct_cots_per_group"] <= 2 and 0 <= row["groups_with_reward_variance"] <= 1
    assert rows[-1]["noise_top_k"] == 3
    terms = {(r["representer"], r["term"]) for r in rows}
    assert ("soft", "cot_cv") in terms and ("soft", "total_cv") in terms and ("hard", "cot_cv") not in terms

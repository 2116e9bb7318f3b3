"""scripts/grad_diagnostics.py: the signal-to-noise estimate, its bootstrap interval and a tiny run."""

import math

import pytest
import torch
from script_usage import usage_error

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


# ----- representer names map to train.py's configs; bad inputs are usage errors (issue 34, items 8 and 9)


def _train_representer(name: str):
    from helpers import compose_config
    from hydra.utils import instantiate

    return instantiate(compose_config("train", [f"representer={name}"]).representer)


def test_representer_names_build_what_train_builds():
    from soft_tokens.representers import GumbelSoftmaxRepresenter, HardRepresenter, SoftRepresenter

    args = gd.parse(["--representers", "hard,soft,fuzzy,gumbel", "--gammas", "0.33"])
    gumbel = gd.build("gumbel", 0.33, args)
    assert type(gumbel) is GumbelSoftmaxRepresenter and (gumbel.tau, gumbel.top_k) == (0.1, 10)
    assert repr(gumbel) == repr(_train_representer("gumbel"))
    assert repr(gd.build("soft", 0.33, args)) == repr(_train_representer("soft"))
    assert repr(gd.build("fuzzy", 0.33, args)) == repr(_train_representer("fuzzy"))  # tau 1e-4 both
    hard = gd.build("hard", 0.0, args)
    assert type(hard) is HardRepresenter and hard.temperature == gd.SAMPLING_TEMPERATURE
    soft = gd.build("soft", 0.25, gd.parse(["--noise-top-k", "3"]))
    assert type(soft) is SoftRepresenter and soft.gamma == 0.25 and soft.placed.top_k == 3
    # the paper's placements (Appendix F.2) reach the representer as train.py's representer.noise_on does
    top5 = gd.build("soft", 1.0, gd.parse(["--noise-on", "top_k_logits", "--noise-logits-top-k", "5"]))
    assert top5.noise_on == "top_k_logits" and top5.upstream.top_k == 5 and top5.gamma == 1.0
    hidden = gd.build("fuzzy", 0.33, gd.parse(["--noise-on", "hidden"]))
    assert hidden.noise_on == "hidden" and hidden.tau == 1e-4
    assert gd.noise_knobs("hard", gd.parse(["--noise-on", "logits"]))["noise_on"] == "embedding"
    # gamma applies where the representer has it: hard and gumbel run once whatever --gammas lists
    args = gd.parse(["--representers", "hard,gumbel,soft", "--gammas", "0.1,0.2"])
    assert gd.settings(args) == [("hard", 0.0), ("gumbel", 0.0), ("soft", 0.1), ("soft", 0.2)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--representers", "hard,sfot"],
            "unknown representer 'sfot'; the representers are fuzzy, gumbel, hard,",
        ),
        (
            ["--representers", "soft_thinking"],
            "--representers soft_thinking: a training-free inference setting",
        ),
        (["--gammas", "abc"], "argument --gammas: 'abc' is not a number"),
        (["--gammas", "-1"], "argument --gammas: -1 must be a finite number >= 0"),
        (["--prompt-seeds", "0,,1"], "argument --prompt-seeds: '0,,1': an empty item in the comma list"),
        (["--B", "0"], "argument --B: 0 is below 1"),
        (["--G", "x"], "argument --G: 'x' is not an integer"),
        (["--snr", "1"], "argument --snr: K = 1 has no pairs of batches"),
        (["--noise-top-k", "1"], "argument --noise-top-k: 1 is below 2"),
        (["--answer-temperature", "0"], "argument --answer-temperature: 0 must be a finite number > 0"),
        (["--model", "/no/such/model"], "--model /no/such/model: no such folder"),
    ],
)
def test_bad_arguments_end_in_a_usage_message(argv, message, capsys):
    assert message in usage_error(gd.main, argv, capsys)


def test_gumbel_runs_as_gumbel(tiny_model_dir):
    argv = [
        "--model",
        str(tiny_model_dir),
        "--representers",
        "gumbel",
        "--B",
        "1",
        "--G",
        "2",
        "--max-cot",
        "3",
    ]
    (row,) = gd.main(argv)
    assert row["representer"] == "gumbel" and row["gamma"] == 0.0 and row["noise_top_k"] is None
    assert math.isfinite(row["cot_logp_per_step"]) and math.isfinite(row["grad_norm_cot"])

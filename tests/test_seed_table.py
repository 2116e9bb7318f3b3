"""scripts/seed_table.py: per-seed scores, their mean and its standard error over seeds."""

import json

from scripts import seed_table


def _results(path, greedy: float, sample: float) -> str:
    settings = [
        {"name": "hard_greedy", "n_problems": 500, "pass_at_k": {"1": greedy}, "pass_at_k_se": {"1": 0.02}},
        {"name": "hard_sample", "n_problems": 500, "pass_at_k": {"1": 0.3, "32": sample}},
    ]
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"n_problems": 500, "settings": settings}))
    return str(path)


def test_mean_and_standard_error_over_seeds_by_hand(tmp_path):
    a = _results(tmp_path / "a", 0.40, 0.90)
    b = _results(tmp_path / "b", 0.50, 0.94)
    text = seed_table.main(["--group", f"hard={a},{b}", "--k", "32"])
    # mean 45.0, sd 7.07 -> SE 5.0; pass@32 92.0 ± 2.0; per-run SE from the file (2.0) or binomial
    # sqrt(0.9 * 0.1 / 500) = 1.34% and sqrt(0.94 * 0.06 / 500) = 1.06%: mean 1.2.
    assert (
        "| hard | 2 | 500 | 45.0 ± 5.0 (40.0 / 50.0; per-run SE 2.0) | 92.0 ± 2.0 (90.0 / 94.0; per-run SE 1.2) |"
        in text
    )


def test_a_seed_split_over_two_evaluations(tmp_path):
    a = _results(tmp_path / "a", 0.40, 0.90)
    b = _results(tmp_path / "b", 0.50, 0.94)
    text = seed_table.main(["--group", f"hard={a}+{b}"])
    assert "| hard | 1 | 500 | 40.0 (one run; its SE 2.0) |" in text  # the first file's setting counts

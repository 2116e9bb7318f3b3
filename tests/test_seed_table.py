"""scripts/seed_table.py: per-seed scores, their mean and its standard error over seeds."""

import json

import pytest
from script_usage import usage_error

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


def test_columns_and_the_difference_to_a_baseline_by_hand(tmp_path):
    h = [_results(tmp_path / f"h{i}", g, 0.9) for i, g in enumerate((0.40, 0.50))]
    s = [_results(tmp_path / f"s{i}", g, 0.9) for i, g in enumerate((0.44, 0.46, 0.48))]
    text = seed_table.main(
        ["--group", f"hard={','.join(h)}", "--group", f"soft={','.join(s)}", "--column", "hard_greedy@1"]
        + ["--column", "hard_sample@1", "--baseline", "hard"]
    )
    # soft: mean 46.0, sd 2.0 -> SE 1.155; hard: 45.0 ± 5.0; difference +1.00 ± sqrt(5^2 + 1.155^2) = 5.13.
    # hard_sample@1 is 30.0 in every file: difference 0 ± 0.
    assert "| hard greedy pass@1 (%) | hard sample pass@1 (%) | hard greedy pass@1 - hard |" in text
    assert "| soft | 3 | 500 | 46.0 ± 1.2 (44.0 / 46.0 / 48.0; per-run SE 2.0) | 30.0 ± 0.0" in text
    assert text.splitlines()[-1].endswith("| +1.00 ± 5.13 | +0.00 ± 0.00 |")
    assert "| hard | 2 | 500 | 45.0 ± 5.0 (40.0 / 50.0; per-run SE 2.0) |" in text
    one = seed_table.main(["--group", f"hard={','.join(h)}", "--group", f"base={s[0]}", "--baseline", "hard"])
    assert one.splitlines()[-1].endswith("| -1.00 ± 5.00* | +0.00 ± 0.00* |")  # 44 - 45; pass@32 equal


def test_a_seed_split_over_two_evaluations(tmp_path):
    a = _results(tmp_path / "a", 0.40, 0.90)
    b = _results(tmp_path / "b", 0.50, 0.94)
    text = seed_table.main(["--group", f"hard={a}+{b}"])
    assert "| hard | 1 | 500 | 40.0 (one run; its SE 2.0) |" in text  # the first file's setting counts


# ----- missing or unreadable inputs and garbage arguments (issue 34, item 9)


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("hard", "argument --group: 'hard': expected LABEL=DIR[,DIR...]"),
        ("hard=", "argument --group: 'hard=': expected LABEL=DIR[,DIR...]"),
        ("hard={tmp}/typo", "argument --group: {tmp}/typo: no such folder"),
        ("hard={tmp}/a,{tmp}/empty", "{tmp}/empty: no results.json (not an evaluate.py output folder?)"),
        ("hard={tmp}/bad", "{tmp}/bad/results.json: not valid JSON"),
        ("hard={tmp}/list", "{tmp}/list/results.json: not an evaluate.py results.json"),
    ],
)
def test_bad_groups_end_in_a_usage_message(tmp_path, capsys, group, message):
    _results(tmp_path / "a", 0.40, 0.90)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{")
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "results.json").write_text("[]")
    err = usage_error(seed_table.main, ["--group", group.format(tmp=tmp_path)], capsys)
    assert message.format(tmp=tmp_path) in err


def test_bad_column_and_baseline_are_usage_errors(tmp_path, capsys):
    a = _results(tmp_path / "a", 0.40, 0.90)
    assert "expected SETTING@K" in usage_error(
        seed_table.main, ["--group", f"h={a}", "--column", "x@0"], capsys
    )
    err = usage_error(seed_table.main, ["--group", f"h={a}", "--baseline", "soft"], capsys)
    assert "--baseline 'soft' is not one of the groups ['h']" in err


def test_bad_k_and_out_into_a_missing_folder_are_usage_errors(tmp_path, capsys):
    a = _results(tmp_path / "a", 0.40, 0.90)
    assert "argument --k: 'x' is not an integer" in usage_error(
        seed_table.main, ["--group", f"hard={a}", "--k", "x"], capsys
    )
    err = usage_error(
        seed_table.main, ["--group", f"hard={a}", "--out", str(tmp_path / "no" / "t.md")], capsys
    )
    assert f"no such folder {tmp_path / 'no'} (create it first)" in err

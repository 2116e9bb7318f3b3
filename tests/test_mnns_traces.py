"""scripts/mnns_traces.py: reading partial sums and signs from MNNS chains of thought, and one tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from script_usage import usage_error

from scripts import mnns_traces as mt

ROOT = Path(__file__).resolve().parents[1]
COT = " 0 + 4 = 4. 4 - 8 = -4. -4 + 6 = 2. 2 - 7 = -5. The final answer is:"


def test_partial_sums_and_signs_are_read_as_written():
    assert mt.partial_sums(COT) == (4, -4, 2, -5)
    assert mt.signs(COT) == (1, -1, 1, -1)
    assert mt.partial_sums("no equations") == ()


def test_reaching_the_minimum_follows_the_written_partial_sums():
    # 4, 8, 6, 7 sum to 25, which is odd, so no sign pattern gives 0; -4 - 8 + 6 + 7 = 1 is the minimum
    assert mt.reaches_minimum(" 0 - 4 = -4. -4 - 8 = -12. -12 + 6 = -6. -6 + 7 = 1.", (4, 8, 6, 7))
    assert not mt.reaches_minimum(COT, (4, 8, 6, 7))  # a valid path, but it ends at -5
    assert not mt.reaches_minimum(" 0 + 4 = 4.", (4, 8, 6, 7))  # too few equations
    # the written signs do not matter, the partial sums do: this soft shadow writes + and computes -
    assert mt.reaches_minimum(" 0 + 4 = -4. -4 + 8 = -12. -12 + 6 = -6. -6 + 7 = 1.", (4, 8, 6, 7))
    # a slip breaks the path even if the last sum is the minimum
    assert not mt.reaches_minimum(" 0 - 4 = -4. -4 - 8 = -11. -11 + 6 = -6. -6 + 7 = 1.", (4, 8, 6, 7))


def test_used_signs_and_mismatches_by_hand():
    cot = " 0 + 1 = -1. -1 + 6 = 5. 5 + 5 = 9. 9 + 6 = 15."  # a soft CoT of the base model, digits 1, 6, 5, 6
    assert mt.used_signs(cot, (1, 6, 5, 6)) == [-1, 1, None, 1]  # 9 is no 5 +- 5: a slip
    # equations without a slip: 1st (written +, used -), 2nd (+, +), 4th (+, +): one mismatch of three
    assert mt.sign_mismatches(cot, (1, 6, 5, 6)) == (1, 3)
    assert mt.sign_mismatches(COT, (4, 8, 6, 7)) == (0, 4)


def test_group_stats_count_distinct_traces():
    a, b = " 0 + 1 = 1. 1 - 2 = -1.", " 0 - 1 = -1. -1 + 2 = 1."
    assert mt.group_stats([a, a, b], (1, 2)) == (2, True)  # -1 + 2 = 1 is the minimum
    assert mt.group_stats([a, a], (1, 2)) == (1, False)


def test_minority_share_by_hand():
    # logits 2 and 0: p = e^2 / (e^2 + 1) at tau 1, the minority gets 1 / (1 + e^2) = 0.1192
    share = mt.minority_share(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]), 1.0)
    assert share.tolist() == pytest.approx([1 / (1 + math.e**2)] * 2)
    # tau 0.5 doubles the gap: 1 / (1 + e^4)
    assert float(mt.minority_share(torch.tensor(2.0), torch.tensor(0.0), 0.5)) == pytest.approx(
        1 / (1 + math.e**4)
    )


def test_tiny_run_on_the_two_task_model(tmp_path):
    out = tmp_path / "traces.jsonl"
    model = str(ROOT / "assets" / "embedded_mix")
    rows = mt.main(
        ["--model", model, "--representers", "hard,soft", "--n", "2", "--G", "3", "--out", str(out)]
    )
    assert [r["representer"] for r in rows] == ["hard", "soft"]
    assert len(out.read_text().splitlines()) == 2
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["optimal_in_group"] <= 1 and r["cot_entropy"] >= 0
        assert 1 <= r["distinct_traces"] <= 3
        assert 0 <= r["sign_minority"] <= 0.5 and r["sign_steps"] > 0
        assert 0 <= r["sign_text_mismatch"] <= 1
    assert rows[0]["sign_minority_input"] == 0.0  # hard tokens feed one sign
    assert 0 < rows[1]["sign_minority_input"] <= 0.5


def test_noise_knobs_reach_the_representers_that_take_them(monkeypatch):
    built = []
    monkeypatch.setattr(mt.gd, "load", lambda args: (None, None))
    monkeypatch.setattr(mt, "measure", lambda *a: {})
    monkeypatch.setattr(mt.rc, "build_representer", lambda name, **knobs: built.append((name, knobs)))
    argv = [
        "--model",
        "m",
        "--representers",
        "hard,soft",
        "--noise-top-k",
        "2",
        "--gamma",
        "0.35",
        "--n",
        "1",
    ]
    list(mt.rows(mt.parser().parse_args(argv)))
    assert built == [("hard", {"temperature": 1.0}), ("soft", {"gamma": 0.35, "noise_top_k": 2})]


def test_summarize_means_and_standard_errors_by_hand(tmp_path, capsys):
    keys = mt.SUMMARY
    rows = [
        {"model": "r/hard_s0/p", "representer": "hard", **{k: 0.2 for k in keys}},
        {"model": "r/hard_s1/p", "representer": "hard", **{k: 0.4 for k in keys}},
        {"model": "r/soft_s0/p", "representer": "soft", **{k: 0.5 for k in keys}},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mt.main(["--summarize", str(path), "--group", "hard=/hard_s", "--group", "soft=/soft_s"])
    lines = capsys.readouterr().out.splitlines()
    # hard: mean 0.3, sd 0.1414 -> SE 0.1; soft: one model, no SE
    assert lines[2] == "| hard | hard | 2 | " + " | ".join(["0.300 ± 0.100"] * len(keys)) + " |"
    assert lines[3] == "| soft | soft | 1 | " + " | ".join(["0.500"] * len(keys)) + " |"


def test_bad_arguments_end_in_a_usage_message(capsys, tmp_path):
    assert "--n" in usage_error(mt.main, ["--model", "x", "--n", "0"], capsys)
    assert "no such folder" in usage_error(mt.main, ["--model", str(tmp_path / "none")], capsys)
    assert "--model is required" in usage_error(mt.main, [], capsys)
    assert "expected LABEL=SUBSTRING" in usage_error(mt.main, ["--summarize", "x", "--group", "a"], capsys)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "m"}\n{')
    assert "bad.jsonl, line 1: not a row of mnns_traces.py --out" in usage_error(
        mt.main, ["--summarize", str(bad)], capsys
    )
    bad.write_text("{")
    assert "bad.jsonl, line 1: not JSON" in usage_error(mt.main, ["--summarize", str(bad)], capsys)

"""scripts/answer_resampling.py: the variance split by hand, the context is the engine's, a tiny run."""

import json
import math

import pytest
import torch
from helpers import PROMPTS
from numerics import categorical_tolerance, teacher_forced_logits
from script_usage import usage_error

from scripts import answer_resampling as ar
from soft_tokens.representers import HardRepresenter, SoftRepresenter
from soft_tokens.rollout import RolloutConfig, RolloutEngine

REPRESENTERS = [HardRepresenter(), SoftRepresenter(), SoftRepresenter(tau=1e-4, noise_top_k=2)]


def test_variance_parts_by_hand():
    # CoT 0: answers 0, 0, 100 (mean 100/3, unbiased variance 10000/3); CoT 1: 100, 100, 100 (0).
    # Answer part: (10000/3 + 0) / 2 = 5000/3. Means 100/3 and 100: variance (200/3)^2 / 2 = 20000/9,
    # less 5000/9 (the answer part / M): CoT part 15000/9 = 5000/3. Total 10000/3: half and half.
    total, answer, cot = ar.variance_parts(torch.tensor([[0.0, 0.0, 100.0], [100.0, 100.0, 100.0]]))
    assert (total, answer, cot) == pytest.approx((10000 / 3, 5000 / 3, 5000 / 3), rel=1e-12)
    # Equal means: the CoT part is negative (the means vary only through the answers): 0 - 100 / 3.
    total, answer, cot = ar.variance_parts(torch.tensor([[0.0, 10.0, 20.0], [10.0, 10.0, 10.0]]))
    assert (total, answer, cot) == pytest.approx((100 / 3, 50.0, -50 / 3), rel=1e-12)


def test_pooled_share_and_interval_over_prompts():
    answer, total = torch.tensor([1.0, 3.0, 0.0]), torch.tensor([4.0, 4.0, 0.0])
    assert ar.pooled_share(answer, total) == 0.5  # (1 + 3 + 0) / (4 + 4 + 0): a flat group adds nothing
    lo, hi = ar.share_interval(answer, total, draws=500)
    assert 0.25 <= lo < 0.5 < hi <= 0.75
    assert ar.share_interval(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])) == (0.5, 0.5)
    assert math.isnan(ar.pooled_share(torch.zeros(2), torch.zeros(2)))  # no group has any variance
    r = torch.tensor([[[0.0, 0.0, 100.0], [100.0, 100.0, 100.0]], [[10.0] * 3] * 2])  # [B 2, G 2, M 3]
    out = ar.decomposition(r)
    assert out["answer_share"] == pytest.approx(0.5) and out["cot_share"] == pytest.approx(0.5)
    assert out["var_total"] == pytest.approx(5000 / 3) and out["groups_with_resampled_variance"] == 0.5


@pytest.mark.numerics
@pytest.mark.parametrize("rep", REPRESENTERS, ids=["hard", "soft", "fuzzy-placed"])
def test_context_gives_the_rollouts_answer_log_probs(tiny_model, tiny_tokenizer, rep):
    # Prompt, CoT as fed and forced prefix, then the original answer teacher-forced: its log-probs must be
    # the rollout's decode-time ones, within what two float32 forwards of the same inputs allow.
    T = 0.7
    engine = RolloutEngine(
        tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=4, answer_temperature=T)
    )
    ro = engine.generate(tiny_model, PROMPTS * 2, rep, generator=torch.Generator().manual_seed(0))
    logits, bound = teacher_forced_logits(tiny_model, ro)
    tol = categorical_tolerance(logits, ro.logp, bound, T)
    for i in range(len(ro.ids)):
        a, mask = ar.answer_start(ro, i), ro.answer_mask[i]
        original = ro.ids[i, a : a + int(ro.answer_lengths[i])]
        lp = ar.answer_log_probs(tiny_model, ar.row_context(tiny_model, ro, i), original, T)
        assert ((lp - ro.logp[i][mask]).abs() <= tol[i][mask]).all()
        lengths = ro.answer_lengths[i : i + 1]
        assert ar.completions(engine, ro, i, original[None], lengths) == [ro.completions[i]]


@pytest.mark.parametrize("rep", REPRESENTERS[:2], ids=["hard", "soft"])
def test_greedy_resampling_repeats_the_engines_greedy_answers(tiny_model, tiny_tokenizer, rep):
    # A head that favours "}" and EOS: answers end at the box's brace, at EOS or at the length limit.
    with torch.no_grad():
        tiny_model.lm_head.weight[tiny_tokenizer.convert_tokens_to_ids("}")] *= 5
        tiny_model.lm_head.weight[tiny_tokenizer.eos_token_id] *= 2
    L = 6
    engine = RolloutEngine(tiny_tokenizer, RolloutConfig(max_cot_tokens=6, answer_max_tokens=L))
    ro = engine.generate(
        tiny_model, PROMPTS * 3, rep, answer_greedy=True, generator=torch.Generator().manual_seed(0)
    )
    for i in range(len(ro.ids)):
        ids, lengths = ar.sample_answers(
            tiny_model, engine, ar.row_context(tiny_model, ro, i), 2, greedy=True
        )
        assert ar.completions(engine, ro, i, ids, lengths) == [ro.completions[i]] * 2
        assert lengths.tolist() == [int(ro.answer_lengths[i])] * 2
    assert any(c.endswith("}") for c in ro.completions) and int(ro.answer_lengths.max()) == L
    assert int(ro.answer_lengths.min()) < L


def test_tiny_run_writes_rows_and_table(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "resample.json"
    argv = ["--model", str(tiny_model_dir), "--representers", "hard,soft", "--B", "2", "--G", "2", "--M", "3"]
    argv += ["--max-cot", "4", "--noise-top-k", "2", "--answer-temperature", "1.0", "--out", str(out)]
    rows = ar.main(argv)
    assert [r["representer"] for r in rows] == ["hard", "soft"] and json.loads(out.read_text()) == rows
    assert rows[0]["noise_top_k"] is None and rows[1]["noise_top_k"] == 2 and rows[1]["tau"] == 0.5
    for row in rows:
        assert row["M"] == 3 and len(row["answer_share_90ci"]) == 2 and 0 <= row["reward_mean"] <= 100
        assert row["answer_logp_max_error"] < 1e-4  # the original answers under the rebuilt context
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| representer") and len(table) == 4 and table[2].startswith("| hard")


# ----- representer names and bad inputs (issue 34, items 8 and 9)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--representers", "gumbl"], "unknown representer 'gumbl'; the representers are"),
        (["--M", "1"], "argument --M: 1 is below 2"),
        (["--G", "1"], "argument --G: 1 is below 2"),
        (["--sampling-temperature", "abc"], "argument --sampling-temperature: 'abc' is not a number"),
        (["--snr", "4"], "--snr is grad_diagnostics' own option"),
    ],
)
def test_bad_arguments_end_in_a_usage_message(argv, message, capsys):
    assert message in usage_error(ar.main, argv, capsys)


def test_out_into_a_missing_folder_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ar.gd, "load", lambda args: pytest.fail("the model was loaded"))
    out = tmp_path / "no" / "resample.json"
    with pytest.raises(SystemExit) as exit_:
        ar.main(["--out", str(out)])
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2
        and f"argument --out: {out}: no such folder {out.parent} (create it first)" in err
    )


def test_gumbel_is_resampled_as_gumbel(tiny_model_dir):
    argv = ["--model", str(tiny_model_dir), "--representers", "gumbel", "--B", "1", "--G", "2", "--M", "2"]
    (row,) = ar.main([*argv, "--max-cot", "3", "--noise-top-k", "2"])
    assert row["representer"] == "gumbel" and row["tau"] == 0.1  # conf/representer/gumbel.yaml's tau
    assert row["noise_top_k"] is None and row["gamma"] == 0.0  # soft/fuzzy knobs do not apply to it
    # training-free settings need no CoT log-probability here (grad_diagnostics refuses them)
    assert ar.parse(["--representers", "soft_thinking,mixture_of_inputs"]).representers == [
        "soft_thinking",
        "mixture_of_inputs",
    ]

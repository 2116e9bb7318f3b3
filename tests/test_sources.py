"""Data sources: gold-answer parsing, local files, hub datasets (load_dataset patched), bad rows, arith splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import compose_config

from soft_tokens.data.sources import (
    ArithSource,
    DataError,
    HubSource,
    LocalSource,
    boxed_answer,
    gsm8k_answer,
    strip_math_delimiters,
)

FIXTURES = Path(__file__).parent / "fixtures"
MATH_FIELDS = dict(
    question_field="problem", answer_field="answer", solution_field="solution", answer_format="math"
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- gold answers


def test_gsm8k_answer_strips_commas_and_takes_last_marker():
    assert gsm8k_answer("a #### 1 \n b\n#### 1,234,567\n") == "1234567"
    assert gsm8k_answer("#### -3") == "-3"
    for bad in ("no marker", "#### ", "text ####\n"):
        with pytest.raises(ValueError):
            gsm8k_answer(bad)


@pytest.mark.parametrize(
    "text, answer",
    [
        (r"so $\boxed{5}$.", "5"),
        (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{ \sqrt{\frac{a}{b^{2}}} }", r"\sqrt{\frac{a}{b^{2}}}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left\{ x \right." + "}", r"\left\{ x \right."),
        (r"\fbox{7}", "7"),
        (r"answer: $\boxed 42$", "42"),
    ],
)
def test_boxed_answer(text, answer):
    assert boxed_answer(text) == answer


@pytest.mark.parametrize("text", ["no box", r"\boxed{}", r"\boxed{1", r"\boxedx{1}", "\\boxed"])
def test_boxed_answer_errors(text):
    with pytest.raises(ValueError):
        boxed_answer(text)


# ---- local files


def test_local_gsm8k_jsonl():
    src = LocalSource(FIXTURES / "gsm8k_sample.jsonl", answer_format="gsm8k")
    examples = src.load()
    assert [e.answer for e in examples] == ["72", "12000", "-3"]
    assert examples[0].question.startswith("Natalia sold clips")
    assert examples[0].solution.endswith("72 clips altogether in April and May.")
    assert [e.id for e in examples] == ["gsm8k_sample-0", "gsm8k_sample-1", "gsm8k_sample-2"]
    assert src.n_skipped == 0


MATH_GOLD = [r"\frac{3}{4}", r"2\sqrt{2}", r"\left\{ x : x^{2} > 1 \right\}"]


def test_local_math_json():
    examples = LocalSource(FIXTURES / "math_sample.json", id_field="unique_id", **MATH_FIELDS).load()
    assert [e.answer for e in examples] == MATH_GOLD
    assert examples[1].id == "test/algebra/2.json"
    assert examples[1].solution.startswith("First")


def test_local_math_parquet(tmp_path):
    rows = json.loads((FIXTURES / "math_sample.json").read_text())
    path = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)  # the missing "answer" of row 1 becomes null
    assert [e.answer for e in LocalSource(path, **MATH_FIELDS).load()] == MATH_GOLD


def test_json_file_written_as_json_lines(tmp_path):
    path = tmp_path / "data.json"
    datasets.Dataset.from_list([{"question": "q1", "answer": 3}, {"question": "q2", "answer": 4}]).to_json(
        path
    )
    assert [e.answer for e in LocalSource(path).load()] == ["3", "4"]  # numbers become strings


def test_math_without_answer_field_uses_boxed_solution(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "solution": r"\boxed{\frac{1}{3}}"}])
    src = LocalSource(
        path, question_field="problem", answer_field=None, solution_field="solution", answer_format="math"
    )
    assert src.load()[0].answer == r"\frac{1}{3}"


def test_limit_takes_first_rows():
    src = LocalSource(FIXTURES / "gsm8k_sample.jsonl", answer_format="gsm8k", limit=2)
    assert [e.answer for e in src.load()] == ["72", "12000"]
    assert LocalSource(FIXTURES / "gsm8k_sample.jsonl", answer_format="gsm8k", limit=0).load() == []


BAD_ROWS = [
    ({"question": "q", "answer": "#### 1"}, None),
    ({"answer": "#### 2"}, "missing field 'question'"),
    ({"question": 5, "answer": "#### 3"}, "not a non-empty string"),
    ({"question": "q"}, "missing field 'answer'"),
    ({"question": "q", "answer": "no marker"}, "cannot parse the gold answer"),
    ({"question": "q", "answer": "#### "}, "cannot parse the gold answer"),
    ({"question": "q", "answer": "#### 4"}, None),
]


@pytest.mark.parametrize("row", range(1, 6))
def test_bad_row_raises_with_file_and_row(tmp_path, row):
    path = write_jsonl(tmp_path / "bad.jsonl", [BAD_ROWS[0][0], BAD_ROWS[row][0]])
    with pytest.raises(DataError, match=rf"bad\.jsonl, line 2: .*{BAD_ROWS[row][1]}"):
        LocalSource(path, answer_format="gsm8k").load()


def test_bad_json_list_row_and_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"question": "q", "answer": "1"}, {"question": "q", "answer": ""}, "text"]))
    with pytest.raises(DataError, match=r"bad\.json, row 1: answer field 'answer' is empty"):
        LocalSource(path).load()
    src = LocalSource(path, on_bad_row="skip")
    assert len(src.load()) == 1 and src.n_skipped == 2
    path.write_text('[{"question": "q", ')
    with pytest.raises(DataError, match="invalid JSON"):
        LocalSource(path).load()


def test_skip_counts_and_logs(tmp_path, caplog):
    rows = [r for r, _ in BAD_ROWS]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with path.open("a") as f:
        f.write("{not json\n")
    src = LocalSource(path, answer_format="gsm8k", on_bad_row="skip")
    with caplog.at_level(logging.WARNING):
        examples = src.load()
    assert [e.answer for e in examples] == ["1", "4"]
    assert [e.id for e in examples] == ["bad-0", "bad-6"]  # ids keep the row position
    assert src.n_skipped == 6
    assert "skipped 6 malformed rows" in caplog.text and "bad.jsonl, line 2" in caplog.text


def test_invalid_utf8_names_file_and_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"question": "q", "answer": "1"}).encode()
    path.write_bytes(
        good + b"\n" + '{"question": "caf\u00e9", "answer": "2"}'.encode("latin-1") + b"\n" + good
    )
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 2: not valid UTF-8"):
        LocalSource(path).load()
    src = LocalSource(path, on_bad_row="skip")
    assert [e.answer for e in src.load()] == ["1", "1"] and src.n_skipped == 1
    listed = tmp_path / "latin1.json"
    listed.write_bytes(b'[{"question": "q", "answer": "1"},\n {"question": "caf\xe9", "answer": "2"}]')
    with pytest.raises(DataError, match=r"latin1\.json, line 2: not valid UTF-8"):
        LocalSource(listed, on_bad_row="skip").load()


@pytest.mark.parametrize(
    "name, content", [("e.jsonl", ""), ("e.jsonl", "\n \n"), ("e.json", "[]"), ("e.json", "")]
)
def test_empty_file_names_the_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=rf"{name}: the file holds no rows"):
        LocalSource(tmp_path / name).load()


def test_top_level_json_object_is_not_called_invalid(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": [{"question": "q", "answer": "1"}]}, indent=1))
    with pytest.raises(
        DataError, match=r"obj\.json: the file holds one JSON dict \(keys: \['data'\]\), not a list"
    ):
        LocalSource(path).load()
    path.write_text(json.dumps({"question": "q", "answer": "1"}))  # one JSON line: one row
    assert [e.answer for e in LocalSource(path).load()] == ["1"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "[1, NaN]"])
def test_non_finite_json_answers_are_bad_rows(tmp_path, value):
    path = tmp_path / "nan.jsonl"
    path.write_text('{"question": "q", "answer": 1}\n{"question": "q", "answer": ' + value + "}\n")
    with pytest.raises(DataError, match=r"nan\.jsonl, line 2: answer field 'answer' is not a finite number"):
        LocalSource(path).load()
    src = LocalSource(path, on_bad_row="skip")
    assert [e.answer for e in src.load()] == ["1"] and src.n_skipped == 1


def test_bad_extension_and_bad_options(tmp_path):
    with pytest.raises(DataError, match=r"data\.csv: unsupported file extension '\.csv'"):
        LocalSource(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="on_bad_row must be one of"):
        LocalSource(FIXTURES / "gsm8k_sample.jsonl", on_bad_row="ignore")
    with pytest.raises(ValueError, match="answer_format must be one of"):
        LocalSource(FIXTURES / "gsm8k_sample.jsonl", answer_format="latex")
    with pytest.raises(FileNotFoundError):
        LocalSource(tmp_path / "missing.jsonl").load()


# ---- hub (load_dataset patched: no network)


@pytest.fixture()
def fake_hub(monkeypatch):
    tables = {
        ("openai/gsm8k", "main", "test"): [
            {"question": "q0", "answer": "x\n#### 1,000"},
            {"question": "q1", "answer": "y\n#### 7"},
        ],
        ("EleutherAI/hendrycks_math", "algebra", "train"): [
            {"problem": "a", "solution": r"\boxed{\frac{1}{2}}"}
        ],
        ("EleutherAI/hendrycks_math", "geometry", "train"): [{"problem": "g", "solution": r"so \boxed{3}"}],
        # OlympiadBench's rows: final_answer is a list of inline-math strings, solution a list too
        ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"): [
            {"id": 1606, "question": "o1", "final_answer": ["$\\frac{1}{2}$"], "solution": ["..."]},
            {"id": 1607, "question": "o2", "final_answer": ["$3$", "$-1$"], "solution": ["..."]},
            {"id": 1608, "question": "o3", "final_answer": ["$x$ and $y$"], "solution": ["..."]},
            # most real rows hold one element, which may list several values
            {"id": 1609, "question": "o4", "final_answer": ["$69$,$84$"], "solution": ["..."]},
            {"id": 1610, "question": "o5", "final_answer": ["$(1, 2), (3, 4)$"], "solution": ["..."]},
        ],
    }
    calls = []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return datasets.Dataset.from_list(tables[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_gsm8k(fake_hub):
    src = HubSource("openai/gsm8k", "main", split="test", answer_format="gsm8k", revision="abc")
    examples = src.load()
    assert [e.answer for e in examples] == ["1000", "7"]
    assert [e.id for e in examples] == ["gsm8k-main-test-0", "gsm8k-main-test-1"]
    assert fake_hub == [("openai/gsm8k", "main", "test", {"revision": "abc"})]


def test_hub_several_configs(fake_hub):
    src = HubSource(
        "EleutherAI/hendrycks_math",
        ["algebra", "geometry"],
        split="train",
        question_field="problem",
        answer_field=None,
        solution_field="solution",
        answer_format="math",
    )
    assert [(e.question, e.answer) for e in src.load()] == [("a", r"\frac{1}{2}"), ("g", "3")]


def test_hub_bad_row_names_dataset_and_row(fake_hub):
    src = HubSource("openai/gsm8k", "main", split="test", answer_field="gold")
    with pytest.raises(
        DataError, match=r"openai/gsm8k \(config 'main', split 'test'\), row 0: missing field 'gold'"
    ):
        src.load()
    src.on_bad_row = "skip"
    assert src.load() == [] and src.n_skipped == 2


def test_olympiadbench_config_reads_list_answers_without_dollars(fake_hub):
    from hydra.utils import instantiate

    cfg = compose_config("evaluate", ["data=olympiadbench"])
    assert cfg.data.train.path == "EleutherAI/hendrycks_math"  # trained and validated on MATH
    examples = instantiate(cfg.data.test).load()
    assert [(e.id, e.answer) for e in examples] == [
        ("1606", r"\frac{1}{2}"),
        ("1607", "3, -1"),
        ("1608", "$x$ and $y$"),
        ("1609", "69, 84"),
        ("1610", "(1, 2), (3, 4)"),
    ]


@pytest.mark.parametrize(
    "answer, stripped",
    [
        ("$a$, $b$", "a, b"),
        ("$69$,$84$", "69, 84"),
        ("$69$ , $84$", "69, 84"),
        ("$(1, 2), (3, 4)$", "(1, 2), (3, 4)"),
        (" $\\frac{1}{2}$ ", "\\frac{1}{2}"),
        ("$5", "$5"),
        ("$x$ and $y$", "$x$ and $y$"),
        ("5", "5"),
        ("$$", "$$"),
    ],
)
def test_strip_math_delimiters(answer, stripped):
    assert strip_math_delimiters(answer) == stripped


def test_hub_configs_read_a_local_copy_through_path(tmp_path, fake_hub):
    from hydra.utils import instantiate

    rows = [{"id": 7, "question": "o", "final_answer": ["$69$,$84$"], "solution": ["..."]}]
    copy = tmp_path / "OE_TO_maths_en_COMP.json"
    copy.write_text(json.dumps(rows))
    cfg = compose_config("evaluate", ["data=olympiadbench", f"data.test.path={copy}"])
    examples = instantiate(cfg.data.test).load()
    assert [(e.id, e.answer) for e in examples] == [("7", "69, 84")] and fake_hub == []
    assert examples[0].origin == f"{copy}, row 0"
    # a [start:stop] split slice applies to the local rows (gsm8k's val is train[-200:])
    gsm = write_jsonl(
        tmp_path / "gsm8k.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    )
    src = HubSource(str(gsm), "main", split="train[-2:]", answer_format="gsm8k")
    assert [e.answer for e in src.load()] == ["3", "4"]
    with pytest.raises(DataError, match=r"split 'train\[:10%\]'"):
        HubSource(str(gsm), split="train[:10%]").load()
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        HubSource(str(tmp_path / "missing.parquet")).load()


# ---- embedded arithmetic task


def test_arith_source_splits_are_disjoint_and_deterministic():
    train = ArithSource("train", n=300, seed=3).load()
    val = ArithSource("val", n=50, seed=3).load()
    test = ArithSource("test", n=50, seed=3).load()
    assert len(train) == 300 and len(val) == 50 and len(test) == 50
    questions = [{e.question for e in s} for s in (train, val, test)]
    assert (
        not (questions[0] & questions[1])
        and not (questions[0] & questions[2])
        and not (questions[1] & questions[2])
    )
    assert ArithSource("val", n=50, seed=3).load() == val
    assert all(e.answer.lstrip("-").isdigit() for e in train)
    ops = ArithSource("train", n=20, min_ops=1, max_ops=1).load()
    assert all(e.solution.count("=") == 1 for e in ops)


# ---- rows beyond the size limit, unreadable golds and repeated ids (issue 34)


def test_question_beyond_the_row_limit_is_a_bad_row_in_every_format(tmp_path):
    from soft_tokens.data.files import MAX_ROW_CHARS

    rows = [{"question": "q1", "answer": "1"}, {"question": "é" * (MAX_ROW_CHARS + 1), "answer": "2"}]
    listed = tmp_path / "rows.json"
    listed.write_text(json.dumps(rows))
    with pytest.raises(
        DataError,
        match=r"rows\.json, row 1: 1,000,001 characters in question field 'question', longer than the limit of "
        r"1,000,000 for one row \(soft_tokens\.data\.files\.MAX_ROW_CHARS\)",
    ):
        LocalSource(listed).load()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    src = LocalSource(tmp_path / "rows.parquet", on_bad_row="skip")
    assert [e.answer for e in src.load()] == ["1"] and src.n_skipped == 1


def test_unreadable_golds_are_counted_and_named(tmp_path, caplog):
    rows = [
        {"question": f"q{i}", "answer": f"step\n#### {a}"}
        for i, a in enumerate(["12", "forty", "1,000", "$5"])
    ]
    path = write_jsonl(tmp_path / "gsm.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        examples = LocalSource(path, answer_format="gsm8k").load()
    assert [e.answer for e in examples] == ["12", "forty", "1000", "$5"]  # kept
    warned = [r.getMessage() for r in caplog.records if "gold answers" in r.getMessage()]
    assert warned == [
        f"2 of 4 gold answers may not be readable by the reward (kept; every answer to them may score 0): "
        f"{path}, line 2: 'forty' (not a number (GSM8K golds are)); {path}, line 4: '$5' (not a number (GSM8K golds are))"
    ]
    caplog.clear()
    math_rows = [
        {"problem": "p", "answer": "\\frac{1}{2", "solution": "s"},
        {"problem": "p", "answer": "x", "solution": "s"},
    ]
    with caplog.at_level(logging.WARNING):
        LocalSource(write_jsonl(tmp_path / "m.jsonl", math_rows), **MATH_FIELDS).load()
    assert (
        "1 of 2 gold answers" in caplog.text
        and "m.jsonl, line 1: '\\\\frac{1}{2' (unbalanced braces)" in caplog.text
    )


def test_repeated_ids_are_counted_and_named(tmp_path, caplog):
    rows = [{"id": i, "question": "q", "answer": "1"} for i in ("a", "b", "a", "c", "b", "a", "a")]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        assert (
            len(LocalSource(path, id_field="id").load()) == 7
        )  # kept: ids label rows, nothing is keyed by them
    warned = [r.getMessage() for r in caplog.records if "repeat the id" in r.getMessage()]
    assert warned == [
        f"4 rows repeat the id of an earlier row: {path}, line 3: id 'a' (first at {path}, line 1); "
        f"{path}, line 5: id 'b' (first at {path}, line 2); {path}, line 6: id 'a' (first at {path}, line 1); "
        "and 1 more"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        LocalSource(path).load()  # the default ids (file stem and row) are distinct
    assert "repeat the id" not in caplog.text

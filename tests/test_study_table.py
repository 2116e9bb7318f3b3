"""scripts/study_table.py: one row per run folder, from its config, its log's validation lines and summary."""

from __future__ import annotations

import json

from omegaconf import OmegaConf
from script_usage import usage_error

from scripts.study_table import main, markdown, run_row

LOG = """[2026-12-02 19:35:22][callbacks.math_eval][INFO] - step 0 | val/accuracy=0.345  val/accuracy_soft=0.300
[2026-12-02 19:39:27][callbacks.math_eval][INFO] - step 40 | val/accuracy=0.360  val/accuracy_soft=0.310
[2026-12-02 19:43:14][callbacks.math_eval][INFO] - step 80 | val/accuracy=0.360  val/accuracy_soft=0.320
[2026-12-02 19:46:49][callbacks.math_eval][INFO] - step 120 | val/accuracy=0.350  val/accuracy_soft=0.330
"""


def test_row_reads_the_task_log_and_keeps_the_first_best_step(tmp_path):
    run = tmp_path / "D_soft" / "0"
    run.mkdir(parents=True)
    cfg = {
        "task_name": "embedded_soft",
        "seed": 1,
        "representer": {"name": "soft"},
        "module": {"optim": {"lr": 3e-5}},
    }
    OmegaConf.save(OmegaConf.create(cfg), run / "config.yaml")
    (run / "embedded_soft.log").write_text(LOG)
    (run / "summary.json").write_text(json.dumps({"wall_s": 1202.5}))
    row = run_row(run)
    assert row["run"] == "D_soft" and row["curve"] == {0: 0.345, 40: 0.36, 80: 0.36, 120: 0.35}
    assert (row["start"], row["best"], row["best_step"], row["end"]) == (0.345, 0.36, 40, 0.35)
    assert row["wall_s"] == 1202.5 and row["seed"] == 1 and row["G"] == "-"
    assert "| D_soft | soft | 3e-05 | 1 | 0.345 -> 0.360 (40) -> 0.350 | nan / nan | 1202.5 |" in markdown(
        [row]
    )


# ----- missing or unreadable inputs are refused with their path (issue 34, item 9)


def _run(tmp_path, name="run_a"):
    run = tmp_path / name
    run.mkdir()
    OmegaConf.save(OmegaConf.create({"representer": {"name": "hard"}, "seed": 0}), run / "config.yaml")
    (run / "train.log").write_text(LOG)
    return run


def _usage_error(argv, capsys) -> str:
    return usage_error(main, argv, capsys)


def test_a_missing_run_folder_is_refused_not_dropped(tmp_path, capsys):
    run = _run(tmp_path)
    assert [r["run"] for r in main([str(run)])] == ["run_a"]
    err = _usage_error([str(run), str(tmp_path / "typo")], capsys)
    assert f"argument runs: {tmp_path / 'typo'}: no such folder" in err
    (tmp_path / "empty").mkdir()
    err = _usage_error([str(run), str(tmp_path / "empty")], capsys)
    assert f"{tmp_path / 'empty'}: no config.yaml, so not a run folder" in err
    (run / "train.log").unlink()
    assert f"{run}: no train.log (the run's log, with its validation lines)" in _usage_error(
        [str(run)], capsys
    )


def test_unreadable_files_and_outputs_into_missing_folders_are_named(tmp_path, capsys):
    run = _run(tmp_path)
    (run / "summary.json").write_text("{not json")
    assert f"{run / 'summary.json'}: not valid JSON" in _usage_error([str(run)], capsys)
    (run / "summary.json").unlink()
    (run / "config.yaml").write_text("a: [unclosed")
    assert f"{run / 'config.yaml'}: not a readable YAML config" in _usage_error([str(run)], capsys)
    for option in ("--out", "--plot"):
        target = tmp_path / "missing" / "x"
        err = _usage_error([str(run), option, str(target)], capsys)
        assert f"argument {option}: {target}: no such folder {target.parent} (create it first)" in err

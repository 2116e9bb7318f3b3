"""scripts/ood_table.py: the out-of-domain table from runs' TensorBoard scalars, checked by hand."""

from __future__ import annotations

import pytest
from script_usage import usage_error
from torch.utils.tensorboard import SummaryWriter

from scripts import ood_table


def _run(path, acc: list[float], nll: list[float], every: int = 20, start: int = 0) -> str:
    writer = SummaryWriter(str(path / "tensorboard"))
    for i, (a, n) in enumerate(zip(acc, nll)):
        writer.add_scalar("ood/arith/accuracy", a, start + i * every)
        writer.add_scalar("ood/arith/nll", n, start + i * every)
        writer.add_scalar("val/accuracy", 0.1, start + i * every)
    writer.close()
    return str(path)


def test_last_values_and_changes_from_the_base_by_hand(tmp_path):
    h0 = _run(tmp_path / "h0", [0.30, 0.20, 0.10], [0.08, 0.10, 0.12])
    h1 = _run(tmp_path / "h1", [0.30, 0.25, 0.20], [0.08, 0.09, 0.10])
    s0 = _run(tmp_path / "s0", [0.30, 0.30], [0.08, 0.08])
    text = ood_table.main(
        ["--group", f"hard={h0},{h1}", "--group", f"soft={s0}", "--plot", str(tmp_path / "p.png")]
    )
    lines = text.splitlines()
    assert lines[2] == "| base (step 0) | arith | - | 30.0 | - | 0.080 | - |"
    # hard: last accuracy 10 and 20 -> 15.0 ± 5.0, changes -20 and -10 -> -15.0 ± 5.0;
    # last NLL 0.12 and 0.10 -> 0.110 ± 0.010, changes +0.04 and +0.02 -> +0.030 ± 0.010
    assert lines[3] == (
        "| hard | arith | 2 | 15.0 ± 5.0 (10.0 / 20.0) | -15.0 ± 5.0 (-20.0 / -10.0) "
        "| 0.110 ± 0.010 (0.120 / 0.100) | +0.030 ± 0.010 (+0.040 / +0.020) |"
    )
    assert lines[4] == "| soft | arith | 1 | 30.0 | +0.0 | 0.080 | +0.000 |"
    assert (tmp_path / "p.png").stat().st_size > 0


def test_changes_against_a_baseline_by_hand(tmp_path, capsys):
    h0 = _run(tmp_path / "h0", [0.30, 0.10], [0.08, 0.12])
    h1 = _run(tmp_path / "h1", [0.30, 0.20], [0.08, 0.10])
    s0 = _run(tmp_path / "s0", [0.30, 0.25], [0.08, 0.09])
    s1 = _run(tmp_path / "s1", [0.30, 0.27], [0.08, 0.08])
    text = ood_table.main(["--group", f"hard={h0},{h1}", "--group", f"soft={s0},{s1}", "--baseline", "hard"])
    lines = text.splitlines()
    assert lines[0].endswith("| accuracy change - hard's | NLL change - hard's |")
    # accuracy changes: hard -20, -10 (SE 5); soft -5, -3 (SE 1): +11.0 ± sqrt(26) = 5.10
    # NLL changes: hard +0.04, +0.02 (SE 0.01); soft +0.01, 0 (SE 0.005): -0.0250 ± 0.0112
    assert lines[-1].endswith("| +11.00 ± 5.10 | -0.0250 ± 0.0112 |")
    assert lines[-2].endswith("| - | - |")  # hard itself
    err = usage_error(ood_table.main, ["--group", f"hard={h0}", "--baseline", "soft"], capsys)
    assert "--baseline 'soft' is not one of the groups ['hard']" in err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "missing"), "no such folder"),
        (lambda p: _run(p / "late", [0.3], [0.1], start=20), "do not start at step 0"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"), "no ood/<dataset>/accuracy or nll scalars"),
    ],
)
def test_bad_runs_end_in_a_usage_message(tmp_path, capsys, make, message):
    assert message in usage_error(ood_table.main, ["--group", f"hard={make(tmp_path)}"], capsys)

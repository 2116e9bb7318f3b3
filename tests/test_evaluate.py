"""evaluate.py end to end on a tiny model, checkpoint loading (Lightning .ckpt vs Hugging Face folder), report."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from soft_tokens.eval.results import EvalResults, SettingResult
from soft_tokens.eval.run import run_evaluation
from soft_tokens.models.checkpoints import load_lightning_checkpoint, load_policy
from soft_tokens.models.loading import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
TINY = ["max_examples=3", "rollout.max_cot_tokens=8", "rollout.answer_max_tokens=6", "progress=false"]


def compose_cfg(name: str, overrides: list[str], out_dir: Path):
    """A composed config with its run folder set to out_dir (as Hydra would at run time)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg.hydra
    return cfg


SETTINGS = [
    "hard_greedy",
    "hard_sample",
    "soft_greedy",
    "soft_sample",
    "fuzzy_greedy",
    "fuzzy_sample",
    "gumbel_greedy",
    "gumbel_sample",
    "soft_thinking_greedy",
    "moi_greedy",
    "moi_sample",
]


def test_config_has_the_paper_settings_and_the_related_methods():
    cfg = compose_cfg("evaluate", [], Path("unused"))
    assert list(cfg.settings) == SETTINGS
    reps = {k: v.representer for k, v in cfg.settings.items()}
    assert reps["hard_greedy"].greedy and not reps["hard_sample"].greedy
    assert reps["soft_sample"].tau == 0.5 and reps["fuzzy_sample"].tau == 1e-4
    assert reps["soft_sample"].gamma == 0.33 and cfg.settings.soft_greedy.num_samples == 1
    assert cfg.settings.fuzzy_sample.num_samples == cfg.num_samples
    assert (reps["gumbel_sample"].tau, reps["gumbel_sample"].top_k) == (0.1, 10)
    assert reps["gumbel_greedy"].greedy and reps["soft_thinking_greedy"].top_k == 10
    assert reps["moi_sample"].beta == 1.0 and not reps["moi_sample"].greedy and reps["moi_greedy"].greedy
    assert cfg.prompt.template == "compact" and cfg.split == "test"


def test_evaluate_writes_tables_and_plots(tmp_path, tiny_model_dir, caplog):
    out = tmp_path / "run"
    cfg = compose_cfg(
        "evaluate", [f"model.name_or_path={tiny_model_dir}", "num_samples=2", "name=base", *TINY], out
    )
    with caplog.at_level(logging.INFO):
        res = run_evaluation(cfg)
    for f in ("results.json", "results.csv", "results.md", "pass_at_k.png", "cot_entropy.png", "config.yaml"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert [s.name for s in res.settings] == SETTINGS
    by_name = {s.name: s for s in res.settings}
    assert set(by_name["hard_greedy"].pass_at_k) == {1} and set(by_name["soft_sample"].pass_at_k) == {1, 2}
    assert all(s.n_problems == 3 for s in res.settings) and res.n_problems == 3
    assert all(0.0 <= v <= 1.0 for s in res.settings for v in s.pass_at_k.values())
    assert len(by_name["hard_sample"].entropy_profile) == 8
    assert res.name == "base" and res.data == "arith"
    # the files agree with what was returned
    loaded = EvalResults.from_json(json.loads((out / "results.json").read_text()))
    assert [s.pass_at_k for s in loaded.settings] == [s.pass_at_k for s in res.settings]
    md = (out / "results.md").read_text()
    assert "| hard_greedy | greedy | 1 | 3 |" in md and "pass@2 (%)" in md
    assert "mean ± one standard error over the 3 problems (one problem is 33.3 points)" in md
    for s in res.settings:  # every pass@k cell of the markdown is "value ± standard error", in %
        row = next(line for line in md.splitlines() if line.startswith(f"| {s.name} |"))
        cells = row.split(" | ")[4 : 4 + len(s.pass_at_k)]
        expected = [f"{100 * v:.1f} ± {100 * s.se(k):.1f}" for k, v in sorted(s.pass_at_k.items())]
        assert cells == expected and not any(math.isnan(s.se(k)) for k in s.pass_at_k), row
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith(
        "setting,decoding,num_samples,n_problems,pass@1,pass@2,pass@1_se,pass@2_se"
    )
    assert len(csv_lines) == 1 + len(SETTINGS)
    # the log lines give fractions, as every logged metric does (percent only in the markdown tables)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("soft_sample: ")]
    assert len(logged) == 1 and re.fullmatch(
        r"soft_sample: pass@1=[01]\.\d{3} ± [01]\.\d{3}  pass@2=[01]\.\d{3} ± [01]\.\d{3} \(\d+ s\)",
        logged[0],
    ), logged
    rows = [json.loads(line) for line in (out / "completions" / "soft_sample.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len(rows[0]["completion"]) == 2


def _perturbed_module(tmp_path: Path, tiny_model_dir: Path):
    """A training module whose policy differs from the base model, saved as a checkpoint and a HF folder."""
    from soft_tokens.training.builders import build_module

    cfg = compose_cfg("train", [f"model.name_or_path={tiny_model_dir}", "debug=fast"], tmp_path / "train")
    module = build_module(cfg)
    module.configure_model()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    # the layout Lightning's checkpoints have (state_dict with policy.* keys, pickled hyper-parameters)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 3}
    torch.save(ckpt, tmp_path / "last.ckpt")
    module.save_policy(str(tmp_path / "policy"))
    return module


def test_lightning_checkpoint_and_hf_folder_give_the_same_scores(tmp_path, tiny_model_dir):
    module = _perturbed_module(tmp_path, tiny_model_dir)
    base_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    from_ckpt, _, _ = load_policy(base_cfg, tmp_path / "last.ckpt")
    from_hf, tok, described = load_policy(base_cfg, tmp_path)  # a run folder holding policy/
    assert described == str(tmp_path / "policy") and tok.padding_side == "left"
    for (k, a), b in zip(from_ckpt.state_dict().items(), from_hf.state_dict().values()):
        assert torch.equal(a, b), k
        assert torch.equal(a, module.policy.state_dict()[k])

    results = []
    for ckpt in (tmp_path / "last.ckpt", tmp_path / "policy"):
        out = tmp_path / ckpt.name.replace(".", "_")
        overrides = [f"model.name_or_path={tiny_model_dir}", f"checkpoint={ckpt}", "num_samples=2", *TINY]
        cfg = compose_cfg("evaluate", [*overrides, "only=[hard_greedy,soft_sample]"], out)
        results.append((run_evaluation(cfg), out))
    (a, out_a), (b, out_b) = results
    for sa, sb in zip(a.settings, b.settings):
        assert sa.pass_at_k == sb.pass_at_k and sa.mean_reward == sb.mean_reward
        assert sa.mean_cot_length == sb.mean_cot_length
        assert all(
            x == y or (math.isnan(x) and math.isnan(y))
            for x, y in zip(sa.entropy_profile, sb.entropy_profile)
        )
    for setting in ("hard_greedy", "soft_sample"):
        assert (out_a / "completions" / f"{setting}.jsonl").read_text() == (
            out_b / "completions" / f"{setting}.jsonl"
        ).read_text()


def hub_cache(root: Path, repo_id: str, files: Path) -> Path:
    """A Hugging Face cache in the hub's layout holding `files` as the main revision of `repo_id`."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(files, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root


def test_checkpoint_can_be_a_hub_id_in_the_cache(tmp_path, tiny_model_dir, monkeypatch):
    from huggingface_hub import constants

    cache = hub_cache(tmp_path / "hub", "org/tiny", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # huggingface_hub reads the variable at import
    assert constants.HF_HUB_OFFLINE  # conftest: nothing may come from the network
    results = []
    for ckpt in ("org/tiny", str(tiny_model_dir)):
        out = tmp_path / ("hub_run" if ckpt == "org/tiny" else "folder_run")
        overrides = [f"checkpoint={ckpt}", "num_samples=2", "only=[hard_greedy,soft_sample]", *TINY]
        results.append((run_evaluation(compose_cfg("evaluate", overrides, out)), out))
    (hub, hub_out), (folder, folder_out) = results
    assert hub.model == "org/tiny" and hub.meta["checkpoint"] == "org/tiny"
    assert [s.pass_at_k for s in hub.settings] == [s.pass_at_k for s in folder.settings]
    for setting in ("hard_greedy", "soft_sample"):
        assert (hub_out / "completions" / f"{setting}.jsonl").read_text() == (
            folder_out / "completions" / f"{setting}.jsonl"
        ).read_text()
    with pytest.raises(
        FileNotFoundError,
        match=r"checkpoint=org/missing: no such file or folder, and no model 'org/missing' in the Hugging "
        r"Face cache .*hub \(HF_HUB_OFFLINE is set",
    ):
        load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), "org/missing")


class Untrusted:
    pass


def test_checkpoints_with_foreign_objects_are_refused(tmp_path, tiny_model_dir):
    ok = {"state_dict": {"policy.w": torch.ones(2)}, "hyper_parameters": {"model": {"name_or_path": "x"}}}
    torch.save(ok, tmp_path / "ok.ckpt")
    assert load_lightning_checkpoint(tmp_path / "ok.ckpt")["hyper_parameters"]["model"] == {
        "name_or_path": "x"
    }
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Untrusted()}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"bad\.ckpt: the checkpoint pickles objects other than tensors"):
        load_lightning_checkpoint(tmp_path / "bad.ckpt")
    # old checkpoints pickled the project's config dataclasses: refused too, with the way out
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"model": ModelConfig(name_or_path="x")}},
        tmp_path / "old.ckpt",
    )
    with pytest.raises(ValueError, match="export the policy with save_pretrained"):
        load_lightning_checkpoint(tmp_path / "old.ckpt")
    with pytest.raises(FileNotFoundError):
        load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), tmp_path / "nothing_here")


class CraftedGlobal:
    """Pickles as a call of soft_tokens.training.distributed.layer_class, which would import `target` when unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        from soft_tokens.training.distributed import layer_class

        return layer_class, (self.target,)


def test_crafted_checkpoint_imports_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nclass Layer: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"x": CraftedGlobal("planted_module.Layer")}},
        tmp_path / "c.ckpt",
    )
    with pytest.raises(ValueError, match=r"c\.ckpt: the checkpoint pickles objects"):
        load_lightning_checkpoint(tmp_path / "c.ckpt")
    assert not marker.exists() and "planted_module" not in sys.modules
    # and layer_class itself imports only decoder-layer modules of transformers
    from soft_tokens.training.distributed import layer_class

    with pytest.raises(ValueError, match="only classes under"):
        layer_class("planted_module.Layer")
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a torch.nn.Module class"):
        layer_class("transformers.models.llama.modeling_llama.LlamaConfig")
    assert (
        layer_class("transformers.models.llama.modeling_llama.LlamaDecoderLayer").__name__
        == "LlamaDecoderLayer"
    )


def test_empty_checkpoint_is_named(tmp_path, tiny_model_dir):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.ckpt: an empty file"):
        load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), tmp_path / "empty.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "empty.ckpt").read_bytes() + b"PK\x03\x04")
    with pytest.raises(ValueError, match=r"cut\.ckpt: not a readable checkpoint"):
        load_lightning_checkpoint(tmp_path / "cut.ckpt")


def test_nonexistent_local_model_path_is_named(tmp_path):
    for option in ("name_or_path", "tokenizer", "architecture"):
        kwargs = {"name_or_path": "org/model", option: str(tmp_path / "no" / "model")}
        with pytest.raises(FileNotFoundError, match=rf"model\.{option}=.*no/model: no such file or folder"):
            ModelConfig(**kwargs)
    with pytest.raises(FileNotFoundError, match="model.name_or_path=./missing/model"):
        ModelConfig(name_or_path="./missing/model")
    assert ModelConfig(name_or_path="meta-llama/Llama-3.2-3B").name_or_path == "meta-llama/Llama-3.2-3B"


def _fake_results(name: str, offset: float, ood: bool) -> EvalResults:
    settings = [
        SettingResult(s, "r", s.endswith("greedy"), 1 if s.endswith("greedy") else 4, 10,
                      {1: 0.5 + offset} if s.endswith("greedy") else {1: 0.4 + offset, 2: 0.5, 4: 0.6 + offset},
                      50.0, 20.0, 1.0, [1.0, math.nan], 1.0,
                      pass_at_k_se={1: 0.05} if s.endswith("greedy") else {1: 0.04, 2: 0.045, 4: 0.06})
        for s in ("hard_greedy", "hard_sample", "soft_greedy", "soft_sample")
    ]  # fmt: skip
    arc = {"accuracy": 0.3, "accuracy_se": 0.23, "nll": 2.0 + offset, "n_items": 4.0}
    return EvalResults(
        name, "m", "arith", "test", 10, settings, {"arc": arc} if ood else {}, {"max_cot_tokens": 64}
    )


def test_report_merges_runs_into_tables(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("report", ROOT / "scripts" / "report.py")
    report = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "report", report)
    spec.loader.exec_module(report)
    runs = []
    for name, offset in (("base", 0.0), ("soft", 0.1)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(_fake_results(name, offset, True).to_json()))
        runs += ["--run", f"{name}={folder}"]
    md = report.main([*runs, "--out", str(tmp_path / "docs")])
    text = md.read_text()
    assert "## greedy pass@1" in text and "## sample pass@4" in text and "## OOD NLL change vs base" in text
    assert "| soft | 60.0 ± 5.0 | 60.0 ± 5.0 |" in text  # greedy pass@1 of hard and soft, in %, ± 1 s.e.
    assert "| base | 60.0 ± 6.0 | 60.0 ± 6.0 |" in text  # sample pass@4
    assert "| soft | 30.0 ± 23.0 |" in text  # OOD accuracy
    assert "| soft | 0.100 |" in text  # NLL change vs base
    assert "(with 10 problems, one problem is 10.0 points)" in text
    assert str(tmp_path) not in text and "`.../" + tmp_path.name + "/soft`" in text
    pngs = sorted(p.name for p in (tmp_path / "docs").glob("*.png"))
    assert "evaluation_report_greedy_pass1.png" in pngs and "evaluation_report_sample_pass4.png" in pngs
    assert len(pngs) == 6
    from matplotlib.image import imread

    for png in pngs:  # written images that read back
        assert imread(tmp_path / "docs" / png).ndim == 3
    # without --out the report goes to outputs/report under the working directory
    monkeypatch.chdir(tmp_path)
    assert report.main(runs) == Path("outputs/report/evaluation_report.md")
    assert (tmp_path / "outputs" / "report" / "evaluation_report_sample_pass4.png").is_file()
    # heatmaps of percentages share the 0-100 scale; changes are centred on 0; cells carry their errors
    tables = report.math_tables([(n, _fake_results(n, o, True)) for n, o in (("base", 0.0), ("soft", 0.1))])
    image = tables[0].figure().axes[0].images[0]
    assert (image.norm.vmin, image.norm.vmax) == (0, 100)
    assert "60.0 ± 5.0" in [t.get_text() for t in tables[0].figure().axes[0].texts]
    delta = report.ood_tables(
        [(n, _fake_results(n, o, True)) for n, o in (("base", 0.0), ("soft", 0.1))], "base"
    )[-1]
    norm = delta.figure().axes[0].images[0].norm
    assert norm.vmin == pytest.approx(-0.1) and norm.vmax == pytest.approx(0.1)


def test_ood_accuracy_has_its_standard_error(tmp_path, tiny_model_dir):
    arc = ROOT / "tests" / "fixtures" / "ood" / "arc_tiny.jsonl"
    overrides = [f"model.name_or_path={tiny_model_dir}", "only=[hard_greedy]", "ood.enabled=true", *TINY]
    overrides += ["~ood.datasets.hellaswag", "~ood.datasets.mmlu", f"ood.datasets.arc.path={arc}"]
    res = run_evaluation(compose_cfg("evaluate", overrides, tmp_path / "run"))
    scores = res.ood["arc"]
    n, p = int(scores["n_items"]), scores["accuracy"]
    correct = torch.tensor([1.0] * round(p * n) + [0.0] * (n - round(p * n)))
    # the sample standard deviation of the 0/1 scores over sqrt(n), as pass@k's over problems
    assert scores["accuracy_se"] == pytest.approx(float(correct.std() / math.sqrt(n)), rel=1e-6)
    row = next(
        line
        for line in (tmp_path / "run" / "results.md").read_text().splitlines()
        if line.startswith("| arc |")
    )
    assert f"| {100 * p:.1f} ± {100 * scores['accuracy_se']:.1f} |" in row


# ----- counts, `only`, batching and a folder without a tokenizer (issue 34, items 7 and the poor ones)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "max_examples=-1",
            "config key max_examples=-1: expected an integer >= 1, or null (the whole split)",
        ),
        ("max_examples=0", "config key max_examples=0: expected an integer >= 1"),
        ("max_examples=abc", "config key max_examples='abc': expected an integer >= 1"),
        ("max_examples=1.5", "config key max_examples=1.5: expected an integer >= 1"),
        ("num_samples=0", "config key num_samples=0: expected an integer >= 1"),
        ("batch_size=0", "config key batch_size=0: expected an integer >= 1"),
        ("save_completions=-1", "config key save_completions=-1: expected an integer >= 0"),
        ("k_values=[1,16]", "config key k_values=[1, 16]: each k must lie in 1..num_samples=8"),
        ("settings.hard_sample.num_samples=0", "config key settings.hard_sample.num_samples=0: expected an"),
        ("only=hard_gredy", "config key only=['hard_gredy']: unknown settings ['hard_gredy']; configured: ["),
        ("only=[]", "config key only=[]: names no setting (null runs them all)"),
    ],
)
def test_evaluate_counts_and_names_are_refused_naming_the_key(override, message):
    from soft_tokens.config_types import ConfigTypeError
    from soft_tokens.eval.options import check_eval_options

    cfg = compose_cfg("evaluate", [override], Path("unused"))
    with pytest.raises(ConfigTypeError) as err:
        check_eval_options(cfg)
    assert str(err.value).startswith(message), str(err.value)


def test_max_examples_null_is_the_whole_split_and_one_name_is_one_setting():
    from soft_tokens.eval.options import check_eval_options
    from soft_tokens.eval.run import _examples
    from soft_tokens.eval.solve import build_settings

    cfg = compose_cfg("evaluate", ["only=hard_greedy"], Path("unused"))
    check_eval_options(cfg)  # max_examples: null, only: a single name
    assert cfg.max_examples is None and len(_examples(cfg)) == cfg.data.test.n == 500
    assert [s.name for s in build_settings(cfg.settings, cfg.only)] == ["hard_greedy"]  # not its characters


def test_bad_max_examples_stops_evaluate_before_torch_loads(tmp_path):
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "evaluate.py", "max_examples=-1", f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "config error: config key max_examples=-1: expected an integer >= 1" in out.stderr, out.stderr[
        -2000:
    ]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "import time:" in line}
    assert "omegaconf" in imported and "torch" not in imported


class _CountingEngine:
    """A rollout engine that records the rows of each call and answers each prompt with its own text."""

    def __init__(self, max_cot_tokens: int = 3):
        self.cfg = type("Cfg", (), {"max_cot_tokens": max_cot_tokens})()
        self.calls: list[int] = []

    def generate(self, model, prompts, representer, answer_greedy=True, generator=None):
        n, L = len(prompts), self.cfg.max_cot_tokens
        self.calls.append(n)
        u = torch.rand(n, generator=generator)  # consumes the stream as a real sampled rollout would
        return type(
            "Ro",
            (),
            {
                "completions": [f"{p}|{float(x):.6f}" for p, x in zip(prompts, u)],
                "cot_texts": list(prompts),
                "cot_lengths": torch.full((n,), L),
                "entropy": torch.ones(n, L),
                "cot_mask": torch.ones(n, L, dtype=torch.bool),
            },
        )()


def _solve_counting(k: int, batch_size: int, n_problems: int = 5):
    from soft_tokens.data.types import Example
    from soft_tokens.eval.solve import InferenceSetting, solve
    from soft_tokens.representers import HardRepresenter

    examples = [Example(question=f"q{i}", answer=f"q{i}") for i in range(n_problems)]
    engine, done = _CountingEngine(), []

    def score(completions, golds):  # correct when the completion answers its own problem
        ok = torch.tensor([c.split("|")[0] == g for c, g in zip(completions, golds)])
        return ok.float(), ok

    sol = solve(
        torch.nn.Linear(1, 1),
        engine,
        lambda q: q,
        examples,
        InferenceSetting("s", HardRepresenter(), k),
        score,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(0),
        progress=done.append,
    )
    return sol, engine.calls, done


def test_samples_are_chunked_by_batch_size_and_small_counts_are_unchanged():
    # Whole groups fit: the calls are those of before (2 problems x 2 samples per call of at most 5 rows).
    sol, calls, done = _solve_counting(k=2, batch_size=5)
    assert calls == [4, 4, 2] and done == [2, 2, 1] and bool(sol.correct.all())
    # as the code before the change gave them (same calls, same draws of the generator, same grouping)
    assert sol.completions[0] == ["q0|0.496257", "q0|0.768222"]
    assert sol.completions[4] == ["q4|0.455628", "q4|0.632306"]
    # One problem's 7 samples no longer make one 7-row batch: at most batch_size rows per forward.
    sol, calls, done = _solve_counting(k=7, batch_size=3, n_problems=2)
    assert calls == [3, 3, 3, 3, 2] and max(calls) <= 3 and sum(done) == 2 and done == [0, 0, 1, 0, 1]
    assert sol.correct.shape == (2, 7) and bool(sol.correct.all()) and sol.cot_lengths.shape == (2, 7)
    assert [c.split("|")[0] for c in sol.completions[1]] == ["q1"] * 7


def test_policy_folder_without_tokenizer_says_which_it_uses(tmp_path, tiny_model_dir, caplog):
    from soft_tokens.models.model_files import TOKENIZER_FILES

    folder = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, folder)
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        _, tokenizer, _ = load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), folder)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"checkpoint={folder} has no tokenizer" in m
        and f"using the tokenizer of model.name_or_path={tiny_model_dir}" in m
        for m in warned
    ), warned
    assert tokenizer.name_or_path == str(tiny_model_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), tiny_model_dir)  # its own: no warning
    assert not [r for r in caplog.records if "has no tokenizer" in r.getMessage()]

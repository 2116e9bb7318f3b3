"""The two-task embedded model (assets/embedded_mix) and the build script's task mix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import compose_train
from transformers import AutoModelForCausalLM, AutoTokenizer

import train as train_script
from scripts import build_embedded_model as build
from soft_tokens.data import arith, mnns
from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.data.types import Example

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "embedded_mix"
prompt_of = PromptBuilder("compact")


# ----------------------------------------------------------------------------- the build script's mix


def test_is_valid_trace_hand_computed():
    assert build.is_valid_trace(
        (3, 1, 4, 1), "0 + 3 = 3. 3 - 1 = 2. 2 + 4 = 6. 6 - 1 = 5. The final answer is: \\boxed{5}"
    )
    # -3 - 1 + 4 + 1 = 1: valid and optimal
    assert build.is_valid_trace(
        (3, 1, 4, 1), " 0 - 3 = -3. -3 - 1 = -4. -4 + 4 = 0. 0 + 1 = 1. The final answer is: \\boxed{1}"
    )
    # a wrong partial sum, a negative final sum, other digits
    assert not build.is_valid_trace(
        (3, 1, 4, 1), "0 + 3 = 3. 3 - 1 = 1. 1 + 4 = 5. 5 - 1 = 4. The final answer is: \\boxed{4}"
    )
    assert not build.is_valid_trace(
        (3, 1, 4, 1), "0 - 3 = -3. -3 - 1 = -4. -4 - 4 = -8. -8 + 1 = -7. The final answer is: \\boxed{-7}"
    )
    assert not build.is_valid_trace(
        (3, 1, 4), "0 + 3 = 3. 3 - 1 = 2. 2 + 4 = 6. The final answer is: \\boxed{5}"
    )


def test_mnns_digits_and_uniform_valid_accuracy():
    assert build.mnns_digits(mnns.question_of((9, 1, 1, 7))) == (9, 1, 1, 7)
    with pytest.raises(ValueError, match="not an MNNS question"):
        build.mnns_digits("Ann has 3 apples.")
    # 1, 1: sums 2, 0, 0, -2; valid 2, 0, 0; the minimum 0 twice
    assert build.uniform_valid_accuracy(Example(mnns.question_of((1, 1)), "0")) == pytest.approx(2 / 3)
    # 2, 1: sums 3, 1, -1, -3; valid 3, 1
    assert build.uniform_valid_accuracy(Example(mnns.question_of((2, 1)), "1")) == pytest.approx(1 / 2)


def test_mnns_train_rows_are_valid_traces_of_train_multisets_only():
    cfg = mnns.MnnsConfig()
    of = mnns.split_multisets(0, cfg)
    train = mnns.split_instances("train", 0, cfg)
    rows = build.mnns_train_examples(len(train) + 50, seed=0, cfg=cfg)
    assert len(rows) == len(train) + 50
    optimal = 0
    for i, ex in enumerate(rows):
        digits = build.mnns_digits(ex.question)
        assert digits == train[i % len(train)]  # cycles over the train split in its order
        assert of[tuple(sorted(digits))] == "train"
        assert build.is_valid_trace(digits, ex.solution)
        assert ex.answer == str(mnns.minimum(digits))
        optimal += ex.solution.endswith(f"\\boxed{{{ex.answer}}}")
    assert 0.1 < optimal / len(rows) < 0.35  # about 0.2 expected: usually not the optimum
    # the same instance again gets a fresh trace, from a stream of its own
    assert rows == build.mnns_train_examples(len(train) + 50, seed=0, cfg=cfg)
    assert sum(rows[i].solution != rows[i + len(train)].solution for i in range(50)) > 10


def test_build_data_mixes_half_and_half_and_keeps_the_default_single_task():
    args = build.parse_args(["--tasks", "arith,mnns", "--n-train", "30", "--n-val", "5", "--n-report", "6"])
    data = build.build_data(args)
    tok = data["tokenizer"]
    assert len(data["rows"]) == 60
    texts = [tok.decode(ids[n:-1]) for ids, n in data["rows"]]
    assert all("digits" not in t for t in texts[:30]) and all(t.startswith(" 0 ") for t in texts[30:])
    assert all(
        build.is_valid_trace(build.mnns_digits(tok.decode(ids[:n])), tok.decode(ids[n:-1]))
        for ids, n in data["rows"][30:]
    )
    assert {t: len(v) for t, v in data["val"].items()} == {"arith": 6, "mnns": 6}
    assert data["test"]["mnns"] == mnns.generate_split("test", 6)
    assert data["test"]["arith"] == arith.generate_split("test", 6)
    default = build.parse_args([])
    assert default.tasks == ["arith"] and default.min_formed == 0.0 and default.max_mnns_acc == 1.0


def test_unknown_task_exits_naming_it():
    with pytest.raises(SystemExit, match="--tasks arith,gsm8k: give distinct tasks from arith,mnns"):
        build.parse_args(["--tasks", "arith,gsm8k"])


def test_checkpoint_rule_prefers_eligible_then_closest_to_target():
    args = build.parse_args(["--tasks", "arith,mnns", "--min-formed", "0.95", "--max-mnns-acc", "0.5"])

    def entry(a, mnns_acc=0.0, boxed=1.0):
        return {"arith_acc": a, "arith_boxed": boxed, "mnns_acc": mnns_acc, "mnns_boxed": boxed}

    assert build.eligible(args, entry(0.3)) and not build.eligible(args, entry(0.3, boxed=0.94))
    assert not build.eligible(args, entry(0.3, mnns_acc=0.51))
    assert build.better(args, entry(0.1), entry(0.35, boxed=0.5))  # eligible beats closer
    assert not build.better(args, entry(0.1), entry(0.3))
    halves = build.parse_args(["--tasks", "arith,mnns", "--target", "0.5"])
    assert build.better(halves, entry(0.75), entry(0.25))  # a tie (0.25 off, exact in binary): the later one
    single = build.parse_args([])
    assert build.better(single, {"val_acc": 0.36}, {"val_acc": 0.2})


# ----------------------------------------------------------------------------- the saved model


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS, local_files_only=True)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(ASSETS, local_files_only=True)


def test_mix_model_loads_offline_with_its_specials(tokenizer, model):
    assert {p.name for p in ASSETS.iterdir()} >= {
        "model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md", "build_stats.json",
    }  # fmt: skip
    assert tokenizer.padding_side == "left"
    assert tokenizer.convert_ids_to_tokens(
        [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    ) == ["<|bos|>", "<|eos|>", "<|pad|>"]
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    shape = (model.config.hidden_size, model.config.num_hidden_layers, model.config.intermediate_size)
    assert shape == (192, 4, 512)  # the shape of assets/embedded
    n_params = sum(p.numel() for p in model.parameters())
    assert f"a {n_params:,}-parameter" in (ROOT / "conf" / "model" / "embedded_mix.yaml").read_text()


@pytest.mark.parametrize("task", ["arith", "mnns"])
def test_mix_tokenizer_encodes_both_tasks_and_round_trips(tokenizer, task):
    problems = (arith if task == "arith" else mnns).generate_split("val", 20)

    def enc(s):
        return tokenizer(s, add_special_tokens=False).input_ids

    for ex in problems:
        prompt, completion = prompt_of(ex.question), " " + ex.solution
        ids = tokenizer(prompt).input_ids
        assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer(prompt + completion).input_ids == ids + enc(completion)
        assert tokenizer.decode(ids, skip_special_tokens=True) == prompt
        assert tokenizer.decode(enc(completion)) == completion
    tokens = tokenizer.convert_ids_to_tokens(enc("12 + 3405 = 3417."))
    assert [t for t in tokens if any(c.isdigit() for c in t)] == list("1234053417")
    # the MNNS question's words are in the vocabulary: far fewer tokens than characters
    assert len(tokenizer(prompt_of(mnns.question_of((3, 1, 4, 1)))).input_ids) < 60


@pytest.mark.slow
def test_mix_greedy_accuracy_matches_model_card(tokenizer, model):
    card = (ASSETS / "README.md").read_text()
    stats = json.loads((ASSETS / "build_stats.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(
        stats["args"]["threads"]
    )  # as in the build, so float reductions run in the same order
    try:
        for task, source in (("arith", arith), ("mnns", mnns)):
            row = re.search(rf"^\| {task} \| ([0-9.]+) \|", card, re.M)
            acc = build.greedy_accuracy(
                model,
                tokenizer,
                source.generate_split("val", 100),
                max_new_tokens=model.generation_config.max_new_tokens,
            )
            assert acc == pytest.approx(float(row.group(1)), abs=1e-9)
            assert acc == pytest.approx(stats["report"][task]["val_first100"], abs=1e-9)
    finally:
        torch.set_num_threads(threads)
    assert stats["report"]["mnns"]["test"] < 0.5 and stats["report"]["mnns"]["test_boxed"] >= 0.95


def test_train_runs_two_steps_on_mnns_with_the_mix_model(tmp_path):
    cfg = compose_train(
        ["debug=fast", "data=mnns", "model=embedded_mix", "callbacks.rich_progress_bar=null", "logger=csv"],
        tmp_path,
    )
    assert cfg.model.name_or_path.endswith("assets/embedded_mix")
    metrics = train_script.train(cfg)
    assert "val/accuracy" in metrics and "train/reward" in metrics
    assert (tmp_path / "policy" / "model.safetensors").exists()


@pytest.mark.slow
def test_default_build_data_still_gives_the_embedded_tokenizer():
    args = build.parse_args(["--n-val", "1", "--n-report", "1"])  # the default build: arith only
    data = build.build_data(args)
    saved = json.loads((ROOT / "assets" / "embedded" / "tokenizer.json").read_text())
    rebuilt = json.loads(data["tokenizer"].backend_tokenizer.to_str())
    assert rebuilt["model"] == saved["model"] and rebuilt["pre_tokenizer"] == saved["pre_tokenizer"]
    assert len(data["rows"]) == 100_000 and data["max_new_tokens"] == 57  # assets/embedded/build_stats.json
    assert isinstance(data["val"], list) and isinstance(data["test"], list)

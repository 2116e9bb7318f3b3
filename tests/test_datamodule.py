"""MathDataModule: batch format, seeded shuffling, exact resumption, rank sharding, Lightning round trip."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import datasets
import hydra.utils
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from soft_tokens.data.datamodule import MathDataModule
from soft_tokens.data.sources import DataError
from soft_tokens.data.types import Example

N, B = 22, 4  # 5 full batches per epoch, 2 examples dropped


def examples(n: int = N) -> list[Example]:
    return [Example(question=f"q{i}", answer=str(i), id=f"e{i}") for i in range(n)]


def make_dm(**kwargs) -> MathDataModule:
    kwargs = {"train": examples(), "batch_size": B, "seed": 0, **kwargs}
    return MathDataModule(**kwargs)


def epoch_ids(dm: MathDataModule, epoch: int, loader=None) -> list[list[str]]:
    loader = loader or dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [batch["id"] for batch in loader]


def test_batch_format():
    dm = make_dm(val=examples(5))
    batches = list(dm.train_dataloader())
    assert len(batches) == N // B == len(dm.train_dataloader())
    for batch in batches:
        assert set(batch) == {"question", "answer", "id"}
        assert all(isinstance(v, list) and len(v) == B for v in batch.values())
        assert all(
            q == f"q{a}" and i == f"e{a}" for q, a, i in zip(batch["question"], batch["answer"], batch["id"])
        )
    ids = [i for b in batches for i in b["id"]]
    assert len(set(ids)) == len(ids)
    assert dm.val_examples() == examples(5) and dm.test_examples() == []


def test_sources_from_configs():
    cfg = OmegaConf.create(
        {
            "train": {"_target_": "soft_tokens.data.sources.ArithSource", "split": "train", "n": 40},
            "val": {"_target_": "soft_tokens.data.sources.ArithSource", "split": "val", "n": 6},
        }
    )
    dm = MathDataModule(train=cfg.train, val=dict(cfg.val), batch_size=8)
    dm.setup("fit")
    assert len(dm.examples("train")) == 40 and len(dm.val_examples()) == 6
    assert len(next(iter(dm.train_dataloader()))["question"]) == 8


def test_on_bad_row_override(tmp_path):
    from soft_tokens.data.sources import ArithSource, LocalSource

    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q"}\n')
    dm = MathDataModule(train=LocalSource(path), val=ArithSource("val", n=2), on_bad_row="skip")
    assert len(dm.examples("train")) == 1 and dm.sources["train"].n_skipped == 1
    with pytest.raises(ValueError, match="on_bad_row must be one of"):
        MathDataModule(train=LocalSource(path), on_bad_row="drop")
    with pytest.raises(TypeError, match="cannot build a data source"):
        MathDataModule(train=42)


def test_shuffle_is_seeded_and_changes_per_epoch():
    first = [epoch_ids(make_dm(), e) for e in range(3)]
    assert first == [epoch_ids(make_dm(), e) for e in range(3)]
    assert first[0] != first[1] != first[2]
    assert epoch_ids(make_dm(seed=1), 0) not in first  # seeds do not share epochs (as seed + epoch would)
    unshuffled = epoch_ids(make_dm(shuffle=False), 1)
    assert unshuffled[0] == ["e0", "e1", "e2", "e3"]


@pytest.mark.parametrize("stop", [0, 2, 5])  # batches consumed in epoch 1 before the interruption
def test_resume_from_state_dict(stop):
    full = make_dm()
    loader = full.train_dataloader()
    expected = epoch_ids(full, 0, loader) + epoch_ids(full, 1, loader) + epoch_ids(full, 2, loader)

    dm = make_dm()
    loader = dm.train_dataloader()
    seen = epoch_ids(dm, 0, loader)
    loader.sampler.set_epoch(1)
    it = iter(loader)
    seen += [next(it)["id"] for _ in range(stop)]
    state = dm.state_dict()
    assert state == {"epoch": 1, "batches": stop}

    resumed = make_dm()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    loader = resumed.train_dataloader()
    assert len(loader) == N // B  # the full epoch, as Lightning counts the skipped batches as done
    seen += [b["id"] for b in loader]  # no set_epoch needed: the pass resumes the saved epoch (or the next)
    for epoch in range(loader.sampler.epoch + 1, 3):
        seen += epoch_ids(resumed, epoch, loader)
    assert seen == expected


def test_load_state_dict_after_loader_exists():
    dm = make_dm()
    loader = dm.train_dataloader()
    dm.load_state_dict({"epoch": 0, "batches": 3})
    assert [b["id"] for b in loader] == epoch_ids(make_dm(), 0)[3:]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_get_disjoint_slices_of_each_global_batch(world_size):
    global_batches = epoch_ids(make_dm(), 1)
    per_rank = []
    for rank in range(world_size):
        dm = make_dm()
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
        per_rank.append(epoch_ids(dm, 1))
    for step, global_batch in enumerate(global_batches):
        parts = [per_rank[r][step] for r in range(world_size)]
        assert all(len(p) == B // world_size for p in parts)
        assert sorted(i for p in parts for i in p) == sorted(global_batch)


def test_batch_size_must_divide_over_ranks():
    dm = make_dm()
    dm.trainer = SimpleNamespace(global_rank=0, world_size=3)
    with pytest.raises(ValueError, match="not divisible"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_dm(train=examples(3)).train_dataloader()


# ---- a real Trainer: checkpoint mid-epoch and at an epoch end, resume, compare with an uninterrupted run


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["id"])
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, max_steps: int, ckpt_path=None, num_workers: int = 0) -> list[list[str]]:
    model = Recorder()
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=1, save_top_k=-1)
        ],
    )
    trainer.fit(model, datamodule=make_dm(val=examples(4), num_workers=num_workers), ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore:.*(dirpath has changed|LeafSpec).*")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_resume_matches_uninterrupted_run(tmp_path, num_workers):
    full = fit(tmp_path / "full", 12, num_workers=num_workers)  # 5 batches per epoch: crosses two epoch ends
    assert len(full) == 12 and full[:5] != full[5:10]
    for step in (3, 5, 7):
        ckpt = torch.load(tmp_path / "full" / f"step={step}.ckpt", weights_only=False)
        assert ckpt["MathDataModule"] == {"epoch": (step - 1) // 5, "batches": (step - 1) % 5 + 1}
        resumed = fit(tmp_path / f"resume{step}", 12, tmp_path / "full" / f"step={step}.ckpt", num_workers)
        assert resumed == full[step:], step


# ---- the data configs (conf/data/*.yaml), instantiated as train.py does; hub loading patched


CONF = Path(__file__).parents[1] / "conf" / "data"


def instantiate(name: str, **updates) -> MathDataModule:
    cfg = OmegaConf.create(
        {"seed": 0, "data": OmegaConf.load(CONF / f"{name}.yaml")}
    )  # as composed by train.py
    for key, value in updates.items():
        OmegaConf.update(cfg, f"data.{key}", value)
    return hydra.utils.instantiate(cfg.data)


def test_arith_config():
    dm = instantiate("arith", **{"train.n": 40, "val.n": 5, "test.n": 7})
    dm.setup()
    assert [len(dm.examples(s)) for s in ("train", "val", "test")] == [40, 5, 7]
    assert dm.batch_size == 16 and len(next(iter(dm.train_dataloader()))["id"]) == 16
    assert not {e.question for e in dm.examples("train")} & {e.question for e in dm.val_examples()}


def test_local_config():
    fixture = Path(__file__).parent / "fixtures" / "gsm8k_sample.jsonl"
    dm = instantiate("local", **{"train.path": str(fixture), "train.answer_format": "gsm8k", "batch_size": 2})
    assert (
        [e.answer for e in dm.val_examples()]
        == ["72", "12000", "-3"]
        == [e.answer for e in dm.test_examples()]
    )
    with pytest.raises(Exception, match="train.path"):
        instantiate("local")  # path is mandatory


def test_on_bad_row_knob(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl, line 2: missing field 'answer'"):
        instantiate("local", **{"train.path": str(path), "batch_size": 1}).setup("fit")
    dm = instantiate("local", **{"train.path": str(path), "batch_size": 1, "on_bad_row": "skip"})
    assert len(dm.val_examples()) == 1 and dm.sources["val"].n_skipped == 1


HUB_ROWS = {
    "openai/gsm8k": {"question": "q", "answer": "so\n#### 1,024"},
    "EleutherAI/hendrycks_math": {
        "problem": "p",
        "solution": r"$\boxed{\frac{1}{2}}$",
        "level": "1",
        "type": "x",
    },
    "HuggingFaceH4/MATH-500": {"problem": "p", "solution": r"\boxed{3}", "answer": "3", "unique_id": "u"},
    "agentica-org/DeepScaleR-Preview-Dataset": {"problem": "p", "solution": None, "answer": "7"},
}


@pytest.mark.parametrize(
    "name, train_answer",
    [("gsm8k", "1024"), ("math", r"\frac{1}{2}"), ("deepscaler", "7")],
)
def test_hub_configs(monkeypatch, name, train_answer):
    calls = []

    def load_dataset(path, config=None, split=None, **kwargs):
        calls.append((path, config, split))
        return datasets.Dataset.from_list([HUB_ROWS[path]] * 3)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dm = instantiate(name)
    dm.setup()
    assert {e.answer for e in dm.examples("train")} == {train_answer}
    if name == "gsm8k":
        assert calls == [("openai/gsm8k", "main", s) for s in ("train[:-200]", "train[-200:]", "test")]
    else:
        assert [e.answer for e in dm.test_examples()] == ["3"] * 3 and dm.val_examples()[0].id == "u"
        assert calls[-1] == ("HuggingFaceH4/MATH-500", None, "test")
    if name == "math":
        assert len(calls) == 7 + 2 and len(dm.examples("train")) == 21


# ---- inputs the model cannot take


def test_batch_size_must_be_positive():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="data.batch_size must be a positive integer"):
            make_dm(batch_size=bad)


def test_too_small_training_set_names_its_file(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(
        DataError, match=r"training set \(.*small\.jsonl\) has 1 examples, fewer than .*batch_size=2"
    ):
        instantiate("local", **{"train.path": str(path), "batch_size": 2}).setup("fit")


EMBEDDED = Path(__file__).resolve().parents[1] / "assets" / "embedded"
LONG = "Tom has 3 apples and buys 4 more. " * 100  # about 3,400 characters: beyond 512 positions


def embedded_budget(max_cot_tokens: int = 64):
    from soft_tokens.data.lengths import prompt_budget
    from soft_tokens.data.prompts import PromptBuilder
    from soft_tokens.models.loading import ModelConfig
    from soft_tokens.rollout import RolloutConfig

    model_cfg = ModelConfig(name_or_path=str(EMBEDDED))
    tok = model_cfg.load_tokenizer()
    prompt = PromptBuilder("compact")
    return prompt_budget(model_cfg, tok, lambda q: prompt(q, tok), RolloutConfig(max_cot_tokens, 32))


def long_rows(tmp_path: Path) -> Path:
    rows = [
        {"question": "q1", "answer": "1"},
        {"question": LONG, "answer": "2"},
        {"question": "q3", "answer": "3"},
    ]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_longer_than_the_model_names_file_and_line(tmp_path):
    budget = embedded_budget()
    assert budget.max_positions == 512 and budget.completion_tokens > 64 + 32
    dm = instantiate("local", **{"train.path": str(long_rows(tmp_path)), "batch_size": 1})
    dm.set_prompt_budget(budget)
    with pytest.raises(DataError, match=r"long\.jsonl, line 2: the prompt is \d+ tokens.*512 positions"):
        dm.setup("fit")


def test_on_bad_row_skip_skips_too_long_prompts(tmp_path):
    dm = instantiate(
        "local", **{"train.path": str(long_rows(tmp_path)), "batch_size": 1, "on_bad_row": "skip"}
    )
    dm.set_prompt_budget(embedded_budget())
    dm.setup("fit")
    assert [e.answer for e in dm.examples("train")] == ["1", "3"]


def test_max_prompt_tokens_cuts_long_questions_from_the_left(tmp_path, caplog):
    budget = embedded_budget()
    dm = instantiate(
        "local", **{"train.path": str(long_rows(tmp_path)), "batch_size": 1, "max_prompt_tokens": 100}
    )
    dm.set_prompt_budget(budget)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    train = dm.examples("train")
    assert [e.answer for e in train] == ["1", "2", "3"] and train[0].question == "q1"
    assert LONG.endswith(train[1].question) and len(train[1].question) < len(LONG)
    assert 90 <= budget.count([train[1].question])[0] <= 100  # cut at a token boundary, as little as needed
    assert "cut 1 of 3 questions" in caplog.text
    with pytest.raises(ValueError, match=r"data.max_prompt_tokens=500 must lie in 1\.\.\d+"):
        make_dm(max_prompt_tokens=500).set_prompt_budget(budget)
    with pytest.raises(ValueError, match="lower module.rollout.max_cot_tokens"):
        make_dm().set_prompt_budget(embedded_budget(max_cot_tokens=600))


@pytest.mark.parametrize("content, error", [("", "the file holds no rows"), (None, r"line 2: the prompt is")])
def test_train_refuses_bad_data_before_loading_the_model(tmp_path, monkeypatch, content, error):
    from helpers import compose_train

    import train as train_script
    from soft_tokens.models.loading import ModelConfig

    path = long_rows(tmp_path) if content is None else tmp_path / "long.jsonl"
    if content is not None:
        path.write_text(content)
    overrides = ["debug=fast", "data=local", f"data.train.path={path}", "data.batch_size=1", "logger=csv"]
    cfg = compose_train([*overrides, "callbacks.rich_progress_bar=null"], tmp_path / "run")

    def no_model(self):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(ModelConfig, "load_model", no_model)
    with pytest.raises(DataError, match=rf"long\.jsonl.*{error}"):
        train_script.train(cfg)


def test_a_line_beyond_the_row_limit_is_refused_before_it_is_tokenized(tmp_path):
    from soft_tokens.data.files import MAX_ROW_CHARS
    from soft_tokens.data.lengths import PromptBudget

    seen: list[int] = []

    def tokenizer(prompts):
        seen.extend(len(p) for p in prompts)
        return {"input_ids": [[0] * 8 for _ in prompts]}

    budget = PromptBudget(tokenizer, lambda q: q, max_positions=512, completion_tokens=100)
    path = tmp_path / "huge.jsonl"
    huge = json.dumps({"question": "x" * MAX_ROW_CHARS, "answer": "2"})  # 1,000,031 bytes with the keys
    path.write_text(f'{{"question": "q1", "answer": "1"}}\n{huge}\n{{"question": "q3", "answer": "3"}}\n')
    dm = instantiate("local", **{"train.path": str(path), "batch_size": 1})
    dm.set_prompt_budget(budget)
    with pytest.raises(
        DataError, match=r"huge\.jsonl, line 2: 1,000,031 bytes, longer than the limit of 1,000,000"
    ):
        dm.setup("fit")
    assert seen == []  # refused before the prompt budget tokenized anything
    dm = instantiate("local", **{"train.path": str(path), "batch_size": 1, "on_bad_row": "skip"})
    dm.set_prompt_budget(budget)
    dm.setup("fit")
    assert [e.answer for e in dm.examples("train")] == ["1", "3"] and max(seen) < 100

"""The Lightning datamodule: batches of questions with their gold answers, resumable mid-epoch."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from soft_tokens.data.lengths import PromptBudget
from soft_tokens.data.sources import DataError, Source, check_on_bad_row
from soft_tokens.data.types import Example

Batch = dict[str, list[str]]  # {"question": [...], "answer": [...], "id": [...]}, one entry per prompt


def collate(examples: list[Example]) -> Batch:
    """Turn Examples into a dict of lists (no tokenization: the LightningModule formats and tokenizes)."""
    return {
        "question": [e.question for e in examples],
        "answer": [e.answer for e in examples],
        "id": [e.id for e in examples],
    }


class ExampleDataset(Dataset):
    """A list of Examples as a map-style dataset."""

    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]


# A DistributedSampler subclass so that Lightning does not wrap it in its own: it shards by itself.
class ResumableSampler(DistributedSampler):
    """Per-epoch shuffle from (seed, epoch), cut into global batches; yields this rank's slice of each.

    Incomplete last global batches are dropped. `consumed` counts the global batches handed out so far in
    the current epoch; `resume(epoch, batches)` makes the next pass over `epoch` skip its first `batches`.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ):
        super().__init__(
            range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the number of processes {world_size}"
            )
        if n < batch_size:
            raise ValueError(f"the training set has {n} examples, fewer than one batch of {batch_size}")
        self.n, self.batch_size = n, batch_size
        self.per_rank = batch_size // world_size
        self.num_batches = n // batch_size
        self.consumed = 0
        self._skip: tuple[int, int] | None = None

    def resume(self, epoch: int, batches: int) -> None:
        """Start at `epoch`, skipping its first `batches` global batches."""
        if batches >= self.num_batches:
            # a finished epoch: start the next one now, as loader workers may draw before `set_epoch` is called
            epoch, batches = epoch + 1, 0
        self.epoch, self.consumed, self._skip = epoch, batches, (epoch, batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass yields (Lightning calls this every epoch)."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._skip is not None:
            skip = self._skip[1] if self._skip[0] == self.epoch else 0
            self._skip = None
        order = list(range(self.n))
        if self.shuffle:
            # seeded by (seed, epoch) through a string (hashed by `random`): with seed + epoch, seed 1's
            # first epoch would be seed 0's second
            random.Random(f"shuffle-{self.seed}-{self.epoch}").shuffle(order)
        self.consumed = skip
        for b in range(skip, self.num_batches):
            self.consumed = b + 1  # counted when the batch's first index is drawn
            start = b * self.batch_size + self.rank * self.per_rank
            yield from order[start : start + self.per_rank]

    def __len__(self) -> int:
        # the full epoch even when resuming: Lightning counts the skipped batches as already done
        return self.num_batches * self.per_rank


class TrainLoader(DataLoader):
    """A DataLoader that tells Lightning it resumes mid-epoch (the datamodule holds the state, so none here)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class MathDataModule(L.LightningDataModule):
    """Train/val/test sources -> a train loader of `Batch` dicts (shuffled per epoch, resumes exactly) and the
    val and test Examples, which the evaluation callbacks read (Lightning runs no validation loop).

    Sources may be built objects with `load()`, `_target_` configs, or lists of Examples. `batch_size` is the
    number of prompts per optimizer step across all processes; each process gets batch_size / world_size.
    `on_bad_row`, if set, overrides that setting of every source that has one. After `set_prompt_budget`,
    every split is checked against the model's position limit when loaded (`max_prompt_tokens`: see
    `soft_tokens.data.lengths`).
    """

    def __init__(
        self,
        train: Any,
        val: Any = None,
        test: Any = None,
        batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
        on_bad_row: str | None = None,
        max_prompt_tokens: int | None = None,
    ):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        self.sources = {"train": _build(train), "val": _build(val), "test": _build(test)}
        if on_bad_row is not None:
            check_on_bad_row(on_bad_row)
            for source in self.sources.values():
                if hasattr(source, "on_bad_row"):
                    source.on_bad_row = on_bad_row
        self.batch_size = batch_size
        self.seed, self.num_workers, self.shuffle = seed, num_workers, shuffle
        self.max_prompt_tokens = max_prompt_tokens
        self._budget: PromptBudget | None = None
        self._examples: dict[str, list[Example]] = {}
        self._sampler: ResumableSampler | None = None
        self._resume: dict[str, int] | None = None

    # ---- examples

    def examples(self, split: str) -> list[Example]:
        """The Examples of a split ("train", "val", "test"), loaded once; [] if the split has no source."""
        if split not in self._examples:
            source = self.sources[split]
            examples = [] if source is None else source.load()
            if self._budget is not None:
                skip = getattr(source, "on_bad_row", "raise") == "skip"
                examples = self._budget.fit(examples, f"{split} split", self.max_prompt_tokens, skip)
            self._examples[split] = examples
        return self._examples[split]

    def set_prompt_budget(self, budget: PromptBudget) -> None:
        """Check (or cut, with `max_prompt_tokens`) every split's prompts against the model's positions."""
        budget.limit(self.max_prompt_tokens)  # a bad max_prompt_tokens fails now, before anything loads
        self._budget = budget
        self._examples.clear()

    def val_examples(self) -> list[Example]:
        """The validation Examples, for evaluation callbacks."""
        return self.examples("val")

    def test_examples(self) -> list[Example]:
        """The test Examples, for evaluation callbacks."""
        return self.examples("test")

    def setup(self, stage: str | None = None) -> None:
        """Load the splits the stage needs."""
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(
            stage, ["train", "val", "test"]
        )
        for split in splits:
            self.examples(split)
        if "train" in splits and len(self.examples("train")) < self.batch_size:
            raise DataError(
                f"the training set ({_describe(self.sources['train'])}) has {len(self.examples('train'))} "
                f"examples, fewer than one batch of data.batch_size={self.batch_size}"
            )

    # ---- loaders

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (per epoch, from seed and epoch) batches of this process's share of `batch_size` prompts."""
        examples = self.examples("train")
        rank, world_size = self._rank_world()
        self._sampler = ResumableSampler(
            len(examples), self.batch_size, self.seed, self.shuffle, rank, world_size
        )
        if self._resume is not None:
            self._sampler.resume(self._resume["epoch"], self._resume["batches"])
            self._resume = None
        return TrainLoader(
            ExampleDataset(examples),
            batch_size=self._sampler.per_rank,
            sampler=self._sampler,
            drop_last=True,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    # ---- resumption (Lightning saves these in checkpoints)

    def state_dict(self) -> dict[str, int]:
        """The train sampler's epoch and the number of its global batches consumed in that epoch."""
        if self._sampler is None:
            return dict(self._resume or {"epoch": 0, "batches": 0})
        batches = self._sampler.consumed
        trainer = self.trainer
        if isinstance(trainer, L.Trainer) and trainer.state.fn == "fit":
            # batches given to training_step: exact even when loader workers prefetch ahead of the loop
            batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {"epoch": self._sampler.epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next train loader resume where the saved one stopped."""
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
        if self._sampler is not None:
            self._sampler.resume(**self._resume)
            self._resume = None


def _describe(source: Any) -> str:
    """A source's file or dataset, for error messages."""
    path = getattr(source, "path", None)
    return str(path) if path is not None else type(source).__name__


def _build(spec: Any) -> Source | None:
    """A source from a built object, a `_target_` config, a list of Examples, or None."""
    if isinstance(spec, Mapping):  # a plain dict or an omegaconf DictConfig
        from soft_tokens.configured import instantiate

        return instantiate(spec)
    if spec is None or hasattr(spec, "load"):
        return spec
    if isinstance(spec, (list, tuple)) and all(isinstance(e, Example) for e in spec):
        return _ListSource(list(spec))
    raise TypeError(f"cannot build a data source from {type(spec).__name__}: {spec!r:.100}")


class _ListSource:
    """Examples given directly."""

    def __init__(self, examples: list[Example]):
        self.examples = examples

    def load(self) -> list[Example]:
        return self.examples

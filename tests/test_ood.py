"""Out-of-domain multiple choice: the three hub formats, local and hub loading, log-likelihood scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from numerics import U, categorical_tolerance, logit_bound

from soft_tokens.data.types import Example
from soft_tokens.eval.ood import ChoiceItem, arc_item, load_choice_items, score_choices, solution_items

FIXTURES = Path(__file__).parent / "fixtures" / "ood"


# ----------------------------------------------------------------------------- loaders


def test_arc_loader_maps_letter_and_number_keys():
    items = load_choice_items("arc", str(FIXTURES / "arc_tiny.jsonl"))
    assert len(items) == 4
    first = items[0]
    assert first.context.startswith("Question: An astronomer observes") and first.context.endswith(
        "\nAnswer:"
    )
    assert first.choices[2] == " Planetary days will become shorter." and first.answer == 2
    assert items[2].answer == 0 and len(items[2].choices) == 3  # answerKey "1" of labels "1".."3"
    assert items[3].answer == 0 and len(items[3].choices) == 5
    assert first.id == "Mercury_7175875"


def test_hellaswag_loader_cleans_wikihow_markup():
    items = load_choice_items("hellaswag", str(FIXTURES / "hellaswag_tiny.jsonl"))
    assert [it.answer for it in items] == [3, 3, 0]
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert items[0].choices[3] == " starts pulling up roofing on a roof."
    assert items[2].context == "Home and Garden: How to water a plant. Fill a can with water."
    assert items[2].choices[0] == " Pour the water slowly at the base of the plant."


def test_mmlu_loader():
    items = load_choice_items("mmlu", str(FIXTURES / "mmlu_tiny.jsonl"))
    assert [it.answer for it in items] == [1, 3, 1]
    assert items[1].choices == (
        " The first pharyngeal arch",
        " The first and second pharyngeal arches",
        " The second pharyngeal arch",
        " The second and third pharyngeal arches",
    )
    assert items[0].context == "Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nAnswer:"


def test_limit_keeps_a_seeded_subset_in_order():
    a = load_choice_items("arc", str(FIXTURES / "arc_tiny.jsonl"), limit=2, seed=1)
    b = load_choice_items("arc", str(FIXTURES / "arc_tiny.jsonl"), limit=2, seed=1)
    full = load_choice_items("arc", str(FIXTURES / "arc_tiny.jsonl"))
    assert a == b and len(a) == 2
    assert [full.index(x) for x in a] == sorted(full.index(x) for x in a)


def test_bad_rows_and_formats_are_reported(tmp_path):
    bad = tmp_path / "bad.jsonl"
    row = {"question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "Z"}
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1: cannot read it as arc"):
        load_choice_items("arc", str(bad))
    bad.write_bytes(json.dumps({**row, "answerKey": "A"}).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid UTF-8"):
        load_choice_items("arc", str(bad))
    with pytest.raises(ValueError, match="unknown multiple-choice format"):
        load_choice_items("piqa", str(bad))
    with pytest.raises(FileNotFoundError):
        load_choice_items("arc", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError):
        ChoiceItem("ctx", (" a",), answer=1)


def test_solution_items_are_the_prompt_and_the_reference_solution():
    examples = [Example("What is 2 + 3?", "5", "2 + 3 = 5. The final answer is: \\boxed{5}", id="a")]
    (item,) = solution_items(examples, lambda q: f"User: {q} Assistant:")
    assert item == ChoiceItem(
        "User: What is 2 + 3? Assistant:", (" 2 + 3 = 5. The final answer is: \\boxed{5}",), 0, id="a"
    )
    with pytest.raises(ValueError, match="problem data.jsonl, line 3 has no reference solution"):
        solution_items([Example("q", "1", None, origin="data.jsonl, line 3")], str)


def test_hub_names_go_through_load_dataset(monkeypatch):
    import datasets

    calls = []
    rows = [json.loads(line) for line in (FIXTURES / "mmlu_tiny.jsonl").read_text().splitlines()]

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_choice_items("mmlu", "cais/mmlu", name="all", split="test", limit=2)
    assert calls == [("cais/mmlu", "all", "test", {})] and len(items) == 2


# ----------------------------------------------------------------------------- scoring


class RepeatLM(torch.nn.Module):
    """A fake LM whose next-token logits are +`boost` on the current token and 0 elsewhere."""

    def __init__(self, vocab: int, boost: float = 10.0):
        super().__init__()
        self.vocab, self.boost = vocab, boost
        self.config = SimpleNamespace(max_position_embeddings=512)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.dummy.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(-1, input_ids.unsqueeze(-1), self.boost)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def expected_logprob(tokenizer, context: str, choice: str, vocab: int, boost: float = 10.0) -> float:
    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
    norm = math.log(math.exp(boost) + vocab - 1)
    prev, total = ctx[-1], 0.0
    for t in cont:
        total += (boost if t == prev else 0.0) - norm
        prev = t
    return total


def test_scoring_picks_the_certain_choice_with_exact_log_likelihoods(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    items = [
        ChoiceItem("x y 7", (" 1 2", "777", " 3"), answer=1),  # "777" repeats the last context token
        ChoiceItem("Bob has 9", ("99", " pens. He", " apples"), answer=0),
        ChoiceItem("1 2 3 4 5 6 7 8 9 0 z z", ("zz", " 5"), answer=0),
    ]
    model = RepeatLM(vocab)
    res = score_choices(model, tiny_tokenizer, items, batch_size=3)
    for item, lps, counts in zip(items, res.logprobs, res.num_tokens):
        for choice, lp, n in zip(item.choices, lps, counts):
            assert lp == pytest.approx(
                expected_logprob(tiny_tokenizer, item.context, choice, vocab), abs=1e-4
            )
            assert n == len(tiny_tokenizer(choice, add_special_tokens=False)["input_ids"])
    assert res.predictions == [0 + 1, 0, 0] and res.accuracy == 1.0
    assert res.correct.tolist() == [True, True, True]
    expected_nll = sum(-lp[a] for lp, a in zip(res.logprobs, res.answers)) / sum(
        n[a] for n, a in zip(res.num_tokens, res.answers)
    )
    assert res.mean_nll == pytest.approx(expected_nll)


@pytest.mark.numerics
def test_batched_scoring_matches_one_unpadded_forward_per_choice(tiny_tokenizer, tiny_model):
    items = [arc_item(json.loads(line)) for line in (FIXTURES / "arc_tiny.jsonl").read_text().splitlines()]
    batched = score_choices(tiny_model, tiny_tokenizer, items, batch_size=5)
    single = score_choices(tiny_model, tiny_tokenizer, items, batch_size=1)
    # reference: one forward pass over the whole sequence, no padding, full logits
    item, j = items[1], 3
    ctx = tiny_tokenizer(item.context)["input_ids"]
    cont = tiny_tokenizer(item.choices[j], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = tiny_model(torch.tensor([ctx + cont]), output_hidden_states=True)
    lp = torch.log_softmax(out.logits[0].float(), -1)
    ref = sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))

    def tol(logprob: float, n: int) -> float:
        """A choice's log-likelihood sums n token log-probs: n categorical bounds plus the sum's rounding."""
        per_token = categorical_tolerance(
            out.logits[0], lp.amin(-1), logit_bound(tiny_model, *hidden_logits), 1.0
        )
        return n * float(per_token.max()) + 2 * n * U * abs(logprob)

    hidden_logits = (out.hidden_states[-1], out.logits)
    for a, b, counts in zip(batched.logprobs, single.logprobs, batched.num_tokens):
        for x, y, n in zip(a, b, counts):
            assert abs(x - y) <= tol(y, n)
    assert abs(batched.logprobs[1][j] - ref) <= tol(ref, len(cont))
    assert tiny_model.training is False

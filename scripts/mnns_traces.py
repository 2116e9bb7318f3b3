"""How many partial-sum traces a policy's MNNS chains of thought explore, and how mixed their sign choices are.

For each representer, G chains of thought per test problem are sampled as in training (answers at
--answer-temperature) and measured (docs/second_task.md, "Traces"):
- `accuracy`: the share of samples whose boxed answer is the minimum (sampled pass@1);
- `cot_entropy`: the mean next-token entropy (temperature 1) over CoT steps;
- `distinct_traces`: the mean number of distinct partial-sum sequences per group of G, read from the CoT
  text (for soft, fuzzy and Gumbel tokens the argmax shadow);
- `optimal_in_group`: the share of groups holding at least one sample whose written partial sums are a
  valid path to the minimum (each one the previous plus or minus the next digit, the last the minimum);
- `sign_text_mismatch`: among equations whose partial sum is the previous one plus or minus the digit,
  the share whose written sign is not the one that partial sum used. Hard tokens feed the written sign, so
  this is near 0; a soft CoT's written sign is only the argmax shadow of a mixture, and the partial sums
  that follow may carry the other branch (`0 + 1 = -1`);
- `sign_minority` and `sign_minority_input`: at every step whose token is a chosen sign (` +` or ` -`
  right after a digit; after ` =` or `.` a ` -` starts a negative number), the
  share of the two signs' probability that goes to the less likely one, under the next-token distribution
  (temperature 1) and under the representer's input mixture softmax(logits / tau) (hard tokens: 0, one
  sign is fed); near 0.5 the input carries both branches at once, near 0 one.

    python scripts/mnns_traces.py --model <run>/policy_best --representers hard,soft --n 100 --G 16
    python scripts/mnns_traces.py --model <run>/policy_best --representers soft --noise-top-k 2 \
        --noise-min-entropy 0.3 --gamma 0.35      # the placed noise of experiment=mnns_soft

`--gamma`, `--noise-top-k` and `--noise-min-entropy` go to the representers whose config has them.

`--summarize FILE --group LABEL=SUBSTRING ...` reads rows written with --out and prints a markdown table: per
group (the rows whose model path contains SUBSTRING) and representer, each metric's mean ± standard error
over the group's models (seeds).

    python scripts/mnns_traces.py --summarize traces.jsonl --group hard=/hard_s --group soft=/soft_placed_s
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

try:
    from scripts import grad_diagnostics as gd
    from scripts import representer_configs as rc
    from scripts.script_inputs import (
        InputError,
        comma_list,
        count,
        number,
        output_file,
        read_text,
        usage_errors,
    )
except ModuleNotFoundError:  # run as `python scripts/mnns_traces.py`: scripts/ itself is on the path
    import grad_diagnostics as gd
    import representer_configs as rc
    from script_inputs import InputError, comma_list, count, number, output_file, read_text, usage_errors

from soft_tokens.data.mnns import generate_split, minimum, split_instances
from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.rewards.math_reward import MathReward
from soft_tokens.rollout.logprobs import hidden_states

STEP = re.compile(r"(-?\d+) ([+-]) (\d) = (-?\d+)\.")


def partial_sums(cot: str) -> tuple[int, ...]:
    """The partial sums a CoT writes (`0 + 3 = 3. 3 - 1 = 2.` -> (3, 2)), as it wrote them."""
    return tuple(int(m.group(4)) for m in STEP.finditer(cot))


def signs(cot: str) -> tuple[int, ...]:
    """The signs a CoT chose, +1 or -1 per equation."""
    return tuple(1 if m.group(2) == "+" else -1 for m in STEP.finditer(cot))


def used_signs(cot: str, digits: tuple[int, ...]) -> list[int | None]:
    """Per written partial sum, the sign it used (+1: the previous sum plus the digit, -1: minus; None: a
    slip), the previous sum being the one written before it (0 at the start)."""
    out, prev = [], 0
    for s, d in zip(partial_sums(cot), digits):
        out.append(1 if s == prev + d else -1 if s == prev - d else None)
        prev = s
    return out


def reaches_minimum(cot: str, digits: tuple[int, ...]) -> bool:
    """Whether the written partial sums are a valid path over all digits that ends at the minimum."""
    sums = partial_sums(cot)
    used = used_signs(cot, digits)
    return len(sums) == len(digits) and None not in used and sums[-1] == minimum(digits)


def sign_mismatches(cot: str, digits: tuple[int, ...]) -> tuple[int, int]:
    """(equations whose written sign differs from the sign their partial sum used, equations without a slip)."""
    pairs = [(w, u) for w, u in zip(signs(cot), used_signs(cot, digits)) if u is not None]
    return sum(w != u for w, u in pairs), len(pairs)


def minority_share(z_plus: torch.Tensor, z_minus: torch.Tensor, tau: float) -> torch.Tensor:
    """Share of the two signs' probability under softmax(z / tau) that goes to the less likely sign."""
    return torch.sigmoid(-(z_plus - z_minus).abs() / tau)


def input_tau(rep) -> float | None:
    """The temperature of the representer's input mixture (soft, fuzzy), None for a one-hot (hard) input."""
    return getattr(rep, "tau", None) if rep.name != "hard" else None


def group_stats(cots: list[str], digits: tuple[int, ...]) -> tuple[int, bool]:
    """(distinct partial-sum traces, whether any sample reaches the minimum) of one group."""
    return len({partial_sums(c) for c in cots}), any(reaches_minimum(c, digits) for c in cots)


def measure(model, engine, rep, examples, digits_of, G: int, seed: int) -> dict[str, float]:
    """The metrics of one representer on `examples` (with their digits, `digits_of`), G samples each (see the
    module docstring)."""
    prompt = PromptBuilder("compact")
    reward = MathReward()
    tok = engine.tokenizer
    sign_ids = [tok(s, add_special_tokens=False).input_ids for s in (" +", " -")]
    if any(len(ids) != 1 for ids in sign_ids):
        raise ValueError(f"the tokenizer splits ' +' or ' -' into several tokens: {sign_ids}")
    plus, minus = sign_ids[0][0], sign_ids[1][0]
    digit_ids = torch.tensor(tok.convert_tokens_to_ids(list("0123456789")))
    gen = torch.Generator().manual_seed(seed)
    correct, ent_sum, ent_n, distinct, optimal, mismatch = 0.0, 0.0, 0, [], [], [0, 0]
    minority, minority_in = [], []
    tau = input_tau(rep)
    for ex, digits in zip(examples, digits_of, strict=True):
        with torch.no_grad():
            ro = engine.generate(model, [prompt(ex.question)] * G, rep, generator=gen)
            _, c = reward.score_batch(ro.completions, [ex.answer] * G)
            correct += float(c.float().sum())
            ent_sum += float((ro.entropy * ro.cot_mask).sum())
            ent_n += int(ro.cot_mask.sum())
            n, any_opt = group_stats(ro.cot_texts, digits)
            distinct.append(n)
            optimal.append(any_opt)
            for cot in ro.cot_texts:
                bad, total = sign_mismatches(cot, digits)
                mismatch[0] += bad
                mismatch[1] += total
            logits = model.get_output_embeddings()(hidden_states(model, ro)).float()  # [G, S, V]
        gen_ids = ro.ids[:, ro.prompt_len :]
        # a sign is chosen right after a number (`4 - 8`); after `=` or `.` a ` -` starts a negative number
        prev = torch.cat([ro.ids[:, ro.prompt_len - 1 : ro.prompt_len], gen_ids[:, :-1]], dim=1)
        at_sign = ro.cot_mask & ((gen_ids == plus) | (gen_ids == minus)) & torch.isin(prev, digit_ids)
        z_plus, z_minus = logits[..., plus][at_sign], logits[..., minus][at_sign]
        minority += minority_share(z_plus, z_minus, 1.0).tolist()
        if tau is not None:
            minority_in += minority_share(z_plus, z_minus, tau).tolist()
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return {
        "accuracy": correct / (G * len(examples)),
        "cot_entropy": ent_sum / max(ent_n, 1),
        "distinct_traces": mean(distinct),
        "optimal_in_group": mean([float(x) for x in optimal]),
        "sign_text_mismatch": mismatch[0] / mismatch[1] if mismatch[1] else math.nan,
        "sign_minority": mean(minority),
        "sign_minority_input": mean(minority_in) if tau is not None else 0.0,
        "sign_steps": len(minority),
    }


SUMMARY = ("accuracy", "cot_entropy", "distinct_traces", "optimal_in_group", "sign_text_mismatch")
SUMMARY += ("sign_minority", "sign_minority_input")


def summarize(rows: list[dict], groups: list[tuple[str, str]]) -> str:
    """A markdown table: per group and representer, mean ± SE over models of every SUMMARY metric."""
    import statistics

    from soft_tokens.eval.markdown import markdown_table

    table = []
    for label, part in groups:
        mine = [r for r in rows if part in r["model"]]
        for rep in dict.fromkeys(r["representer"] for r in mine):
            vals = [r for r in mine if r["representer"] == rep]
            cells = []
            for key in SUMMARY:
                xs = [float(r[key]) for r in vals]
                se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
                cells.append(f"{statistics.fmean(xs):.3f}" + ("" if se is None else f" ± {se:.3f}"))
            table.append([label, rep, str(len(vals)), *cells])
    return markdown_table(["trained", "traced with", "models", *SUMMARY], table)


def read_rows(path: Path) -> list[dict]:
    """The JSON rows of a file written with --out, or InputError naming the file and line."""
    out = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}, line {i}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not {"model", "representer", *SUMMARY} <= set(row):
            raise InputError(f"{path}, line {i}: not a row of mnns_traces.py --out")
        out.append(row)
    return out


def group_arg(text: str) -> tuple[str, str]:
    """`LABEL=SUBSTRING` (argparse type)."""
    label, sep, part = text.partition("=")
    if not sep or not label or not part:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=SUBSTRING")
    return label, part


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a saved policy folder (e.g. <run>/policy_best)")
    p.add_argument("--summarize", type=Path, default=None, help="a file of rows written with --out")
    p.add_argument(
        "--group", type=group_arg, action="append", default=[], help="LABEL=SUBSTRING (--summarize)"
    )
    p.add_argument("--representers", type=comma_list(str), default=["hard"], help="conf/representer/ names")
    p.add_argument("--n", type=count(1), default=100, help="test problems (the first n of the 4-digit split)")
    p.add_argument("--G", type=count(1), default=16, help="samples per problem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answer-temperature", type=number(0.0, low_closed=False), default=1.0)
    p.add_argument("--max-cot", type=count(1), default=64)
    p.add_argument(
        "--gamma", type=number(0.0), default=None, help="noise scale where the representer takes one"
    )
    p.add_argument(
        "--noise-top-k", type=count(2), default=None, help="placed noise: between the top-k tokens"
    )
    p.add_argument("--noise-min-entropy", type=number(0.0), default=None, help="placed noise: at forks only")
    p.add_argument("--out", type=output_file, default=None, help="append one JSON row per representer")
    return p


def rows(args: argparse.Namespace) -> Iterator[dict]:
    """One row of metrics per representer."""
    model, engine = gd.load(args)
    examples = generate_split("test", args.n, seed=0)
    digits_of = split_instances("test", seed=0)[: args.n]  # the same instances, in the same order
    for name in args.representers:
        knobs = {"temperature": args.answer_temperature} if name == "hard" else {}
        for key in ("gamma", "noise_top_k", "noise_min_entropy"):
            if getattr(args, key) is not None and rc.takes(name, key):
                knobs[key] = getattr(args, key)
        rep = rc.build_representer(name, **knobs)
        yield {
            "model": args.model,
            "representer": name,
            "n": args.n,
            "G": args.G,
            "seed": args.seed,
        } | measure(model, engine, rep, examples, digits_of, args.G, args.seed)


def main(argv: list[str] | None = None) -> list[dict]:
    """Print (and with --out append) one JSON row per representer."""
    out = []
    with usage_errors(p := parser()):
        args = p.parse_args(argv)
        if args.summarize is not None:
            found = read_rows(args.summarize)
            print(summarize(found, args.group or [("all", "")]))
            return found
        if args.model is None:
            raise InputError("--model is required (or --summarize FILE)")
        for row in rows(args):
            print(json.dumps(row), flush=True)
            out.append(row)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])

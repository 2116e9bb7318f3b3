"""Build the embedded default model: a byte-level BPE tokenizer and a tiny Llama trained on the arith task.

The checkpoint kept is the one whose greedy val accuracy is closest to --target (so RL has room to improve).
Run from the repository root:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/build_embedded_model.py --out assets/embedded

`--tasks arith,mnns` builds the two-task model instead (assets/embedded_mix): --n-train rows of each task,
the MNNS rows being train-split instances with valid but not necessarily optimal sign traces; a checkpoint
is eligible when every task's greedy val answers are boxed at least --min-formed of the time and its MNNS
val accuracy is at most --max-mnns-acc, and the target applies to the first task's accuracy:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/build_embedded_model.py --tasks arith,mnns \\
        --out assets/embedded_mix --min-formed 0.95 --max-mnns-acc 0.5 --threads 1 --max-minutes 28
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from soft_tokens.data import mnns
from soft_tokens.data.arith import ArithConfig, generate_split
from soft_tokens.data.prompts import PromptBuilder
from soft_tokens.data.types import Example
from soft_tokens.rewards.boxed import extract_boxed

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
TASKS = ("arith", "mnns")
prompt_of = PromptBuilder("compact")


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, one token per digit; '\\boxed{' is its own pre-token so it never merges with a space."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\\boxed\{"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = ("<|bos|>", tok.token_to_id("<|bos|>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B:1", special_tokens=[bos]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        padding_side="left",
        model_max_length=512,  # the model's max_position_embeddings
    )


def encode_examples(tokenizer, examples) -> list[tuple[list[int], int]]:
    """(ids of BOS + prompt + ' ' + solution + EOS, number of prompt ids) for each example."""
    prompts = [prompt_of(e.question) for e in examples]
    p_ids = tokenizer(prompts).input_ids
    c_ids = tokenizer([" " + e.solution for e in examples], add_special_tokens=False).input_ids
    return [(p + c + [tokenizer.eos_token_id], len(p)) for p, c in zip(p_ids, c_ids)]


def make_batch(rows: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels only on the completion (and EOS)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def completions(
    model, tokenizer, examples, batch_size: int = 100, max_new_tokens: int = 64, **sampling
) -> list[str]:
    """The model's completion of each example's prompt: greedy, or sampled with `sampling` (do_sample=True...)."""
    model.eval()
    texts = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        enc = tokenizer([prompt_of(e.question) for e in chunk], return_tensors="pt", padding=True).to(
            model.device
        )
        out = model.generate(**enc, max_new_tokens=max_new_tokens, **(sampling or {"do_sample": False}))
        texts += tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return texts


def accuracy(texts: list[str], examples) -> float:
    """Fraction of completions whose last boxed answer (as the reward reads it) is the gold one."""
    return sum(extract_boxed(t) == e.answer for t, e in zip(texts, examples, strict=True)) / len(examples)


def boxed_share(texts: list[str]) -> float:
    """Fraction of completions with a boxed answer (what the reward scores 10 or 100 rather than 0)."""
    return sum(extract_boxed(t) is not None for t in texts) / len(texts)


def greedy_accuracy(model, tokenizer, examples, batch_size: int = 100, max_new_tokens: int = 64) -> float:
    """Fraction of examples whose greedy completion's last boxed answer (as the reward reads it) is the gold one."""
    return accuracy(completions(model, tokenizer, examples, batch_size, max_new_tokens), examples)


# ----------------------------------------------------------------------------- the MNNS rows of the mix


def mnns_digits(question: str) -> mnns.Digits:
    """The digits of an MNNS question (as `mnns.question_of` lists them)."""
    m = re.search(r"digits ([1-9](?:, [1-9])*) so that", question)
    if m is None:
        raise ValueError(f"not an MNNS question: {question!r}")
    return tuple(int(d) for d in m.group(1).split(", "))


def is_valid_trace(digits: mnns.Digits, text: str) -> bool:
    """Whether text is exactly the solution of some sign pattern with a non-negative sum (optimal or not)."""
    n = len(digits)
    return any(
        text.strip() == mnns.format_trace(digits, mnns.signs_of(i, n))
        for i, s in enumerate(mnns.all_sums(digits))
        if s >= 0
    )


def follows_mnns_format(digits: mnns.Digits, text: str) -> bool:
    """Whether text has the shape of an MNNS solution: one equation per digit, the question's digits in
    order with either sign, then the boxed answer (the arithmetic itself unchecked)."""
    steps = " ".join(rf"-?\d+ [+-] {d} = -?\d+\." for d in digits)
    return re.fullmatch(steps + r" The final answer is: \\boxed\{-?\d+\}", text.strip()) is not None


def uniform_valid_accuracy(example: Example) -> float:
    """The chance that a sign pattern drawn uniformly among the valid ones reaches the MNNS minimum."""
    sums = [x for x in mnns.all_sums(mnns_digits(example.question)) if x >= 0]
    return sums.count(min(sums)) / len(sums)


def mnns_train_examples(n: int, seed: int, cfg: mnns.MnnsConfig) -> list[Example]:
    """n rows cycling over the train split's instances (its multisets only), each with a fresh valid trace
    drawn uniformly among the sign patterns with a non-negative sum; the answer is the gold minimum."""
    digits = mnns.split_instances("train", seed, cfg)
    rng = random.Random(f"mnns-traces-{seed}")
    rows = (digits[i % len(digits)] for i in range(n))
    return [
        Example(mnns.question_of(d), str(mnns.minimum(d)), mnns.valid_trace(d, rng), id=f"mnns-train-{i:06d}")
        for i, d in enumerate(rows)
    ]


def eval_splits(task: str, args: argparse.Namespace) -> tuple[list[Example], list[Example]]:
    """The val and test problems of one task (each split has a seeded stream of its own)."""
    n_val = max(args.n_val, args.n_report)
    if task == "arith":
        cfg = ArithConfig()
        return (
            generate_split("val", n_val, seed=args.seed, cfg=cfg),
            generate_split("test", args.n_report, seed=args.seed, cfg=cfg),
        )
    cfg = mnns.MnnsConfig(n_digits=args.mnns_digits)
    return (
        mnns.generate_split("val", n_val, seed=args.seed, cfg=cfg),
        mnns.generate_split("test", args.n_report, seed=args.seed, cfg=cfg),
    )


def task_splits(task: str, args: argparse.Namespace) -> tuple[list[Example], list[Example], list[Example]]:
    """The train rows, val and test problems of one task."""
    if task == "arith":
        train = generate_split("train", args.n_train, seed=args.seed, cfg=ArithConfig())
    else:
        train = mnns_train_examples(args.n_train, args.seed, mnns.MnnsConfig(n_digits=args.mnns_digits))
    return (train, *eval_splits(task, args))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The build's command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/embedded")
    p.add_argument(
        "--tasks", default="arith", help=f"comma-separated, from {','.join(TASKS)}; the first one is targeted"
    )
    p.add_argument("--mnns-digits", type=int, default=4, help="digits per MNNS instance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--device", default="cpu", help="cuda works for quick experiments; the assets are built on cpu"
    )
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--n-train", type=int, default=100_000)
    p.add_argument("--n-val", type=int, default=200, help="val problems for checkpoint selection")
    p.add_argument("--n-report", type=int, default=500, help="val and test problems for the final report")
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--eval-every", type=int, default=50, help="steps between val evaluations")
    p.add_argument("--target", type=float, default=0.35, help="val accuracy to aim for")
    p.add_argument("--stop-above", type=float, default=0.6, help="stop once val accuracy exceeds this")
    p.add_argument("--max-minutes", type=float, default=30.0, help="safety stop on training time")
    p.add_argument(
        "--min-formed",
        type=float,
        default=0.0,
        help="eligible: every task's greedy val answers boxed this often",
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="no training: measure the several-task folder in --out again and rewrite its stats and card",
    )
    p.add_argument(
        "--max-mnns-acc", type=float, default=1.0, help="eligible: MNNS greedy val accuracy at most this"
    )
    return check_tasks(p.parse_args(argv))


def check_tasks(args: argparse.Namespace) -> argparse.Namespace:
    """`args.tasks` as a list of known tasks, or exit naming the unknown one."""
    args.tasks = args.tasks.split(",") if isinstance(args.tasks, str) else list(args.tasks)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks or len(set(args.tasks)) != len(args.tasks):
        sys.exit(
            f"--tasks {','.join(args.tasks)}: give distinct tasks from {','.join(TASKS)}, e.g. arith,mnns"
        )
    return args


def build_data(args: argparse.Namespace) -> dict:
    """The train/val/test splits of each task, the tokenizer trained on the train splits, the encoded train
    rows (the tasks' rows one after the other; training shuffles them) and the answer budget
    (`max_new_tokens`). With one task `val` and `test` are its lists, otherwise dicts by task."""
    splits = {task: task_splits(task, args) for task in args.tasks}
    train = [e for tr, _, _ in splits.values() for e in tr]
    tokenizer = build_tokenizer([prompt_of(e.question) + " " + e.solution for e in train], args.vocab_size)
    rows = encode_examples(tokenizer, train)
    for tr, _, _ in splits.values():
        ex = tr[0]
        full = tokenizer(prompt_of(ex.question) + " " + ex.solution).input_ids + [tokenizer.eos_token_id]
        assert full == rows[train.index(ex)][0], (
            "prompt and completion must tokenize the same apart as together"
        )
    max_new_tokens = max(len(ids) - n for ids, n in rows) + 8
    print(f"tokenizer: {len(tokenizer)} tokens; longest train sequence {max(len(r[0]) for r in rows)} tokens")
    if len(args.tasks) == 1:
        _, val, test = splits[args.tasks[0]]
    else:
        val, test = {t: v for t, (_, v, _) in splits.items()}, {t: te for t, (_, _, te) in splits.items()}
    return dict(val=val, test=test, tokenizer=tokenizer, rows=rows, max_new_tokens=max_new_tokens)


def evaluate_val(args: argparse.Namespace, model, data: dict) -> dict:
    """Greedy scores on the first `n_val` val problems: `val_acc` for one task; per task accuracy and boxed
    share (and the 1-minute load average) for several."""
    budget, tokenizer = data["max_new_tokens"], data["tokenizer"]
    if len(args.tasks) == 1:
        return {
            "val_acc": greedy_accuracy(model, tokenizer, data["val"][: args.n_val], max_new_tokens=budget)
        }
    out = {}
    for task in args.tasks:
        val = data["val"][task][: args.n_val]
        texts = completions(model, tokenizer, val, max_new_tokens=budget)
        out[f"{task}_acc"], out[f"{task}_boxed"] = accuracy(texts, val), boxed_share(texts)
    out["load"] = round(os.getloadavg()[0], 2)
    return out


def target_acc(args: argparse.Namespace, entry: dict) -> float:
    """The val accuracy that the target and the early stop apply to: the first task's."""
    return entry["val_acc"] if len(args.tasks) == 1 else entry[f"{args.tasks[0]}_acc"]


def eligible(args: argparse.Namespace, entry: dict) -> bool:
    """Whether a checkpoint may be chosen: every task's answers boxed often enough, MNNS not too accurate."""
    if len(args.tasks) == 1:
        return True
    formed = all(entry[f"{t}_boxed"] >= args.min_formed for t in args.tasks)
    return formed and entry.get("mnns_acc", 0.0) <= args.max_mnns_acc


def better(args: argparse.Namespace, entry: dict, best: dict | None) -> bool:
    """Whether entry replaces best: eligible before not, then closer to the target (the later one on ties)."""
    if best is None:
        return True

    def key(e: dict) -> tuple[bool, float]:
        return not eligible(args, e), abs(target_acc(args, e) - args.target)

    return key(entry) <= key(best)


def build_model(args: argparse.Namespace, tokenizer, max_new_tokens: int) -> LlamaForCausalLM:
    """A randomly initialised tied-embedding Llama of the requested shape, greedy generation config."""
    mcfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(mcfg).to(args.device)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=max_new_tokens,
    )
    return model


def train_model(args: argparse.Namespace, model: LlamaForCausalLM, data: dict) -> tuple[list[dict], dict]:
    """Train, evaluating every `eval_every` steps; load the state closest to the target accuracy and return
    the evaluation history and the chosen entry."""
    tokenizer, rows = data["tokenizer"], data["rows"]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed)).tolist()
    history, best, train_time = [], None, 0.0
    for step in range(1, args.max_steps + 1):
        t0 = time.time()
        model.train()
        idx = [order[(step * args.batch_size + i) % len(order)] for i in range(args.batch_size)]
        batch = make_batch([rows[i] for i in idx], tokenizer.pad_token_id)
        loss = model(**{k: v.to(args.device) for k, v in batch.items()}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        train_time += time.time() - t0
        if step % args.eval_every:
            continue
        scores = evaluate_val(args, model, data)
        history.append(
            {"step": step, "train_s": round(train_time, 1), "loss": round(loss.item(), 4), **scores}
        )
        shown = " ".join(f"{k} {v:.3f}" for k, v in scores.items()).replace("_", " ")
        print(f"step {step} train {train_time:.0f}s loss {loss.item():.4f} {shown}", flush=True)
        if better(args, history[-1], best):
            best = dict(history[-1], state=copy.deepcopy(model.state_dict()))
        stop = target_acc(args, history[-1]) > args.stop_above and eligible(args, history[-1])
        if stop or train_time > 60 * args.max_minutes:
            break
    model.load_state_dict(best.pop("state"))
    print(f"chosen: {best}")
    return history, best


def save_and_measure(
    args: argparse.Namespace, model: LlamaForCausalLM, data: dict
) -> tuple[dict, PreTrainedTokenizerFast]:
    """Save model and tokenizer to `args.out`, reload them from disk; what the saved files give, and the
    reloaded tokenizer."""
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    data["tokenizer"].save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(out)
    budget = data["max_new_tokens"]
    if len(args.tasks) > 1:
        report = {
            t: task_report(args, model, tokenizer, data["val"][t], data["test"][t], budget)
            for t in args.tasks
        }
        print(f"saved model: {report}")
        return report, tokenizer
    report = {
        "val_first100": greedy_accuracy(model, tokenizer, data["val"][:100], max_new_tokens=budget),
        "val": greedy_accuracy(model, tokenizer, data["val"][: args.n_report], max_new_tokens=budget),
        "test": greedy_accuracy(model, tokenizer, data["test"], max_new_tokens=budget),
    }
    print(f"saved model: {report}")
    return report, tokenizer


def task_report(args: argparse.Namespace, model, tokenizer, val: list, test: list, budget: int) -> dict:
    """One task's greedy accuracy and boxed share on val and test (the first `n_report` of each, and the
    first 100 val problems); for MNNS also the share of exact valid traces and the accuracy of one sample
    per val problem at temperature 0.7 (the RL sampling temperature of the embedded model)."""
    out = {"val_first100": greedy_accuracy(model, tokenizer, val[:100], max_new_tokens=budget)}
    for name, problems in (("val", val[: args.n_report]), ("test", test)):
        texts = completions(model, tokenizer, problems, max_new_tokens=budget)
        out[name], out[f"{name}_boxed"] = accuracy(texts, problems), boxed_share(texts)
        if problems[0].id.startswith("mnns"):
            traces = [
                is_valid_trace(mnns_digits(e.question), t) for e, t in zip(problems, texts, strict=True)
            ]
            out[f"{name}_valid_trace"] = sum(traces) / len(traces)
            shaped = [
                follows_mnns_format(mnns_digits(e.question), t) for e, t in zip(problems, texts, strict=True)
            ]
            out[f"{name}_format"] = sum(shaped) / len(shaped)
            out[f"{name}_uniform_valid"] = sum(map(uniform_valid_accuracy, problems)) / len(problems)
    for temperature in (0.7, 1.0) if val[0].id.startswith("mnns") else ():
        torch.manual_seed(args.seed)
        problems = val[: args.n_val]
        texts = completions(
            model,
            tokenizer,
            problems,
            max_new_tokens=budget,
            do_sample=True,
            temperature=temperature,
            top_k=0,
        )
        out[f"val_sampled_t{temperature}"] = accuracy(texts, problems)
    return out


def remeasure(out: Path) -> None:
    """Measure a several-task build's saved folder again with the current `task_report` (no training): the
    report in build_stats.json (the previous one kept as `report_before`) and README.md are rewritten."""
    stats = json.loads((out / "build_stats.json").read_text())
    args = check_tasks(argparse.Namespace(**stats["args"]))
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    model = AutoModelForCausalLM.from_pretrained(out).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(out)
    budget = stats["max_new_tokens"]
    report = {t: task_report(args, model, tokenizer, *eval_splits(t, args), budget) for t in args.tasks}
    before = stats.get("report_before", stats["report"])  # the build's own report
    changed = {
        f"{t}.{k}": (v, report[t][k]) for t in args.tasks for k, v in before[t].items() if report[t][k] != v
    }
    print(f"remeasured: {report}; changed (build, now): {changed or 'nothing'}")
    stats["report_before"], stats["report"] = before, report
    stats["remeasure_command"] = "HF_HUB_OFFLINE=1 python " + " ".join(sys.argv)
    (out / "build_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    (out / "README.md").write_text(mix_model_card(stats, tokenizer))


def machine() -> str:
    """The CPU's model name, as lscpu reports it."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (lscpu failed)"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Model name")), "unknown")


def main() -> None:
    """Build the embedded model: data, tokenizer, training to the target accuracy, saved folder and card."""
    args = parse_args()
    if args.remeasure:
        remeasure(Path(args.out))
        return
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    t_start, load_start = time.time(), os.getloadavg()[0]
    data = build_data(args)
    model = build_model(args, data["tokenizer"], data["max_new_tokens"])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters")
    history, best = train_model(args, model, data)
    report, tokenizer = save_and_measure(args, model, data)
    stats = {
        "args": vars(args),
        "n_params": n_params,
        "vocab_size": len(data["tokenizer"]),
        "max_new_tokens": data["max_new_tokens"],
        "history": history,
        "chosen": best,
        "report": report,
        "total_minutes": round((time.time() - t_start) / 60, 1),
        "torch": torch.__version__,
        "command": "HF_HUB_OFFLINE=1 python " + " ".join(sys.argv),
    }
    if len(args.tasks) > 1:
        stats["machine"] = machine()
        stats["load_start"], stats["load_end"] = round(load_start, 2), round(os.getloadavg()[0], 2)
        stats["train_rows"] = {t: args.n_train for t in args.tasks}
    out = Path(args.out)
    (out / "build_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    card = model_card if len(args.tasks) == 1 else mix_model_card
    (out / "README.md").write_text(card(stats, tokenizer))


def model_card(s: dict, tokenizer) -> str:
    """The README of the saved folder, from the build statistics."""
    a, r, c = s["args"], s["report"], s["chosen"]
    stop = tokenizer(" The final answer is:", add_special_tokens=False).input_ids
    boxed = tokenizer("\\boxed{", add_special_tokens=False).input_ids
    curve = "\n".join(
        f"| {h['step']} | {h['train_s']} | {h['loss']} | {h['val_acc']:.3f} |" for h in s["history"]
    )
    return f"""# Embedded default model

A tiny Llama trained from scratch on the embedded arithmetic task (`soft_tokens.data.arith`), built by
`scripts/build_embedded_model.py`. It exists so that the whole pipeline (rollouts, soft/fuzzy CoT, RL)
runs offline on a CPU; its greedy accuracy is deliberately mid-range so that RL has room to improve.

## Measured greedy accuracy (saved files, reloaded from disk)
- greedy accuracy on the first 100 val problems (seed 0): {r["val_first100"]:.2f}
- greedy accuracy on the first {a["n_report"]} val problems (seed 0): {r["val"]:.3f}
- greedy accuracy on the first {a["n_report"]} test problems (seed 0): {r["test"]:.3f}

Prompt `User: {{question}} Assistant:` (the `compact` template), greedy, at most {s["max_new_tokens"]} new
tokens, answer = last `\\boxed{{...}}` integer compared with the gold answer. The checkpoint was chosen on
the first {a["n_val"]} val problems, so the test figure is the unbiased one.

## Model
- `LlamaForCausalLM`: hidden {a["hidden"]}, {a["layers"]} layers, {a["heads"]} heads, intermediate
  {a["intermediate"]}, tied embeddings, max positions 512; {s["n_params"]:,} parameters (float32).
- Tokenizer: byte-level BPE trained on the train split, {s["vocab_size"]} tokens, digits one per token,
  specials `<|bos|>`={tokenizer.bos_token_id}, `<|eos|>`={tokenizer.eos_token_id}, `<|pad|>`={tokenizer.pad_token_id};
  BOS is prepended by the tokenizer; left padding. `\\boxed{{` is a pre-token of its own, so the space
  before it is a separate token and `\\boxed{{` tokenizes the same alone as inside a completion:
  `" The final answer is:"` -> {stop}, `"\\boxed{{"` -> {boxed}.

## Data and training
- Task: `generate_split("train", {a["n_train"]}, seed={a["seed"]}, cfg=ArithConfig())`: 2-3 additions or
  subtractions, start 2-19, changes 1-19, amounts never negative. Completion = `" " + solution` + EOS,
  e.g. `7 + 5 = 12. 12 - 3 = 9. The final answer is: \\boxed{{9}}`.
- Next-token loss on the completion only; AdamW lr {a["lr"]} (warm-up {a["warmup"]} steps, then constant),
  batch {a["batch_size"]}, {a["threads"]} CPU threads, deterministic algorithms, seed {a["seed"]}.
- Chosen checkpoint: step {c["step"]} ({c["train_s"]} s of training), val accuracy {c["val_acc"]:.3f} on
  {a["n_val"]} problems (target {a["target"]}). Whole build: {s["total_minutes"]} min, torch {s["torch"]}.
- Times are wall-clock seconds spent in training steps (evaluation excluded) on the machine that built it;
  the numbers are deterministic in steps, not in seconds (on an idle 2-core CPU a step takes about 0.2 s).

| step | train s | loss | val acc ({a["n_val"]}) |
|---|---|---|---|
{curve}

## Rebuild
```
{s["command"]}
```
`build_stats.json` holds the same numbers in machine-readable form.
"""


def mix_model_card(s: dict, tokenizer) -> str:
    """The README of a several-task build's folder, from the build statistics."""
    a, r, c = s["args"], s["report"], s["chosen"]
    tasks, first = a["tasks"], a["tasks"][0]
    stop = tokenizer(" The final answer is:", add_special_tokens=False).input_ids
    boxed = tokenizer("\\boxed{", add_special_tokens=False).input_ids
    mnns_prompt = prompt_of(mnns.question_of((3, 1, 4, 1)))
    mnns_tokens = tokenizer.convert_ids_to_tokens(tokenizer(mnns_prompt).input_ids)
    cols = " | ".join(f"{t} acc | {t} boxed" for t in tasks)
    curve = "\n".join(
        f"| {h['step']} | {h['train_s']} | {h['loss']} | "
        + " | ".join(f"{h[f'{t}_acc']:.3f} | {h[f'{t}_boxed']:.3f}" for t in tasks)
        + f" | {h['load']} |"
        for h in s["history"]
    )
    results = "\n".join(
        f"| {t} | {r[t]['val_first100']:.2f} | {r[t]['val']:.3f} | {r[t]['test']:.3f} | "
        f"{r[t]['val_boxed']:.3f} | {r[t]['test_boxed']:.3f} |"
        for t in tasks
    )
    loads = [h["load"] for h in s["history"]] + [s["load_start"], s["load_end"]]
    m = r.get("mnns", {})
    mnns_lines = (
        f"""- MNNS, well formed: {m["val_format"]:.3f} of the val and {m["test_format"]:.3f} of the test completions have the
  solution's shape (one equation per digit, the question's digits in order, then the boxed answer); exact
  valid traces (every partial sum right, the sum not negative): {m["val_valid_trace"]:.3f} (val) and
  {m["test_valid_trace"]:.3f} (test); the rest are arithmetic slips, as on the arithmetic task.
- MNNS, room for RL: greedy decoding takes the likelier sign at each step, and `+` is the likelier one
  among valid patterns, so the greedy sum is rarely the minimum. One sample per val problem (first
  {a["n_val"]}, seed {a["seed"]}) is correct {m["val_sampled_t0.7"]:.3f} of the time at temperature 0.7 and
  {m["val_sampled_t1.0"]:.3f} at 1.0; a valid trace drawn uniformly (the training distribution) would be optimal
  with probability {m["test_uniform_valid"]:.3f} on the test problems."""
        if m
        else ""
    )
    remeasured = ""
    if "remeasure_command" in s:
        before = s["report_before"]
        changed = [f"{t}.{k}" for t in tasks for k, v in before[t].items() if s["report"][t][k] != v]
        remeasured = (
            f"The figures above were measured again from the saved files, without training, by\n"
            f"`{s['remeasure_command']}` (the report's later measures added); the build's own report is kept\n"
            f"in `build_stats.json` as `report_before`; figures that differ from it: {', '.join(changed) or 'none'}.\n"
        )
    threads_note = (
        "\n  One thread, not the embedded build's two: on the shared 2-core machine of this build (1-minute load"
        "\n  about 6) a training step took 5-10 s with two threads against 1.1-1.3 s with one, measured just"
        "\n  before the build; float reductions may differ with the thread count, so rerun with the same one."
        if a["threads"] == 1
        else ""
    )
    return f"""# Embedded two-task model ({", ".join(tasks)})

A tiny Llama trained from scratch on {" and ".join(f"`soft_tokens.data.{t}`" for t in tasks)}, built by
`scripts/build_embedded_model.py --tasks {",".join(tasks)}`. It is the base model of the second task
(issue 32): it follows both tasks' formats, its arithmetic accuracy is mid-range, and it learned MNNS from
valid sign traces that are usually not the optimal one, so that RL has room on both tasks and each task can
serve as the other's out-of-domain set. `assets/embedded` (arithmetic only) stays the default model.

## Measured greedy accuracy (saved files, reloaded from disk)

| task | val first 100 | val first {a["n_report"]} | test first {a["n_report"]} | boxed (val) | boxed (test) |
|---|---|---|---|---|---|
{results}

{mnns_lines}

Prompt `User: {{question}} Assistant:` (the `compact` template), greedy, at most {s["max_new_tokens"]} new
tokens, answer = last `\\boxed{{...}}` integer compared with the gold answer (for MNNS the minimum
non-negative sum); "boxed" = the share of completions with a boxed answer (what the math reward scores 10 or
100 rather than 0). Val and test are the splits of seed {a["seed"]} (MNNS: {a["mnns_digits"]} digits,
splits by digit multiset). The checkpoint was chosen on the first {a["n_val"]} val problems of each task,
so the test figures are the unbiased ones.

## Model
- `LlamaForCausalLM`: hidden {a["hidden"]}, {a["layers"]} layers, {a["heads"]} heads, intermediate
  {a["intermediate"]}, tied embeddings, max positions 512; {s["n_params"]:,} parameters (float32): the
  shape of `assets/embedded`.
- Tokenizer: byte-level BPE trained on both tasks' train rows, {s["vocab_size"]} tokens, digits one per
  token, specials `<|bos|>`={tokenizer.bos_token_id}, `<|eos|>`={tokenizer.eos_token_id}, `<|pad|>`={tokenizer.pad_token_id};
  BOS is prepended by the tokenizer; left padding; `\\boxed{{` is a pre-token of its own:
  `" The final answer is:"` -> {stop}, `"\\boxed{{"` -> {boxed}. An MNNS prompt is
  {len(mnns_tokens)} tokens: {" ".join(mnns_tokens)}

## Data and training
- {a["n_train"]:,} rows of each task, shuffled together (half and half):
  - arith: `generate_split("train", {a["n_train"]}, seed={a["seed"]}, cfg=ArithConfig())` with its solutions,
    e.g. `7 + 5 = 12. 12 - 3 = 9. The final answer is: \\boxed{{9}}`;
  - MNNS: the {a["mnns_digits"]}-digit train split's instances (only its multisets; split seed {a["seed"]}),
    cycled, each row with a fresh `valid_trace`: a sign pattern drawn uniformly among those with a
    non-negative sum (optimal or not), e.g. `0 + 3 = 3. 3 - 1 = 2. 2 + 4 = 6. 6 - 1 = 5. The final answer
    is: \\boxed{{5}}` for 3, 1, 4, 1 (minimum 1).
- Next-token loss on the completion only; AdamW lr {a["lr"]} (warm-up {a["warmup"]} steps, then constant),
  batch {a["batch_size"]}, torch threads: {a["threads"]}, deterministic algorithms, seed {a["seed"]}.{threads_note}

## Checkpoint choice (the rule fixed before the run)
Every {a["eval_every"]} steps the model answers the first {a["n_val"]} val problems of each task greedily. A
checkpoint is eligible when on every task at least {a["min_formed"]} of its answers are boxed and its MNNS
accuracy is at most {a["max_mnns_acc"]}; the one kept is the eligible checkpoint whose {first} accuracy is
closest to {a["target"]} (the later one on ties; if none were eligible, the closest of all). Training stops
at the first eligible evaluation with {first} accuracy above {a["stop_above"]}, after {a["max_minutes"]} min
of training steps, or at step {a["max_steps"]}.

- Chosen: step {c["step"]} ({c["train_s"]} s of training), {first} val accuracy {c[f"{first}_acc"]:.3f},
  eligible: {eligible(argparse.Namespace(**a), c)}. Whole build: {s["total_minutes"]} min, torch {s["torch"]}.
- Machine: {s["machine"]}, {a["threads"]} torch thread(s) on a 2-core machine shared with other jobs; 1-minute
  load average {min(loads)} to {max(loads)} during the build (last column; at the start {s["load_start"]},
  at the end {s["load_end"]}), so the seconds below are not a speed measurement; the numbers are
  deterministic in steps.

| step | train s | loss | {cols} | load |
|---|---|---|{"---|---|" * len(tasks)}---|
{curve}

## Rebuild
```
{s["command"]}
```
{remeasured}`build_stats.json` holds the same numbers in machine-readable form.
"""


if __name__ == "__main__":
    main()

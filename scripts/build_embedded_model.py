"""Build the embedded default model: a byte-level BPE tokenizer and a tiny Llama trained on the arith task.

The checkpoint kept is the one whose greedy val accuracy is closest to --target (so RL has room to improve).
Run from the repository root:
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/build_embedded_model.py --out assets/embedded
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
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

from soft_tokens.boxed import extract_boxed
from soft_tokens.data.arith import ArithConfig, generate_split
from soft_tokens.data.prompts import PromptBuilder

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
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
def greedy_accuracy(model, tokenizer, examples, batch_size: int = 100, max_new_tokens: int = 64) -> float:
    """Fraction of examples whose greedy completion's last boxed answer (as the reward reads it) is the gold one."""
    model.eval()
    correct = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        enc = tokenizer([prompt_of(e.question) for e in chunk], return_tensors="pt", padding=True).to(
            model.device
        )
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        correct += sum(extract_boxed(t) == e.answer for t, e in zip(texts, chunk))
    return correct / len(examples)


def parse_args() -> argparse.Namespace:
    """The build's command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/embedded")
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
    return p.parse_args()


def build_data(args: argparse.Namespace) -> dict:
    """The train/val/test splits, the tokenizer trained on the train split, the encoded train rows and the
    answer budget (`max_new_tokens`)."""
    cfg = ArithConfig()
    train = generate_split("train", args.n_train, seed=args.seed, cfg=cfg)
    val = generate_split("val", max(args.n_val, args.n_report), seed=args.seed, cfg=cfg)
    test = generate_split("test", args.n_report, seed=args.seed, cfg=cfg)
    tokenizer = build_tokenizer([prompt_of(e.question) + " " + e.solution for e in train], args.vocab_size)
    rows = encode_examples(tokenizer, train)
    ex = train[0]
    full = tokenizer(prompt_of(ex.question) + " " + ex.solution).input_ids + [tokenizer.eos_token_id]
    assert full == rows[0][0], "prompt and completion must tokenize the same apart as together"
    max_new_tokens = max(len(ids) - n for ids, n in rows) + 8
    print(f"tokenizer: {len(tokenizer)} tokens; longest train sequence {max(len(r[0]) for r in rows)} tokens")
    return dict(val=val, test=test, tokenizer=tokenizer, rows=rows, max_new_tokens=max_new_tokens)


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
        val = data["val"][: args.n_val]
        acc = greedy_accuracy(model, tokenizer, val, max_new_tokens=data["max_new_tokens"])
        history.append(
            {"step": step, "train_s": round(train_time, 1), "loss": round(loss.item(), 4), "val_acc": acc}
        )
        print(f"step {step} train {train_time:.0f}s loss {loss.item():.4f} val acc {acc:.3f}", flush=True)
        if best is None or abs(acc - args.target) <= abs(best["val_acc"] - args.target):
            best = dict(history[-1], state=copy.deepcopy(model.state_dict()))
        if acc > args.stop_above or train_time > 60 * args.max_minutes:
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
    report = {
        "val_first100": greedy_accuracy(model, tokenizer, data["val"][:100], max_new_tokens=budget),
        "val": greedy_accuracy(model, tokenizer, data["val"][: args.n_report], max_new_tokens=budget),
        "test": greedy_accuracy(model, tokenizer, data["test"], max_new_tokens=budget),
    }
    print(f"saved model: {report}")
    return report, tokenizer


def main() -> None:
    """Build the embedded model: data, tokenizer, training to the target accuracy, saved folder and card."""
    args = parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    t_start = time.time()
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
    out = Path(args.out)
    (out / "build_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    (out / "README.md").write_text(model_card(stats, tokenizer))


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


if __name__ == "__main__":
    main()

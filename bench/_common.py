"""Shared pieces of the benchmarks: models at realistic and tiny shapes, a tokenizer, timing, reports.

Run the benchmarks from the repository root (`make bench`, or `python bench/rollout.py --help`).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from soft_tokens.eval.markdown import markdown_table
from soft_tokens.models.loading import TORCH_DTYPES
from soft_tokens.models.tiny import tiny_llama, tiny_tokenizer
from soft_tokens.representers import GumbelSoftmaxRepresenter, HardRepresenter, SoftRepresenter

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "assets" / "embedded"
DEFAULT_OUT = ROOT / "docs" / "benchmarks"

# Qwen2.5-0.5B's shape (its config.json on the hub): only the number of layers is cut on CPU.
QWEN_0_5B = dict(
    vocab_size=151_936,
    hidden_size=896,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    num_hidden_layers=24,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    max_position_embeddings=32_768,
)

PROMPTS = [  # short prompts first: the training-step benchmark takes the first B of them
    "User: What is 12 + 30? Assistant:",
    "User: Compute 6 * 7 - 5. Assistant:",
    "User: Ann has 7 apples. She gets 5 more. How many apples does Ann have now? Assistant:",
    "User: Bob has 9 pens. He gives away 3. How many pens are left? Assistant:",
]

# The paper's three CoT representations at their default temperatures and noise.
REPRESENTERS = {
    "hard": lambda: HardRepresenter(temperature=1.0),
    "soft": lambda: SoftRepresenter(tau=0.5, gamma=0.33),
    "fuzzy": lambda: SoftRepresenter(tau=1e-4, gamma=0.33, name="fuzzy"),
}

# Other continuous-token methods, timed in the rollout benchmark beside them (no target applies to them).
RELATED = {"gumbel": lambda: GumbelSoftmaxRepresenter(tau=0.1, top_k=10)}

# Ends with ':' like the real stop string, so stop detection does its usual work, but a NUL never appears.
NEVER_STOP = "\x00 The final answer is:"


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run in seconds")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=sorted(TORCH_DTYPES))
    p.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads on CPU (0: torch default); see docs"
    )
    p.add_argument("--layers", type=int, default=None, help="layers of the Qwen2.5-0.5B-shaped model")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary of the Qwen2.5-0.5B-shaped model")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        default="auto",
        choices=["auto", "wall", "cpu"],
        help="what the medians time: wall clock, or this process's CPU time (robust on a shared CPU);"
        " auto: cpu on CPU, wall on CUDA",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and markdown results")
    p.add_argument("--no-write", action="store_true", help="print only")


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, seed and device; raises a clear error when CUDA is asked for and missing."""
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.clock == "auto":
        args.clock = "cpu" if args.device == "cpu" else "wall"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return device


def without_eos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy with no EOS token, so the rollout never ends a row early (as generate with eos_token_id=None)."""
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = None
    return tok


def qwen_shaped(layers: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Qwen2.5-0.5B's shape with `layers` layers and random weights, eval mode."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(**{**QWEN_0_5B, "num_hidden_layers": layers, "vocab_size": vocab})
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = 0, 1, 2
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    return model, tiny_tokenizer()  # any tokenizer works with random weights


def tiny_llama_pair(
    dtype: torch.dtype, device: torch.device, seed: int = 0, hidden: int = 64, layers: int = 2
):
    """The test suite's tiny Llama shape (random weights) with the tiny tokenizer."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=seed, hidden=hidden, layers=layers, max_positions=2048)
    return model.to(device=device, dtype=dtype), tok


def small_model(dtype: torch.dtype, device: torch.device, seed: int = 0):
    """The embedded model (assets/embedded) if it is there, else a tiny random Llama; and a label."""
    if (EMBEDDED / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(EMBEDDED)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(EMBEDDED, dtype=dtype).to(device).eval()
        return model, tok, "embedded (assets/embedded)"
    model, tok = tiny_llama_pair(dtype, device, seed)
    return model, tok, "tiny Llama (random, d=64, 2 layers)"


def describe(model: PreTrainedModel) -> dict[str, Any]:
    cfg = model.config
    return {
        "architecture": type(model).__name__,
        "vocab": cfg.vocab_size,
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "intermediate": cfg.intermediate_size,
        "tied": bool(getattr(cfg, "tie_word_embeddings", False)),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """Wall-clock and process CPU seconds of one call (CUDA work is waited for)."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c, out


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: int, warmup: int, device: torch.device, clock: str = "wall"
) -> dict[str, dict[str, Any]]:
    """Run each function `warmup` times untimed, then `reps` rounds; each round runs every function once,
    in a rotated order, so that a slow spell of a shared machine falls on all of them alike.

    Returns, per name: `median` (seconds, of the wall clock or of this process's CPU time, per `clock`),
    `wall` and `cpu` (all timings), and the last output. CPU time leaves out the time the process waited
    for a core, which is what makes it usable on a machine shared with other jobs (with one thread it
    equals the wall time of an idle machine, give or take memory-bandwidth contention).
    """
    names = list(fns)
    out: dict[str, dict[str, Any]] = {n: {"wall": [], "cpu": [], "out": None} for n in names}
    for _ in range(warmup):
        for n in names:
            out[n]["out"] = fns[n]()
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            wall, cpu, res = timed(fns[n], device)
            out[n]["wall"].append(wall)
            out[n]["cpu"].append(cpu)
            out[n]["out"] = res
    for n in names:
        out[n]["median"] = statistics.median(out[n][clock])
        out[n]["median_wall"] = statistics.median(out[n]["wall"])
    return out


def rss_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMeter:
    """Peak memory above what was allocated when it was made: CUDA allocator statistics, or the resident set."""

    def __init__(self, device: torch.device) -> None:
        gc.collect()
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.method = "torch.cuda.max_memory_allocated - memory_allocated before"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.read = lambda: rss_kb("VmHWM") * 1024
            self.base, self.method = rss_kb("VmRSS") * 1024, "VmHWM (reset) - VmRSS before"
        except OSError:
            self.read = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.base, self.method = self.read(), "ru_maxrss - ru_maxrss before (not resettable)"

    def peak_MB(self) -> float:
        """The peak so far above the start, in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (self.read() - self.base) / 2**20


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cell(v: Any) -> str:
    """A benchmark table cell: three significant digits (thousands separated), yes / **no** for a target."""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    return str(v)


def results_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The markdown table of `columns` of result rows (an absent value is an empty cell)."""
    return markdown_table(columns, [[cell(r.get(c, "")) for c in columns] for r in rows])


def write_results(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")
    print(f"wrote {out_dir / (name + '.json')} and {out_dir / (name + '.md')}")

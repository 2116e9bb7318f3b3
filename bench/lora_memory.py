"""Memory of one RL training step, full weights vs LoRA, at a scaled-down Llama 3.1 8B shape; the 8B estimate.

Each variant runs in a fresh subprocess, on the real training path: the train config composed as train.py
composes it (`model=llama3_1_8b`, built from its config.json with random weights, fewer layers and a smaller
vocabulary; `estimator.beta` > 0, so that the full-weight run loads its frozen reference copy while LoRA
uses the adapter-disabled policy), `build_module`, the arithmetic data and one Lightning optimizer step
(rollout, teacher-forced log-probs, KL, backward, AdamW). Two numbers per variant:
- measured: the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) above
  its resident set just before the model is built: weights, reference, gradients, AdamW state, activations
  and allocator overhead of the step;
- counted: the bytes of the training state's tensors after the step (weights, one gradient per trainable
  weight, AdamW's state, the reference model).
The 8B estimate multiplies the counted bytes per parameter (float32: 4 per weight, 4 per gradient, 8 of
AdamW state, 4 per reference weight) by the parameter counts of conf/model/llama3_1_8b.yaml's architecture,
counted from its config.json (`llama_parameters`, `lora_parameters`; both checked against the model built
here). Activations (small at these sequence lengths, and with gradient checkpointing) are not estimated.

    python bench/lora_memory.py            # 1 layer, vocabulary 8192: ~6 GB peak, a minute or two
    python bench/lora_memory.py --tiny     # smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, results_table, rss_kb, write_results

ARCH = ROOT / "assets" / "architectures" / "llama-3.1-8b-instruct" / "config.json"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = ("full", "lora")
GB = 1e9
COLUMNS = ["variant", "params_M", "trainable_M", "weights_GB", "grads_GB", "adamw_GB", "reference_GB"]
COLUMNS += ["counted_GB", "measured_peak_GB", "fit_s"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a 64-wide model: a smoke run in seconds")
    p.add_argument("--layers", type=int, default=1, help="decoder layers of the 8B shape (it has 32)")
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary (the 8B has 128,256)")
    p.add_argument("--rank", type=int, default=16, help="LoRA r (alpha = 2r)")
    p.add_argument("--beta", type=float, default=0.04, help="estimator.beta: > 0 loads the reference")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def shape(args: argparse.Namespace) -> dict[str, int]:
    """config.json overrides of the measured model: the 8B's layer shape (or a tiny one), fewer layers, vocab."""
    out = {"num_hidden_layers": args.layers, "vocab_size": args.vocab}
    if args.tiny:
        tiny = dict(hidden_size=64, intermediate_size=224, num_attention_heads=4, num_key_value_heads=2)
        out |= tiny | {"head_dim": 16, "vocab_size": 512}
    return out


def llama_parameters(cfg: dict) -> int:
    """Parameters of a Llama from its config.json: E, the head (unless tied), the layers and the final norm."""
    d, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg.get("head_dim") or 0
    hd = hd or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    layer = d * q + 2 * d * kv + q * d + 3 * d * inter + 2 * d
    embed = cfg["vocab_size"] * d * (1 if cfg.get("tie_word_embeddings") else 2)
    return embed + cfg["num_hidden_layers"] * layer + d


def lora_parameters(cfg: dict, rank: int, targets: list[str]) -> int:
    """LoRA adapter parameters: r x (in + out) per adapted linear layer."""
    d, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg.get("head_dim") or 0
    hd = hd or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    dims = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}
    dims |= {"gate_proj": (d, inter), "up_proj": (d, inter), "down_proj": (inter, d)}
    return cfg["num_hidden_layers"] * sum(rank * sum(dims[t]) for t in targets)


def overrides(args: argparse.Namespace, variant: str, tokenizer_dir: Path) -> list[str]:
    """The train.py overrides of one variant: the 8B preset at the measured shape, one short step."""
    out = ["model=llama3_1_8b", "+model.random_init=true", f"+model.tokenizer={tokenizer_dir}"]
    out += [f"+model.config_overrides.{k}={v}" for k, v in shape(args).items()]
    out += ["data.batch_size=1", "module.samples_per_prompt=2", "module.rollout.max_cot_tokens=8"]
    out += ["module.rollout.answer_max_tokens=4", f"estimator.beta={args.beta}", "trainer.max_steps=1"]
    out += ["~callbacks", "~logger", "export_policy=false"]
    if variant == "lora":
        out += [f"model.lora.r={args.rank}", f"model.lora.alpha={2 * args.rank}"]
        out += [f"model.lora.target_modules=[{','.join(LINEAR)}]"]
    return out


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def child(args: argparse.Namespace) -> None:
    """One variant: build and train one step, write its measured peak and counted state to --result."""
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from soft_tokens.data.lengths import prompt_budget
    from soft_tokens.models.tiny import tiny_tokenizer
    from soft_tokens.training.builders import build_module

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    tiny_tokenizer().save_pretrained(folder / "tokenizer")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides(args, args.child, folder / "tokenizer"))
    cfg.paths.output_dir = str(folder / "run")
    L.seed_everything(0)
    datamodule = instantiate(cfg.data)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the resident set now
    before = rss_kb("VmRSS")
    module = build_module(cfg)
    datamodule.set_prompt_budget(
        prompt_budget(module.model_cfg, module.tokenizer, module.format_prompt, module.rollout_cfg)
    )
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - start
    peak = rss_kb("VmHWM") - before
    policy, ref = module.policy, module.ref_model
    trainable = [p for p in policy.parameters() if p.requires_grad]
    state = [v for s in trainer.optimizers[0].state.values() for v in s.values() if torch.is_tensor(v)]
    row = {
        "variant": args.child,
        "params": sum(p.numel() for p in policy.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "weights_GB": tensor_bytes(policy.parameters()) / GB,
        "grads_GB": tensor_bytes(trainable) / GB,  # each trainable weight's gradient, same dtype
        "adamw_GB": tensor_bytes(state) / GB,
        "reference_GB": tensor_bytes(ref.parameters()) / GB if isinstance(ref, torch.nn.Module) else 0.0,
        "measured_peak_GB": peak * 1024 / GB,
        "fit_s": seconds,
        "global_step": trainer.global_step,
    }
    args.result.write_text(json.dumps(row))


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--child", variant, "--result", str(result)]
        cmd += ["--layers", str(args.layers), "--vocab", str(args.vocab), "--rank", str(args.rank)]
        cmd += ["--beta", str(args.beta)] + (["--tiny"] if args.tiny else [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROJECT_ROOT": str(ROOT)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0 or not result.is_file():
            raise SystemExit(f"{variant} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        row = json.loads(result.read_text())
    row["counted_GB"] = row["weights_GB"] + row["grads_GB"] + row["adamw_GB"] + row["reference_GB"]
    row["params_M"], row["trainable_M"] = row["params"] / 1e6, row["trainable"] / 1e6
    return row


def estimate_8b(rank: int) -> list[dict]:
    """Training-state bytes of the 8B preset (float32 master weights), full vs LoRA, with and without KL."""
    cfg = json.loads(ARCH.read_text())
    n, rows = llama_parameters(cfg), []
    for variant, targets in (
        ("full", None),
        (f"lora r={rank}, all linear", LINEAR),
        (f"lora r={rank}, q,v", ["q_proj", "v_proj"]),
    ):
        a = lora_parameters(cfg, rank, targets) if targets else n
        state = 4 * (n + (a if targets else 0)) + 4 * a + 8 * a  # weights, gradients, AdamW moments
        ref = 0 if targets else 4 * n  # LoRA's reference is the policy with the adapters disabled
        row = {"variant": variant, "params": n, "params_B": n / 1e9, "trainable": a, "trainable_M": a / 1e6}
        rows.append(row | {"beta_0_GB": state / GB, "beta_gt_0_GB": (state + ref) / GB})
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.child:
        child(args)
        return {}
    info = machine()
    rows = [run_variant(args, v) for v in VARIANTS]
    cfg = json.loads(ARCH.read_text()) | shape(args)
    expected = {"full": (llama_parameters(cfg), llama_parameters(cfg))}
    expected["lora"] = (
        expected["full"][0] + lora_parameters(cfg, args.rank, LINEAR),
        lora_parameters(cfg, args.rank, LINEAR),
    )
    for row in rows:  # the counting behind the 8B estimate describes the model that was built
        if (row["params"], row["trainable"]) != expected[row["variant"]]:
            raise SystemExit(
                f"parameter count mismatch for {row['variant']}: {row} vs {expected[row['variant']]}"
            )
    est = estimate_8b(args.rank)
    payload = {
        "machine": info,
        "shape": cfg,
        "rank": args.rank,
        "beta": args.beta,
        "rows": rows,
        "estimate_8b": est,
    }
    md = "\n\n".join([
        "# LoRA memory: one training step, full weights vs LoRA",
        f"Shape: Llama 3.1 8B's config.json with {shape(args)}; float32; beta {args.beta}; LoRA r={args.rank} "
        f"on {', '.join(LINEAR)}. Machine: {info['cpu']}, {info['cores']} cores, load {info['load_avg_1m_at_start']}.",
        results_table(rows, COLUMNS),
        "Estimate for conf/model/llama3_1_8b.yaml (float32 training state; activations not included):",
        results_table(est, ["variant", "params_B", "trainable_M", "beta_0_GB", "beta_gt_0_GB"]),
    ])  # fmt: skip
    print(md)
    if not args.no_write:
        write_results(args.out, "lora_memory_tiny" if args.tiny else "lora_memory", payload, md)
    return payload


if __name__ == "__main__":
    main()

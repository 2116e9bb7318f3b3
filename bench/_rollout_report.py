"""The report of bench/rollout.py: its speed targets and its markdown."""

from __future__ import annotations

from _common import REPRESENTERS, results_table

COLUMNS = [
    "model",
    "L",
    "variant",
    "tokens",
    "median_s",
    "wall_s",
    "ms_per_token",
    "tok_per_s",
    "vs_generate",
    "vs_generate_static",
    "vs_hard",
]


def targets(rows: list[dict], length_ratios: dict[str, dict], long_factor: int) -> list[dict]:
    """The speed targets: hard >= 1.3x generate and >= 1.0x generate_static on the embedded model; soft and
    fuzzy >= 0.95x hard at the Qwen shape; the cost of a 4x longer CoT at most 4.5x (representers)."""
    out = []

    def target(label: str, text: str, value: float | None, bound: float) -> None:
        if value is not None:
            out.append({"model": label, "target": text, "value": value, "holds": value >= bound})

    for label in dict.fromkeys(r["model"] for r in rows):
        qwen = label.startswith("Qwen")
        for r in (r for r in rows if r["model"] == label):
            if r["variant"] == "hard" and not qwen:
                target(label, f"hard >= 1.3x generate tok/s (L={r['L']})", r["vs_generate"], 1.3)
                text = f"hard >= 1.0x generate_static tok/s (L={r['L']})"
                target(label, text, r["vs_generate_static"], 1.0)
            if r["variant"] in ("soft", "fuzzy") and qwen:
                target(label, f"{r['variant']} >= 0.95x hard tok/s (L={r['L']})", r["vs_hard"], 0.95)
        L0 = min(r["L"] for r in rows if r["model"] == label)
        tokens = {(r["variant"], r["L"]): r["tokens"] for r in rows if r["model"] == label}
        for v, ratio in length_ratios[label].items():  # median over rounds of time(long) / time(short)
            per_token = ratio * tokens[(v, L0)] / tokens[(v, long_factor * L0)]
            out.append(
                {
                    "model": label,
                    "target": f"{v}: time({long_factor}L) / time(L) <= 4.5 (L={L0})",
                    "value": ratio,
                    "per_token_cost_ratio": per_token,
                    "holds": ratio <= 4.5 if v in REPRESENTERS else None,
                }
            )
    return out


def render(info, args, models, rows, micro, tgt) -> str:
    lines = [
        "# Rollout throughput",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads),"
        f" transformers {info['transformers']}{', GPU ' + info['gpu'] if 'gpu' in info else ''};"
        f" load average at start {info['load_avg_1m_at_start']}.",
        f"Device {args.device}, dtype {args.dtype}, batch {args.batch}, answer tokens {args.answer_len},"
        f" median of {args.small_reps} (small model) / {args.reps} (Qwen shape) rounds after {args.warmup} warm-up"
        f" (at L only), clock: {args.clock}. A round runs every variant at both lengths in a rotated order;"
        " `vs_generate`, `vs_hard` and time(4L) / time(L) are medians over rounds of the per-round ratio"
        f"{', torch.compile' if args.compile else ''}. generate_static: generate with a static cache and"
        " its forward compiled (Hugging Face's fastest path), compiled before timing.",
        "",
        "Models: " + "; ".join(f"{k}: {v}" for k, v in models.items()),
        "",
        results_table(rows, COLUMNS),
    ]
    if micro:
        cols = ["part", "ms"] + [k for r in micro for k in r if k not in ("part", "ms")]
        cols = list(dict.fromkeys(cols))
        lines += ["", f"One decode step at batch {args.batch} (Qwen shape):", "", results_table(micro, cols)]
    lines += [
        "",
        "Targets (`per_token_cost_ratio`: time per generated token at the long CoT over that at L):",
        "",
        results_table(tgt, ["model", "target", "value", "per_token_cost_ratio", "holds"]),
    ]
    return "\n".join(lines)

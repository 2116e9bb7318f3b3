"""How close the rollouts of a `bench/rollout.py` run came to the memory-bandwidth bound of its device.

A decode step at batch B must read every weight once and each row's KV cache: at a context of c positions,
bytes(step) = P_w + B * c * layers * 2 * kv_heads * head_dim * s (P_w the weights' bytes, s bytes per value).
The bound on tokens/s is B / (bytes(step) / bandwidth), with c the mean context over the rollout
(prompt + half the generated tokens). Bandwidth: `--bandwidth-gbs`, else the device's datasheet figure.

    python bench/bandwidth_bound.py OUT/eager/rollout.json [--bandwidth-gbs 4800]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Datasheet HBM bandwidth in GB/s, matched by substring of torch.cuda.get_device_name().
BANDWIDTH_GBS = {
    "H200": 4800,
    "H100 80GB HBM3": 3350,
    "H100 PCIe": 2000,
    "A100-SXM4-80GB": 2039,
    "A100": 1555,
}
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def bandwidth_of(device_name: str) -> float | None:
    """The datasheet bandwidth (GB/s) of a device name, if known."""
    for key, gbs in BANDWIDTH_GBS.items():
        if key in device_name:
            return float(gbs)
    return None


def bound_rows(payload: dict, gbs: float) -> list[dict]:
    """Per rollout row of the benchmark: the bound's tokens/s and the measured share of it."""
    out = []
    for r in payload["rows"]:
        m = payload["models"][r["model"]]
        s = BYTES[m["dtype"]]
        head_dim = m["hidden"] // m["heads"]
        per_row = r["tokens"] / r["batch"]
        context = r["prompt_len"] + per_row / 2
        kv = r["batch"] * context * m["layers"] * 2 * m["kv_heads"] * head_dim * s
        step_bytes = m["params_M"] * 1e6 * s + kv
        bound = r["batch"] / (step_bytes / (gbs * 1e9))
        out.append(
            {
                **{k: r[k] for k in ("model", "L", "variant", "tok_per_s")},
                "bound_tok_per_s": bound,
                "share_of_bound": r["tok_per_s"] / bound,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rollout_json")
    p.add_argument("--bandwidth-gbs", type=float, default=None)
    args = p.parse_args(argv)
    payload = json.loads(Path(args.rollout_json).read_text())
    gbs = args.bandwidth_gbs or bandwidth_of(payload["machine"].get("gpu", ""))
    if gbs is None:
        raise SystemExit(f"unknown device {payload['machine'].get('gpu')!r}: pass --bandwidth-gbs")
    print(
        f"bandwidth {gbs:.0f} GB/s\n\n| model | L | variant | tok/s | bound tok/s | share |\n|---|---|---|---:|---:|---:|"
    )
    for r in bound_rows(payload, gbs):
        print(
            f"| {r['model']} | {r['L']} | {r['variant']} | {r['tok_per_s']:.0f} | {r['bound_tok_per_s']:.0f} |"
            f" {r['share_of_bound']:.2f} |"
        )


if __name__ == "__main__":
    main()

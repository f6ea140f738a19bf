#!/usr/bin/env python3
"""Plots of a dp_bench_handoff JSON (directport bench --json FILE): one PNG per consumer count,
latency p50 (CPU clock, solid; GPU clock where measured, dashed) against frame size, log-log,
one line per method.

Usage: plot_handoff.py RESULTS.json [--out-prefix PREFIX]   (needs matplotlib)
Writes PREFIX-k1.png, PREFIX-k8.png, ... (PREFIX defaults to RESULTS without .json).
"""
import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--out-prefix")
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_handoff.py: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    with open(a.results) as f:
        doc = json.load(f)
    prefix = a.out_prefix or (a.results[:-5] if a.results.endswith(".json") else a.results)
    rows = [r for r in doc["rows"] if r.get("ok")]
    for k in sorted({r["consumers"] for r in rows}):
        fig, ax = plt.subplots(figsize=(8, 5))
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = sorted((r for r in rows if r["method"] == method and r["consumers"] == k), key=lambda r: r["bytes"])
            if not sel:
                continue
            line, = ax.plot([r["bytes"] for r in sel], [r["lat_cpu_us_p50"] for r in sel], marker="o", label=f"{method} (CPU clock)")
            gpu = [r for r in sel if isinstance(r.get("lat_gpu_us_p50"), (int, float))]
            if gpu:
                ax.plot([r["bytes"] for r in gpu], [r["lat_gpu_us_p50"] for r in gpu], marker=".", linestyle="--",
                        color=line.get_color(), label=f"{method} (GPU clock)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frame size (bytes)")
        ax.set_ylabel("one-way latency p50 (us)")
        ax.set_title(f"handoff to {k} consumer{'s' if k > 1 else ''} on {doc.get('card', '?')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        out = f"{prefix}-k{k}.png"
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

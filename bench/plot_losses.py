#!/usr/bin/env python3
"""Loss curves of a student's CSV report (the student node's `report` param): total loss and the
loss of each teacher against the step, one PNG.

Usage: plot_losses.py REPORT.csv [--out FILE.png] [--title TEXT]   (needs matplotlib)
"""
import argparse
import csv
import math
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--out")
    ap.add_argument("--title", default="student losses")
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_losses.py: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    with open(a.report) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"plot_losses.py: {a.report} has no rows", file=sys.stderr)
        return 2
    cols = ["loss"] + [c for c in rows[0] if c.startswith("loss_")]
    fig, ax = plt.subplots(figsize=(9, 5))
    for c in cols:
        pts = [(int(r["step"]), float(r[c])) for r in rows if r.get(c) not in (None, "") and not math.isnan(float(r[c]))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=c.replace("loss_", "") if c != "loss" else "total",
                    linewidth=1.5 if c == "loss" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(a.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out = a.out or (a.report[:-4] if a.report.endswith(".csv") else a.report) + ".png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

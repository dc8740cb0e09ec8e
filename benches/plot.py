"""Draws the benchmark results (JSON written by the bench scripts' --json) as PNG bar charts:
median start or exec time per tool, with the ratio to the run's peer (crun, or bwrap for the
sandbox cycles) on each bar.

    python benches/plot.py benches/results/start.json docs/img/start.png "Start to exit"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(results: Path, out: Path, title: str) -> None:
    rows = json.loads(results.read_text())["rows"]
    rows.sort(key=lambda r: r["median_ms"])
    names = [r["tool"] for r in rows]
    medians = [r["median_ms"] for r in rows]
    colors = ["#d9534f" if n.startswith("pyrt") else "#8c9bab" for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.2), dpi=120)
    bars = ax.barh(names, medians, color=colors)
    peer = next(k for k in rows[0] if k.startswith("ratio_to_"))
    for bar, r in zip(bars, rows):
        label = f"  {r['median_ms']:.1f} ms ({r[peer]:.2f}x {peer[len('ratio_to_') :]})"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center")
    ax.invert_yaxis()
    ax.set_xlabel("median, milliseconds (lower is better)")
    ax.set_title(title)
    ax.set_xlim(0, max(medians) * 1.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])

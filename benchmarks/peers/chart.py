"""Bar chart of overhead per route per agent, for docs/PERFORMANCE.md (run by run.py in its matplotlib venv).

    python chart.py DATA.json OUT.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(data_path: str, out_path: str) -> None:
    with open(data_path) as f:
        data = json.load(f)
    routes, agents, values = data["routes"], data["agents"], data["overhead_us"]
    colors = ["#2a9d4b", "#7b4fbf", "#e07b24"]
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    width = 0.8 / len(agents)
    for k, (agent, row) in enumerate(zip(agents, values)):
        xs = [i + (k - (len(agents) - 1) / 2) * width for i in range(len(routes))]
        shown = [max(v, 0.05) for v in row]  # log axis: an overhead within noise (<= 0) is drawn at the bottom
        bars = ax.bar(xs, shown, width, label=agent, color=colors[k % len(colors)])
        for bar, v in zip(bars, row):
            ax.annotate("%.1f" % v, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xticks(range(len(routes)))
    ax.set_xticklabels(routes)
    ax.set_ylabel("added time per request (microseconds, log scale)")
    ax.set_title(data["title"], fontsize=11)
    ax.legend(loc="upper left")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

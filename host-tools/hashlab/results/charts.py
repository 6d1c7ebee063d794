"""The report's charts, drawn with matplotlib as SVG text (inlined in report.html, written
next to report.md).

Deterministic output for the same data (no dates, a fixed hash salt, text kept as text),
so that a report regenerated from ``report.json`` is the same file.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: the demo runs headless, over ssh and in CI

import matplotlib.pyplot as plt  # noqa: E402

EXPECTED = "#9aa5b1"
OBSERVED = "#2f6fb0"
WRONG = "#c0392b"

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "hashlab",
                     "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inlined in HTML


def queues(queues: dict[str, dict[str, int]], title: str) -> str:
    """Per receive queue, frames the spec put there (grey) and frames the guest saw
    there (blue; red where the two differ)."""
    qs = sorted(queues, key=int)
    exp = [queues[q].get("expected", 0) for q in qs]
    obs = [queues[q].get("observed", 0) for q in qs]
    fig, ax = plt.subplots(figsize=(3.6, 2.2))
    x = range(len(qs))
    ax.bar([i - 0.2 for i in x], exp, 0.4, color=EXPECTED, label="expected (spec)")
    ax.bar([i + 0.2 for i in x], obs, 0.4, label="observed",
           color=[OBSERVED if o == e else WRONG for o, e in zip(obs, exp)])
    for i, (e, o) in enumerate(zip(exp, obs)):
        ax.annotate(str(e), (i - 0.2, e), ha="center", va="bottom", fontsize=7)
        ax.annotate(str(o), (i + 0.2, o), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x), [f"q{q}" for q in qs])
    ax.set_ylabel("frames")
    ax.set_title(title, fontsize=9)
    if any(o != e for o, e in zip(obs, exp)):
        ax.bar([0], [0], color=WRONG, label="observed, differs")
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.15),
              ncol=3)
    return _svg(fig)


def cost_bars(groups: list[str], series: list[dict], title: str, unit: str) -> str:
    """Grouped horizontal bars with error bars: GROUPS along the axis (packet classes,
    datapaths), one bar per series ``{"name", "values": [v|None], "low": [..],
    "high": [..]}`` (value = the bar, low/high = the spread's ends)."""
    n = max(len(series), 1)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(6.4, 0.45 + 0.32 * len(groups) * n))
    for j, s in enumerate(series):
        ys, vals, lo, hi = [], [], [], []
        for i, v in enumerate(s["values"]):
            if v is None:
                continue
            ys.append(i + (j - (n - 1) / 2) * height)
            vals.append(v)
            lo.append(max(v - s["low"][i], 0))
            hi.append(max(s["high"][i] - v, 0))
        bars = ax.barh(ys, vals, height * 0.9, xerr=[lo, hi], capsize=2,
                       error_kw={"elinewidth": 0.8}, label=s["name"])
        ax.bar_label(bars, fmt="%.3g", padding=3, fontsize=7)
    ax.set_yticks(range(len(groups)), groups)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return _svg(fig)

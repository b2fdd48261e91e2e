"""Benchmark tables and charts: one row per (configuration, batch, steps), images/s as the blog shows.

Rows are dicts with at least ``config, batch, steps, images_per_s``; ``per_image_ms`` and spreads are
shown when present. The chart groups bars by (batch, steps) like the blog's charts and labels each
bar with its gain over the first configuration (the baseline).
"""

from __future__ import annotations

import json
from pathlib import Path


def _groups(rows):
    order = []
    for r in rows:
        key = (r["batch"], r["steps"])
        if key not in order:
            order.append(key)
    return order


def markdown_table(rows: list[dict], baseline: str | None = None) -> str:
    configs = list(dict.fromkeys(r["config"] for r in rows))
    baseline = baseline or configs[0]
    by = {(r["config"], r["batch"], r["steps"]): r for r in rows}
    heads = [f"{c} (baseline)" if c == baseline else c for c in configs]
    lines = ["| (batch, steps) | " + " | ".join(heads) + " |", "|---|" + "---|" * len(configs)]
    for b, s in _groups(rows):
        base = by.get((baseline, b, s))
        cells = []
        for c in configs:
            r = by.get((c, b, s))
            if r is None or r.get("images_per_s") is None:
                cells.append(r.get("error", "–") if r else "–")
                continue
            cell = f"{r['images_per_s']:.3g} img/s"
            if r.get("spread_images_per_s"):
                lo, hi = r["spread_images_per_s"]
                cell += f" ({lo:.3g}–{hi:.3g})"
            if base and base.get("images_per_s") and c != baseline:
                cell += f", {r['images_per_s'] / base['images_per_s']:.2f}×"
            cells.append(cell)
        lines.append(f"| ({b},{s}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: str | Path, title: str, baseline: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw_bar_chart(rows, title, baseline)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def draw_bar_chart(rows: list[dict], title: str, baseline: str | None = None):
    """The chart's figure. The legend sits below the axes, outside them, so it never covers a bar or the
    gain written over the tallest one (inside the axes it did, wherever matplotlib found the "best" place);
    the axes leave room above the tallest bar for its label."""
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    baseline = baseline or configs[0]
    groups = _groups(rows)
    by = {(r["config"], r["batch"], r["steps"]): r for r in rows}
    width = 0.8 / len(configs)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(groups), 4.6))
    tallest = 0.0
    for i, c in enumerate(configs):
        xs, ys = [], []
        for g, (b, s) in enumerate(groups):
            r = by.get((c, b, s))
            if r and r.get("images_per_s"):
                xs.append(g + (i - (len(configs) - 1) / 2) * width)
                ys.append(r["images_per_s"])
        ax.bar(xs, ys, width, label=c)
        tallest = max([tallest, *ys])
        if c != baseline:
            for x, y, (b, s) in zip(xs, ys, [k for k in groups if by.get((c, *k), {}).get("images_per_s")]):
                base = by.get((baseline, b, s), {}).get("images_per_s")
                if base:
                    ax.annotate(f"{(y / base - 1) * 100:+.0f}%", (x, y), ha="center", va="bottom", fontsize=7)
    if tallest:
        ax.set_ylim(0, tallest * 1.12)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"({b},{s})" for b, s in groups])
    ax.set_xlabel("(batch, steps)")
    ax.set_ylabel("images/s")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(configs), 3),
              frameon=False)
    fig.tight_layout()
    return fig


def write_report(rows: list[dict], out_dir: str | Path, name: str, title: str, meta: dict,
                 baseline: str | None = None) -> dict:
    """Write ``name``.json, ``name``.md and ``name``.png into ``out_dir``; returns their paths. Gains are
    over ``baseline`` (default: the first configuration), which the table's heading names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    baseline = baseline or rows[0]["config"]
    table = markdown_table(rows, baseline)
    (out / f"{name}.md").write_text(f"# {title}\n\nGains (×) over **{baseline}**.\n\n{table}\n")
    chart = bar_chart(rows, out / f"{name}.png", f"{title}\n(gains over {baseline})", baseline)
    return {"json": str(out / f"{name}.json"), "markdown": str(out / f"{name}.md"), "chart": str(chart),
            "table": table}

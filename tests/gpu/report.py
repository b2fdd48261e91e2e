"""Turn a GPU check's results.jsonl into report.md: one section per step, its figures as a table.

    python tests/gpu/report.py OUT_DIR
"""

import json
import sys
from pathlib import Path


def _cell(value) -> str:
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)


def write_report(out: Path, title_extra: str = "", summary: dict | None = None) -> Path:
    """``summary`` (run.py's last line) goes first, and chart.png is linked when it is there."""
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    md = ["# ORT Turbo GPU check" + (f" ({title_extra})" if title_extra else ""), ""]
    if summary:
        md += ["```json", json.dumps(summary, indent=1), "```", ""]
    if (out / "chart.png").exists():
        md += ["![images/s](chart.png)", ""]
    md += ["| step | name | status | seconds |", "|---|---|---|---|"]
    md += [f"| {r['step']} | {r['name']} | {r['status']} | {r.get('seconds', '')} |" for r in lines]
    for r in lines:
        md += ["", f"## {r['step']}. {r['name']} ({r['status']})", "", "| figure | value |", "|---|---|"]
        md += [f"| {k} | {_cell(v).replace('|', '/')} |" for k, v in r.items()
               if k not in ("step", "name", "status", "seconds", "trace", "rows")]
        if r.get("rows"):  # the (batch, steps) grid: one row per configuration
            keys = list(r["rows"][0])
            md += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            md += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in r["rows"]]
        if "trace" in r:
            md += ["", "```", r["trace"].strip(), "```"]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


if __name__ == "__main__":
    print(write_report(Path(sys.argv[1])))

"""Write benchmark results: one JSON and one markdown table per suite, plus the flat
``summary.json`` (figure name -> number) that every issue extends."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    key: str  # summary.json key, or "" for a detail row only
    label: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Suite:
    name: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, label: str, value: float, unit: str, note: str = "") -> None:
        self.figures.append(Figure(key, label, value, unit, note))
        print(f"  {label}: {_fmt(value)} {unit} {note}".rstrip(), flush=True)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def write_suite(suite: Suite) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "suite": suite.name,
        "machine": machine(),
        "figures": [f.__dict__ for f in suite.figures],
        "details": suite.details,
    }
    (RESULTS / f"{suite.name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    lines = [
        f"# {suite.name}",
        "",
        "| figure | value | unit | note |",
        "| --- | ---: | --- | --- |",
    ]
    for f in suite.figures:
        lines.append(f"| {f.label} | {_fmt(f.value)} | {f.unit} | {f.note} |")
    (RESULTS / f"{suite.name}.md").write_text("\n".join(lines) + "\n")


def update_summary(suites: list[Suite]) -> dict[str, float]:
    path = RESULTS / "summary.json"
    summary: dict[str, float] = {}
    if path.exists():
        summary = json.loads(path.read_text())
    for suite in suites:
        for f in suite.figures:
            if f.key:
                summary[f.key] = round(f.value, 6)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def update_readme(command: str) -> None:
    """Rewrite README's Figures block from every suite's JSON in ``bench/results``, so the
    numbers there are always the last ``make bench`` and never typed by hand."""
    text = README.read_text()
    if START not in text or END not in text:
        return
    lines = [START, "", f"Produced by `{command}`.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "summary.json":
            continue
        data = json.loads(path.read_text())
        m = data["machine"]
        lines += [
            f"**{data['suite']}** ({m['when']}, Python {m['python']}, {m['cpus']} CPUs, "
            f"load {m['load_avg_at_start']:.2f} at start)",
            "",
            "| figure | value | unit | key in summary.json |",
            "| --- | ---: | --- | --- |",
        ]
        for f in data["figures"]:
            note = f" ({f['note']})" if f["note"] else ""
            key = f"`{f['key']}`" if f["key"] else ""
            lines.append(f"| {f['label']}{note} | {_fmt(f['value'])} | {f['unit']} | {key} |")
        lines.append("")
    lines.append(END)
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(head + "\n".join(lines) + tail)

"""What every benchmark script does at the end: write its report as JSON and as a markdown table."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence


def write_report(out: Path, stem: str, report: dict[str, Any], title: str, columns: Sequence[str],
                 table: Sequence[Sequence[Any]]) -> None:  # fmt: skip
    """`<out>/<stem>.json` (the whole report) and `<out>/<stem>.md` (title + table), and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    report.setdefault("cpu", cpu_model())  # numbers from different machines must not be compared blind
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    lines = [title, "", f"CPU: {report['cpu']}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in table]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def cpu_model() -> str:
    """The processor's name as the OS reports it (Linux: /proc/cpuinfo), else the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

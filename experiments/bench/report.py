"""bench.json and bench.md: the rows of every section under a header saying where they ran."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cascade.io import atomic_path


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        magnitude = abs(value)
        return f"{value:.3g}" if magnitude < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Columns in order of first appearance; missing cells stay empty."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out: Path, header: Mapping[str, Any], sections: Mapping[str, Any]) -> None:
    """Write out/bench.json (everything) and out/bench.md (tables and profiles)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"header": dict(header), "sections": dict(sections)}
    with atomic_path(out / "bench.json") as temporary:
        Path(temporary).write_text(json.dumps(payload, indent=1) + "\n")
    machine = header["machine"]
    lines = [
        "# cascade benchmark",
        "",
        f"- command: `{header['command']}`",
        f"- date: {header['date']}, {header['mode']} mode, {header['seconds']:.0f} s in all",
        f"- device: {machine['device']}; torch {machine['torch']}"
        + (f" (CUDA {machine['cuda']})" if machine.get("cuda") else ""),
        f"- machine: {machine['cpu']}, {machine['cpu_count']} cores, "
        f"{machine['torch_threads']} torch threads, {machine['platform']}, "
        f"Python {machine['python']}",
        f"- load average (1 min) at start / end: {header['load_start']:.1f} / "
        f"{header['load_end']:.1f} (other users share this machine)",
    ]
    baselines = machine.get("baselines", {})
    found = [f"{name} {version}" for name, version in baselines.items() if version]
    lines.append(f"- baselines installed: {', '.join(found) if found else 'none'}")
    lines += [f"- {note}" for note in header.get("notes", [])]
    for title, section in sections.items():
        lines += ["", f"## {title}", ""]
        if section.get("note"):
            lines += [section["note"], ""]
        if section.get("rows"):
            lines.append(markdown_table(section["rows"]))
        for name, text in section.get("profiles", {}).items():
            lines += ["", f"{name}:", "", "```", text, "```"]
    with atomic_path(out / "bench.md") as temporary:
        Path(temporary).write_text("\n".join(lines) + "\n")

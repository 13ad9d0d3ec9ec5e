"""PNG figures as Prefect markdown artifacts (validation and curation share this)."""

from __future__ import annotations

import base64
import re
from pathlib import Path


def artifact_key(prefix: str, name: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from a figure name."""
    return re.sub(r"[^a-z0-9]+", "-", f"{prefix}-{name}".lower()).strip("-")


def figure_markdown(name: str, path: str | Path | None, title: str, missing: str = "") -> str:
    """The PNG embedded as a data URI, so the Prefect UI shows it without a file server; without
    a path (or when the file cannot be read), a line saying the figure is missing and why."""
    if path is not None:
        try:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            return f"### {title}\n\n![{name}](data:image/png;base64,{data})\n\nFile: `{path}`\n"
        except OSError as e:
            missing = f"cannot read {path}: {e}"
    return f"### {title}\n\nFigure missing: {missing or 'not drawn'}\n"


def figure_index(prefix: str, figs: dict) -> str:
    """A "Figures" section for a markdown artifact: each figure's own artifact key (which embeds
    the PNG), never a file path the dashboard cannot load."""
    lines = ["## Figures", "", "Each figure is an artifact of this run:", ""]
    for name, f in figs.items():
        key = artifact_key(prefix, name)
        lines.append(f"- `{key}`: {f.title}" if f.path else f"- `{key}`: figure missing: {f.missing}")
    return "\n".join(lines) + "\n"

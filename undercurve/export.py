"""Export a selection as ms-swift's messages JSONL (one conversation per line)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl


def export_swift_jsonl(samples: pl.DataFrame, selection: pl.DataFrame, path: str | Path) -> tuple[Path, int]:
    """Write the selected samples in selection-rank order; returns (path, rows written)."""
    rows = selection.select("id", "rank").join(samples.select("id", "prompt", "response"), on="id", how="left")
    missing = rows.filter(pl.col("prompt").is_null())
    if missing.height:
        raise ValueError(f"{missing.height} selected ids are not in the sample table, e.g. {missing['id'][0]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows.sort("rank").iter_rows(named=True):
            msg = {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]}
            fh.write(json.dumps(msg, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path, rows.height

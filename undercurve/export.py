"""Export a selection in the formats users load: ms-swift messages JSONL, a `datasets` dataset."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import yaml


def read_selected(samples_path: str | Path, selection: pl.DataFrame) -> pl.DataFrame:
    """The sample table's rows of the selection's ids only, in file order: an export holds the
    budget's rows, never the corpus. The id filter is pushed into the Parquet reader, which
    decodes the other columns of matching rows only (a semi-join peaked several times higher)."""
    ids = selection["id"].unique().implode()
    return pl.scan_parquet(samples_path).filter(pl.col("id").is_in(ids)).collect(engine="streaming")


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


# The score summary leaves these numeric columns out: they order or describe, they do not score.
_NOT_SCORES = {"rank"}


def export_hf_dataset(samples: pl.DataFrame, selection: pl.DataFrame, out_dir: str | Path,
                      card: dict) -> tuple[Path, int]:
    """Write a selection as a Hugging Face ``datasets`` dataset with a dataset card.

    ``out_dir`` loads with ``datasets.load_from_disk`` (Arrow); ``data/train.parquet`` holds the
    same rows for ``load_dataset("parquet", ...)``, polars or DuckDB. Rows are in rank order: the selection's columns (``rank``, ``score``, any feature columns), the
    sample's columns and a chat ``messages`` column. ``card``: ``source``, ``strategy``,
    ``budget``, ``config`` (a mapping) and ``counts`` (name -> int); the card also summarises
    every numeric selection column but ``rank``. Returns (out_dir, rows written).
    """
    rows = _selected_rows(samples, selection)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _save_to_disk(rows, tmp)
    (tmp / "data").mkdir()
    rows.write_parquet(tmp / "data" / "train.parquet")
    scores = [c for c, t in selection.schema.items() if t.is_numeric() and c not in _NOT_SCORES]
    (tmp / "README.md").write_text(dataset_card(card, rows, scores), encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)  # a rerun replaces the whole folder, never merges
    os.replace(tmp, out_dir)
    return out_dir, rows.height


def _save_to_disk(rows: pl.DataFrame, out_dir: Path) -> None:
    """What ``datasets.Dataset.from_polars(rows).save_to_disk(out_dir)`` writes, without importing
    ``datasets`` (~2 s per process): one Arrow IPC stream and its ``state.json``. The features
    are left out of ``dataset_info.json``: ``load_from_disk`` then takes them from the Arrow
    schema, which gives the ones ``from_polars`` records (tests/test_export.py compares them)."""
    import pyarrow as pa

    from undercurve.io import file_sha256

    out_dir.mkdir(parents=True)
    data = out_dir / "data-00000-of-00001.arrow"
    table = rows.to_arrow()
    with pa.OSFile(str(data), "wb") as fh, pa.ipc.new_stream(fh, table.schema) as writer:
        writer.write_table(table)
    state = {"_data_files": [{"filename": data.name}], "_fingerprint": file_sha256(data)[:16],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (out_dir / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    (out_dir / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "homepage": "",
                                                           "license": ""}, indent=2), encoding="utf-8")


def _selected_rows(samples: pl.DataFrame, selection: pl.DataFrame) -> pl.DataFrame:
    extra = [c for c in samples.columns if c not in selection.columns]
    rows = selection.join(samples.select("id", *extra), on="id", how="left").sort("rank")
    missing = rows.filter(pl.col("prompt").is_null())
    if missing.height:
        raise ValueError(f"{missing.height} selected ids are not in the sample table, e.g. {missing['id'][0]}")
    messages = pl.concat_list(pl.struct(role=pl.lit("user"), content="prompt"),
                              pl.struct(role=pl.lit("assistant"), content="response"))
    return rows.with_columns(messages.alias("messages"))


def dataset_card(card: dict, rows: pl.DataFrame, score_columns: list[str]) -> str:
    """README.md of an exported selection: YAML header (Hub metadata + what made it), then prose."""
    header = {
        "pretty_name": f"undercurve selection: {card['strategy']}",
        "tags": ["undercurve", "data-selection", f"strategy:{card['strategy']}"],
        "task_categories": ["text-generation"],
        "undercurve": {"source": card["source"], "strategy": card["strategy"], "budget": card["budget"],
                       "rows": rows.height, "counts": card["counts"]},
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# undercurve selection: {card['strategy']}", "",
             f"{rows.height} samples chosen by the `{card['strategy']}` strategy (budget {card['budget']}) "
             f"from `{card['source']}`, in rank order.", "",
             "| count | rows |", "|---|---:|", *(f"| {k} | {v} |" for k, v in card["counts"].items()), "",
             "## Score summary", "", "| column | min | median | max |", "|---|---:|---:|---:|",
             *(_summary_row(rows, c) for c in score_columns), "",
             "## Config", "", "```yaml", yaml.safe_dump(card["config"], sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _summary_row(rows: pl.DataFrame, column: str) -> str:
    values = rows[column].cast(pl.Float64).fill_nan(None).drop_nulls()
    if values.is_empty():
        return f"| {column} | | | |"
    return f"| {column} | {values.min():.4g} | {values.median():.4g} | {values.max():.4g} |"

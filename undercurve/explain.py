"""What a curate run did, in one Markdown page: rows per stage, why rows were set aside (with
an example of each reason), what each strategy chose (its signals' averages) and how much the
strategies' selections overlap. Reads the run's small files lazily; never the corpus text."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import polars as pl

SIGNALS = ("chat_tokens", "eas", "mean_eas", "ppl", "edis", "pass_rate")


def _table(df: pl.DataFrame) -> list[str]:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v).replace("|", "\\|"))

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.iter_rows()]
    return lines


def set_aside_summary(run_dir: Path) -> pl.DataFrame:
    """stage, reason, rows, one example (id and the start of its evidence)."""
    files = sorted(run_dir.glob("*/set_aside.parquet"))
    if not files:
        return pl.DataFrame(schema={"stage": pl.Utf8, "reason": pl.Utf8, "rows": pl.UInt32, "example": pl.Utf8})
    return (pl.scan_parquet(files).group_by("stage", "reason", maintain_order=True)
            .agg(pl.len().alias("rows"),
                 (pl.col("id").fill_null("?").first() + ": " + pl.col("detail").fill_null("").first().str.slice(0, 100))
                 .alias("example"))
            .sort("stage", "rows", descending=[False, True]).collect())


def strategy_summary(run_dir: Path, strategies: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(mean of every signal over each strategy's selection, pairwise Jaccard of the selections)."""
    feats = pl.scan_parquet(run_dir / "features" / "features.parquet")
    cols = [c for c in SIGNALS if c in feats.collect_schema().names()]
    chosen = {s: pl.read_parquet(run_dir / "select" / f"{s}.parquet", columns=["id"])["id"] for s in strategies
              if (run_dir / "select" / f"{s}.parquet").exists()}
    rows = []
    for s, ids in chosen.items():
        means = feats.filter(pl.col("id").is_in(ids.implode())).select(
            pl.len().alias("selected"), *[pl.col(c).cast(pl.Float64).mean().alias(f"mean {c}") for c in cols]).collect()
        rows.append(pl.DataFrame({"strategy": [s]}).hstack(means))
    summary = pl.concat(rows, how="diagonal_relaxed") if rows else pl.DataFrame()
    overlap = pl.DataFrame(
        [{"a": a, "b": b, "jaccard": (len(set(chosen[a]) & set(chosen[b])) / max(1, len(set(chosen[a]) | set(chosen[b]))))}
         for a, b in combinations(chosen, 2)],
        schema={"a": pl.Utf8, "b": pl.Utf8, "jaccard": pl.Float64})
    return summary, overlap


def curation_markdown(summary: dict, strategies: list[str]) -> str:
    run_dir = Path(summary["run_dir"])
    lines = [f"# Curate run {summary['run_id']}", ""]
    acc = summary.get("accounting")
    if acc:
        lines += [f"Rows in {acc['rows_in']} = kept {acc['kept']} + set aside {acc['set_aside']}.", ""]
    lines += ["## Rows per stage", ""] + _table(pl.DataFrame(summary["stages"]).drop("path", strict=False)) + [""]
    aside = set_aside_summary(run_dir)
    lines += ["## Set aside, by reason (one example each)", ""]
    lines += (_table(aside) if aside.height else ["Nothing was set aside."]) + [""]
    means, overlap = strategy_summary(run_dir, strategies)
    if means.height:
        lines += ["## What each strategy chose (means over its selection)", ""] + _table(means) + [""]
    if overlap.height:
        lines += ["## Overlap between strategies (Jaccard of the selected ids)", ""] + _table(overlap) + [""]
    return "\n".join(lines)

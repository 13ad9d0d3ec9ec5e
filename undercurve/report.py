"""Strategy comparison in the shape of the paper's Table 3.

The baseline strategy (random) is shown as absolute Average Pass@1, every other strategy as
the difference to it for the same model, checkpoint rank and benchmark, in percentage
points. Two derived rows are added: benchmark ``average`` (mean over benchmarks) and
checkpoint_rank ``mean`` (mean over the top-k checkpoints), which is the paper's headline.

Spread over repeats: ``pass1_std`` is the strategy's own standard deviation of per-repeat
Pass@1. For the derived rows it is combined as sqrt(sum var)/n, i.e. assuming independent
components (the per-repeat pairing across benchmarks/checkpoints is not kept here).
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

REQUIRED = ["model", "strategy", "checkpoint_rank", "benchmark", "pass1_mean", "pass1_std", "n_repeats"]
STRATEGY_ORDER = ["random", "length", "pass_rate", "eas"]
KEY = ["model", "strategy", "checkpoint_rank", "benchmark"]


def _combine(label_col: str, label: str) -> list[pl.Expr]:
    return [
        pl.lit(label).alias(label_col),
        pl.col("pass1_mean").mean(),
        ((pl.col("pass1_std") ** 2).sum().sqrt() / pl.len()).alias("pass1_std"),
        pl.col("n_repeats").min(),
    ]


def comparison_table(results: pl.DataFrame, baseline: str = "random") -> pl.DataFrame:
    """Long table: model, checkpoint_rank, benchmark, strategy, value, is_delta, pass1, pass1_std, n_repeats.

    ``value`` is absolute Pass@1 (%) for the baseline and the delta to it (points) otherwise;
    ``pass1`` and ``pass1_std`` are always the strategy's own absolute numbers (%).
    Input pass1_mean / pass1_std are fractions in [0, 1].
    """
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise ValueError(f"results lack columns {missing}")
    df = results.select(REQUIRED).with_columns(
        pl.col("checkpoint_rank").cast(pl.Utf8),
        pl.col("pass1_mean").cast(pl.Float64),
        pl.col("pass1_std").cast(pl.Float64).fill_null(0.0),
        pl.col("n_repeats").cast(pl.Int64),
    )
    dup = df.group_by(KEY).len().filter(pl.col("len") > 1)
    if dup.height:
        raise ValueError(f"duplicate results for {dup.select(KEY).row(0)}")
    benchmarks = list(dict.fromkeys(df["benchmark"].to_list()))
    ranks = sorted(set(df["checkpoint_rank"].to_list()), key=lambda r: (len(r), r))

    avg = df.group_by(["model", "strategy", "checkpoint_rank"]).agg(_combine("benchmark", "average"))
    df = pl.concat([df, avg.select(df.columns)])
    mean_rank = df.group_by(["model", "strategy", "benchmark"]).agg(_combine("checkpoint_rank", "mean"))
    df = pl.concat([df, mean_rank.select(df.columns)])

    base = df.filter(pl.col("strategy") == baseline).select(
        "model", "checkpoint_rank", "benchmark", pl.col("pass1_mean").alias("_base"))
    if base.is_empty():
        raise ValueError(f"no rows for the baseline strategy {baseline!r}")
    df = df.join(base, on=["model", "checkpoint_rank", "benchmark"], how="left")
    lacking = df.filter(pl.col("_base").is_null())
    if lacking.height:
        raise ValueError(f"no {baseline} baseline for {lacking.select('model', 'checkpoint_rank', 'benchmark').row(0)}")

    is_base = pl.col("strategy") == baseline
    strategies = list(dict.fromkeys([baseline, *STRATEGY_ORDER, *sorted(df["strategy"].unique().to_list())]))
    return (
        df.with_columns(
            pl.when(is_base).then(pl.col("pass1_mean")).otherwise(pl.col("pass1_mean") - pl.col("_base"))
            .mul(100).alias("value"),
            (~is_base).alias("is_delta"),
            (pl.col("pass1_mean") * 100).alias("pass1"),
            (pl.col("pass1_std") * 100).alias("pass1_std"),
            pl.col("checkpoint_rank").replace_strict({r: i for i, r in enumerate([*ranks, "mean"])},
                                                     return_dtype=pl.Int64).alias("_r"),
            pl.col("benchmark").replace_strict({b: i for i, b in enumerate([*benchmarks, "average"])},
                                               return_dtype=pl.Int64).alias("_b"),
            pl.col("strategy").replace_strict({s: i for i, s in enumerate(strategies)},
                                              return_dtype=pl.Int64).alias("_s"),
        )
        .sort("model", "_r", "_b", "_s")
        .select("model", "checkpoint_rank", "benchmark", "strategy", "value", "is_delta", "pass1", "pass1_std",
                "n_repeats")
    )


def _cell(value: float, std: float, is_delta: bool) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:+.1f} (±{std:.1f})" if is_delta else f"{value:.1f} ±{std:.1f}"


def _md_table(df: pl.DataFrame, row_keys: list[str]) -> str:
    strategies = list(dict.fromkeys(df["strategy"].to_list()))
    rows: dict[tuple, dict[str, str]] = {}
    for r in df.iter_rows(named=True):
        rows.setdefault(tuple(r[k] for k in row_keys), {})[r["strategy"]] = _cell(r["value"], r["pass1_std"], r["is_delta"])
    head = [*row_keys, *[s if i == 0 else f"{s} (Δ)" for i, s in enumerate(strategies)]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, cells in rows.items():
        lines.append("| " + " | ".join([*map(str, key), *(cells.get(s, "") for s in strategies)]) + " |")
    return "\n".join(lines)


def to_markdown(table: pl.DataFrame) -> str:
    """Summary (mean of top-k checkpoints, average over benchmarks) and the full detail."""
    baseline = table.filter(~pl.col("is_delta"))["strategy"][0]
    summary = table.filter((pl.col("checkpoint_rank") == "mean") & (pl.col("benchmark") == "average"))
    return "\n\n".join([
        "# Strategy comparison: Average Pass@1 (%)",
        f"{baseline} is absolute; other strategies are differences to it in points. "
        "± is the standard deviation over evaluation repeats.",
        "## Summary (mean over top checkpoints, average over benchmarks)",
        _md_table(summary, ["model"]),
        "## Per checkpoint rank and benchmark",
        _md_table(table, ["model", "checkpoint_rank", "benchmark"]),
    ]) + "\n"


def write_report(table: pl.DataFrame, out_dir: str | Path, stem: str = "comparison") -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{stem}.md", out / f"{stem}.csv"
    md.write_text(to_markdown(table), encoding="utf-8")
    table.write_csv(csv)
    return md, csv

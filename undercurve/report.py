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

from undercurve.stats import LEVEL, pass1_intervals

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


BASE_MODEL = "base"  # the model before any SFT: the row every strategy should beat


def pass1_summary(rows: list[dict], baseline: str = "random") -> pl.DataFrame:
    """One row per strategy (the base model first): Average Pass@1 (%) over benchmarks and
    checkpoints with its bootstrap interval, the difference to ``baseline`` with its paired
    interval, and whether that difference is distinguishable from noise.

    ``rows``: evaluation rows with ``strategy``, ``benchmark`` and ``table`` (0/1 scores,
    problems x repeats, undercurve.evaluate.BenchmarkScore.table)."""
    tables: dict[str, dict[str, list]] = {}
    for r in rows:
        tables.setdefault(r["strategy"], {}).setdefault(r["benchmark"], []).append(r["table"])
    base = baseline if baseline in tables else None
    own, diffs = pass1_intervals(tables, base)
    order = [BASE_MODEL, *STRATEGY_ORDER]
    out = []
    for m in sorted(tables, key=lambda m: (order.index(m) if m in order else len(order), m)):
        d = diffs.get(m)
        out.append({
            "strategy": m, "pass1": 100 * own[m].value, "pass1_low": 100 * own[m].low, "pass1_high": 100 * own[m].high,
            "delta": None if d is None else 100 * d.value, "delta_low": None if d is None else 100 * d.low,
            "delta_high": None if d is None else 100 * d.high,
            "verdict": "baseline" if m == base else "inside the noise" if d is None or d.contains(0)
            else "better than " + base if d.value > 0 else "worse than " + base,
        })
    return pl.DataFrame(out, schema={"strategy": pl.Utf8, "pass1": pl.Float64, "pass1_low": pl.Float64,
                                     "pass1_high": pl.Float64, "delta": pl.Float64, "delta_low": pl.Float64,
                                     "delta_high": pl.Float64, "verdict": pl.Utf8})


def summary_markdown(summary: pl.DataFrame, baseline: str = "random") -> str:
    pct = f"{LEVEL:.0%}"
    lines = [f"| strategy | Pass@1 % [{pct} CI] | Δ vs {baseline}, points [{pct} CI] | |", "|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        delta = "" if r["delta"] is None else f"{r['delta']:+.1f} [{r['delta_low']:+.1f}, {r['delta_high']:+.1f}]"
        lines.append(f"| {r['strategy']} | {r['pass1']:.1f} [{r['pass1_low']:.1f}, {r['pass1_high']:.1f}] | {delta} "
                     f"| {r['verdict'] if r['strategy'] != baseline else ''} |")
    noisy = summary.filter(pl.col("verdict") == "inside the noise")["strategy"].to_list()
    note = (f"Intervals: bootstrap over problems and repeats ({pct}); a difference is inside the noise when "
            f"its paired interval contains 0.")
    if noisy:
        note += f" Inside the noise here: {', '.join(noisy)}: this evaluation cannot tell them apart from {baseline}."
    return "\n".join(lines) + "\n\n" + note


def detail_markdown(table: pl.DataFrame) -> str:
    """The per checkpoint rank and benchmark table (± = standard deviation over repeats)."""
    baseline = table.filter(~pl.col("is_delta"))["strategy"][0]
    return (f"## Per checkpoint rank and benchmark\n\n{baseline} is absolute; other strategies are differences "
            f"to it in points; ± is the standard deviation over evaluation repeats.\n\n"
            + _md_table(table, ["model", "checkpoint_rank", "benchmark"]))


def write_report(table: pl.DataFrame, out_dir: str | Path, stem: str = "comparison") -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{stem}.md", out / f"{stem}.csv"
    md.write_text(to_markdown(table), encoding="utf-8")
    table.write_csv(csv)
    return md, csv

"""Top-budget selection by each strategy (paper section 4).

Every strategy returns ``id, strategy, rank, score`` sorted by rank. Ties and the random
strategy use a seeded hash of the id, so the same inputs and seed give the same bytes
whatever the input row order.
"""

from __future__ import annotations

import hashlib

import polars as pl

STRATEGIES = ("random", "length", "pass_rate", "eas")


def _tiebreak(ids: list[str], seed: int) -> list[int]:
    return [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") for i in ids]


def select(df: pl.DataFrame, strategy: str, budget: int, seed: int = 0) -> pl.DataFrame:
    """``df`` needs ``id`` and the strategy's column: n_tokens, pass_rate or eas."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    df = df.with_columns(pl.Series("_tie", _tiebreak(df["id"].to_list(), seed), dtype=pl.UInt64))
    if strategy == "random":
        # score = the seeded uniform draw in [0, 1) that orders the sample
        ranked = df.with_columns((pl.col("_tie").cast(pl.Float64) / 2.0**64).alias("score")).sort("_tie")
    elif strategy == "length":  # longest total token length first
        ranked = df.with_columns(pl.col("n_tokens").cast(pl.Float64).alias("score")).sort(
            ["score", "_tie"], descending=[True, False]
        )
    elif strategy == "pass_rate":  # drop always-solved and never-solved; hardest solvable first
        ranked = (
            df.filter(pl.col("pass_rate").is_not_null() & (pl.col("pass_rate") > 0) & (pl.col("pass_rate") < 1))
            .with_columns(pl.col("pass_rate").cast(pl.Float64).alias("score"))
            .sort(["score", "_tie"])
        )
    else:  # eas: most uncertain reasoning first
        ranked = (
            df.filter(pl.col("eas").is_not_null() & pl.col("eas").is_not_nan())
            .with_columns(pl.col("eas").cast(pl.Float64).alias("score"))
            .sort(["score", "_tie"], descending=[True, False])
        )
    return (
        ranked.head(budget)
        .with_row_index("rank", offset=1)
        .select(pl.col("id"), pl.lit(strategy).alias("strategy"), pl.col("rank").cast(pl.Int64), "score")
    )

"""eas: the highest Entropy Area Score first (most uncertain reasoning)."""

import polars as pl

from undercurve.strategies import Strategy, finite


class EAS(Strategy):
    name = "eas"
    needs = ("eas",)

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.filter(finite("eas")).with_columns(pl.col("eas").alias("score"))

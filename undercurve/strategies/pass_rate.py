"""pass_rate: drop always-solved and never-solved samples; the lowest pass rate first."""

import polars as pl

from undercurve.strategies import Strategy, finite


class PassRate(Strategy):
    name = "pass_rate"
    needs = ("pass_rate",)
    higher_first = False

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.filter(finite("pass_rate") & (pl.col("pass_rate") > 0) & (pl.col("pass_rate") < 1)).with_columns(
            pl.col("pass_rate").alias("score"))

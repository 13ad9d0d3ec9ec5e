"""random: uniform, seeded (the paper's baseline)."""

import polars as pl

from undercurve.strategies import TIE, Strategy


class Random(Strategy):
    name = "random"
    higher_first = False

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        # score = the seeded uniform draw in [0, 1) that orders the sample
        return df.with_columns((pl.col(TIE).cast(pl.Float64) / 2.0**64).alias("score"))

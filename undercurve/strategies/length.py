"""length: longest total token length (prompt + response, chat template) first."""

import polars as pl

from undercurve.strategies import Strategy


class Length(Strategy):
    name = "length"

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(pl.col("chat_tokens").cast(pl.Float64).alias("score"))

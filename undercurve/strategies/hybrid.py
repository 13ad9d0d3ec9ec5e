"""eas_in_band: the highest EAS among samples whose pass rate lies strictly inside a band.

Combines the two signals: the pass-rate band removes what the model never or always solves,
EAS then orders what is left by the model's own uncertainty.
"""

import polars as pl

from undercurve.strategies import Strategy, finite


class EASInPassRateBand(Strategy):
    name = "eas_in_band"
    needs = ("eas", "pass_rate")

    def __init__(self, low: float = 0.0, high: float = 1.0):
        if not 0.0 <= low < high <= 1.0:
            raise ValueError("need 0 <= low < high <= 1")
        self.low, self.high = low, high

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        band = finite("pass_rate") & (pl.col("pass_rate") > self.low) & (pl.col("pass_rate") < self.high)
        return df.filter(band & finite("eas")).with_columns(pl.col("eas").alias("score"))

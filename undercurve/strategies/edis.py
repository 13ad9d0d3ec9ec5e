"""edis: rank by EDIS of the plain entropy trajectory (SPEC section 2).

``order="high"`` (default) picks the least stable reasoning first, as EAS picks the most
uncertain; ``order="low"`` the most stable. EDIS from top-K truncated entropies (vLLM top-K
mode) is a different quantity from exact EDIS: a ranking never mixes the two.
"""

import polars as pl

from undercurve.strategies import Strategy, finite


class EDIS(Strategy):
    name = "edis"
    needs = ("edis", "edis_exact")

    def __init__(self, order: str = "high"):
        if order not in ("high", "low"):
            raise ValueError("order must be 'high' or 'low'")
        self.higher_first = order == "high"

    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        kinds = set(df["edis_exact"].drop_nulls().to_list())
        if len(kinds) > 1:
            raise ValueError("edis: exact and top-K-truncated EDIS values cannot be ranked together")
        return df.filter(finite("edis")).with_columns(pl.col("edis").alias("score"))

"""Selection strategies as plugins (paper section 4, plus EDIS and a hybrid).

A strategy is a small class: the feature columns it needs, and ``score(df)`` returning the
eligible rows with a ``score`` column. ``select`` does the rest the same way for all:
order by score (ties by a seeded hash of the id, so the bytes do not depend on row order),
keep the top ``budget``, number the ranks.

Adding a built-in strategy = one module in this package defining a ``Strategy`` subclass
with a ``name``; a custom one is named in the config by import path, ``"pkg.module:Class"``.
Options from ``selection.options.<name>`` are passed to the constructor.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from abc import ABC, abstractmethod
from typing import ClassVar

import polars as pl

# The columns each scoring stage provides to the features table.
SCORE_COLUMNS = ("eas", "mean_eas", "ppl", "edis", "edis_exact")
PASS_RATE_COLUMNS = ("pass_rate",)
TIE = "_tie"  # seeded uniform hash of the id, in every frame a strategy sees


class Strategy(ABC):
    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # feature columns (chat_tokens is always there)
    higher_first: ClassVar[bool] = True

    @abstractmethod
    def score(self, df: pl.DataFrame) -> pl.DataFrame:
        """The eligible rows of ``df``, with a Float64 ``score`` column."""

    def stages(self) -> set[str]:
        """Which model stages this strategy needs: ``score`` and/or ``pass_rate``."""
        return ({"score"} if set(self.needs) & set(SCORE_COLUMNS) else set()) | \
               ({"pass_rate"} if set(self.needs) & set(PASS_RATE_COLUMNS) else set())


def builtin() -> dict[str, type[Strategy]]:
    """Every Strategy subclass defined in a module of this package, by name."""
    found: dict[str, type[Strategy]] = {}
    for mod in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return found


def resolve(spec: str) -> type[Strategy]:
    """A built-in name, or ``"module.path:Class"``; ValueError with the choices otherwise."""
    known = builtin()
    if spec in known:
        return known[spec]
    if ":" not in spec:
        raise ValueError(f"unknown strategy {spec!r}; built-in: {', '.join(sorted(known))}, "
                         "or a custom one as 'package.module:Class'")
    mod_name, _, cls_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"strategy {spec!r} cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"strategy {spec!r} is not a undercurve.strategies.Strategy subclass")
    return cls


def make(spec: str, options: dict | None = None) -> Strategy:
    try:
        return resolve(spec)(**(options or {}))
    except TypeError as e:
        raise ValueError(f"strategy {spec!r}: bad options {options}: {e}") from None


def tiebreak(ids: list[str], seed: int) -> list[int]:
    return [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") for i in ids]


def select(df: pl.DataFrame, strategy: Strategy | str, budget: int, seed: int = 0) -> pl.DataFrame:
    """Top ``budget`` rows of ``df`` by ``strategy`` -> ``id, strategy, rank, score``."""
    if isinstance(strategy, str):
        strategy = make(strategy)
    missing = [c for c in strategy.needs if c not in df.columns]
    if missing:
        raise ValueError(f"strategy {strategy.name!r} needs feature columns {missing}")
    df = df.with_columns(pl.Series(TIE, tiebreak(df["id"].to_list(), seed), dtype=pl.UInt64))
    ranked = strategy.score(df).with_columns(pl.col("score").cast(pl.Float64)).sort(
        ["score", TIE], descending=[strategy.higher_first, False])
    return (
        ranked.head(budget)
        .with_row_index("rank", offset=1)
        .select(pl.col("id"), pl.lit(strategy.name).alias("strategy"), pl.col("rank").cast(pl.Int64), "score")
    )


def finite(col: str) -> pl.Expr:
    return pl.col(col).is_not_null() & pl.col(col).is_not_nan()

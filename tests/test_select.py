import json

import polars as pl
import pytest

from undercurve.export import export_swift_jsonl
from undercurve.strategies import select


@pytest.fixture
def feats():
    return pl.DataFrame({
        "id": [f"s{i}" for i in range(8)],
        "chat_tokens": [10, 50, 30, 50, 20, 70, 40, 60],
        "pass_rate": [0.0, 0.25, 0.5, 1.0, 0.25, 0.75, None, 0.5],
        "eas": [3.0, 9.0, 1.0, 7.0, float("nan"), 5.0, 8.0, None],
    })


def test_length_longest_first(feats):
    out = select(feats, "length", 3)
    assert out["id"].to_list() == ["s5", "s7", out["id"][2]]
    assert set(out["id"][2:]) <= {"s1", "s3"}  # tie at 50 tokens, broken by the seeded hash
    assert out["rank"].to_list() == [1, 2, 3]


def test_pass_rate_drops_zero_and_one_and_keeps_lowest(feats):
    out = select(feats, "pass_rate", 10)
    assert set(out["id"]) == {"s1", "s4", "s2", "s7", "s5"}
    assert out["score"].to_list() == sorted(out["score"].to_list())
    assert set(out["id"][:2]) == {"s1", "s4"}


def test_eas_highest_first_skips_missing(feats):
    out = select(feats, "eas", 3)
    assert out["id"].to_list() == ["s1", "s6", "s3"]
    assert select(feats, "eas", 100).height == 6  # NaN and null are not eligible


def test_random_is_seeded_and_order_independent(feats):
    a = select(feats, "random", 4, seed=1)
    b = select(feats.sample(fraction=1.0, shuffle=True, seed=3), "random", 4, seed=1)
    c = select(feats, "random", 4, seed=2)
    assert a.equals(b)
    assert not a["id"].equals(c["id"])


def test_byte_identical_outputs(tmp_path, feats):
    for name, df in (("a", feats), ("b", feats.reverse())):
        select(df, "pass_rate", 4, seed=0).write_parquet(tmp_path / f"{name}.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_unknown_strategy(feats):
    with pytest.raises(ValueError, match="unknown strategy"):
        select(feats, "vibes", 3)


def test_export_swift_jsonl_in_rank_order(tmp_path, feats):
    samples = pl.DataFrame({"id": feats["id"], "prompt": [f"q{i}" for i in range(8)],
                            "response": [f"r{i} \\boxed{{1}}" for i in range(8)]})
    sel = select(feats, "length", 2)
    path, n = export_swift_jsonl(samples, sel, tmp_path / "x.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == 2 and rows[0]["messages"][0] == {"role": "user", "content": "q5"}
    assert rows[0]["messages"][1]["role"] == "assistant"
    with pytest.raises(ValueError, match="not in the sample table"):
        export_swift_jsonl(samples.head(2), sel, tmp_path / "y.jsonl")


# ------------------------------------------------------------------ strategies as plugins
def test_builtin_strategies_are_discovered():
    from undercurve.strategies import builtin

    assert {"random", "length", "pass_rate", "eas", "edis", "eas_in_band"} <= set(builtin())


def test_edis_never_ranks_exact_and_truncated_together(feats):
    from undercurve.strategies import make

    df = feats.with_columns(pl.Series("edis", [1.0, 3.0, 2.0, 0.5, 4.0, None, 2.5, 0.1]),
                            pl.Series("edis_exact", [True] * 8))
    high = select(df, "edis", 3)
    assert high["id"].to_list() == ["s4", "s1", "s6"]  # highest EDIS first; null not eligible
    low = select(df, make("edis", {"order": "low"}), 2)
    assert low["id"].to_list() == ["s7", "s3"]
    mixed = df.with_columns(pl.Series("edis_exact", [True] * 7 + [False]))
    with pytest.raises(ValueError, match="cannot be ranked together"):
        select(mixed, "edis", 3)


def test_eas_within_pass_rate_band(feats):
    from undercurve.strategies import make

    out = select(feats, "eas_in_band", 10)
    # pass rate strictly in (0, 1) and a finite EAS: s1 (9.0), s5 (5.0), s2 (1.0); s4 NaN, s7 null
    assert out["id"].to_list() == ["s1", "s5", "s2"]
    narrow = select(feats, make("eas_in_band", {"low": 0.3, "high": 0.8}), 10)
    assert narrow["id"].to_list() == ["s5", "s2"]


def test_a_strategy_from_outside_the_package(tmp_path, monkeypatch, feats):
    """Adding a strategy: one file, named by import path in the config."""
    (tmp_path / "my_strategies.py").write_text(
        "import polars as pl\n"
        "from undercurve.strategies import Strategy\n\n"
        "class Shortest(Strategy):\n"
        "    name = 'shortest'\n"
        "    higher_first = False\n"
        "    def score(self, df):\n"
        "        return df.with_columns(pl.col('chat_tokens').alias('score'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from undercurve.config import load_settings

    s = load_settings(None, {"selection.strategies": ["eas", "my_strategies:Shortest"]})
    strategies = s.selection.make()
    assert [x.name for x in strategies] == ["eas", "shortest"]
    out = select(feats, strategies[1], 2)
    assert out["id"].to_list() == ["s0", "s4"] and out["strategy"].to_list() == ["shortest"] * 2


@pytest.mark.parametrize("strategies,match", [
    (["eas", "vibes"], "unknown strategy 'vibes'"),
    (["eas", "eas"], "more than once"),
    ([], "at least 1"),
    (["nowhere.module:Cls"], "cannot be imported"),
])
def test_bad_strategy_lists_fail_at_load(strategies, match):
    from undercurve.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=match):
        load_settings(None, {"selection.strategies": strategies})


def test_bad_strategy_options_fail_at_load():
    from undercurve.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="low < high"):
        load_settings(None, {"selection.strategies": ["eas_in_band"], "selection.options": {"eas_in_band": {"low": 0.9, "high": 0.1}}})

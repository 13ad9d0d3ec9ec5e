import json

import polars as pl
import pytest

from undercurve.export import export_swift_jsonl
from undercurve.select import select


@pytest.fixture
def feats():
    return pl.DataFrame({
        "id": [f"s{i}" for i in range(8)],
        "n_tokens": [10, 50, 30, 50, 20, 70, 40, 60],
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

"""Scores on disk: per-sample summaries apart from the per-token entropies, which are stored
once, as float32; features and selection read the summaries only.

Float32 bound: storing a float64 entropy h as float32 rounds to nearest, so the stored value
is within u * |h| of h, u = eps32 / 2 = 2**-24 (the unit roundoff). Summaries are computed in
float64 before storage, so they carry no float32 rounding at all.
"""

import json

import numpy as np
import polars as pl
import pytest

from undercurve.config import load_settings
from undercurve.registry import Registry
from undercurve.run import RunContext
from undercurve.scoring.score import (SCORE_SCHEMA, SUMMARY_SCHEMA, TOKEN_SCHEMA, entropy_curve, scan_entropies,
                                      split_scores)
from undercurve.stages import StageResult, features_stage, score_stage

U32 = float(np.finfo(np.float32).eps) / 2  # 2**-24: float64 -> float32 relative rounding
U16 = float(np.finfo(np.float16).eps) / 2  # 2**-11: float32 -> float16 relative rounding
EPS64 = float(np.finfo(np.float64).eps)


def _lists(df: pl.DataFrame) -> list[str]:
    return [c for c, t in df.schema.items() if isinstance(t, pl.List)]


def _stored_error_bound(H: np.ndarray) -> np.ndarray:
    """float64 -> float32 (in memory) -> float16 (on disk): two roundings, each within half an
    ulp; float16 has 11 significand bits down to 2**-14, below that a fixed spacing of 2**-24."""
    return (U32 + U16 * (1 + U32)) * np.abs(H) + 2.0**-25


def test_stored_entropies_within_float16_rounding(tmp_path):
    rng = np.random.default_rng(0)
    T, K = 5000, 3
    # entropies across the whole range a 151,665-token vocabulary allows (0 .. log2 V bits),
    # tiny ones included (float16's subnormal range)
    top = np.log2(151_665)
    H = np.concatenate([rng.uniform(0, top, T - 4), [0.0, 1e-9, 3e-5, top]])
    suffix = rng.uniform(0, top, (T - 1, K))
    suffix[:3, -1] = [0.0, 2e-6, top]
    curve = suffix[:, -1]
    row = {"id": "a", "T": T, "eas": float(curve.sum()), "entropy": curve.tolist(), "plain_entropy": H.tolist(),
           "suffix_entropy": suffix.tolist()}
    _, tokens = split_scores(pl.DataFrame([row], schema=SCORE_SCHEMA))
    tokens.write_parquet(tmp_path / "e.parquet", compression="zstd")
    back = pl.read_parquet(tmp_path / "e.parquet")
    assert back.schema == pl.Schema(TOKEN_SCHEMA) and "entropy" not in back.columns
    stored = np.asarray(back["plain_entropy"][0].to_list(), dtype=np.float64)
    err = np.abs(stored - H)
    assert np.all(err <= _stored_error_bound(H))
    assert err.max() > U32 * top  # really narrowed below float32: the bound is tested, not trivially met
    # probe mode keeps the curve EAS integrates (the last suffix position), not the others
    got = back.lazy().select(entropy_curve()).collect()["entropy"][0].to_numpy().astype(np.float64)
    assert got.shape == curve.shape and np.all(np.abs(got - curve) <= _stored_error_bound(curve))
    # EAS from the stored curve vs the float64 EAS: all terms >= 0, so the sum's relative error is
    # at most the terms' (U32 + U16) plus the subnormal floor per term and float64 summation
    assert abs(got.sum() - row["eas"]) <= row["eas"] * (U32 + U16 * (1 + U32) + T * EPS64) + T * 2.0**-25


@pytest.fixture
def scored_run(tmp_path, tiny_model):
    """Three demo samples scored by the real torch stage in plain mode, two shards."""
    from undercurve.demo import write_demo_inputs
    from undercurve.ingest import ingest

    corpus, _ = write_demo_inputs(tmp_path / "inputs", size=4, seed=3)
    samples, _ = ingest(str(corpus))
    samples = samples.filter(pl.col("id").str.starts_with("demo")).head(3).with_columns(chat_tokens=pl.lit(10, pl.Int64))
    path = tmp_path / "samples.parquet"
    samples.write_parquet(path)
    prev = StageResult("length_cap", str(path), "parent", samples.height, samples.height)
    settings = load_settings("configs/demo.yaml", {"workdir": str(tmp_path / "w"), "scoring.engine": "torch",
                                                   "scoring.mode": "plain", "scoring.shard_size": 2})
    reg = Registry(settings.registry_path, create=True)
    ctx = RunContext(settings, reg.start_run("curate", "t", {}, "h"), str(settings.registry_path))
    return ctx, prev, str(tiny_model)


def test_scores_split_into_summary_and_float16_entropies(scored_run, monkeypatch):
    ctx, prev, model = scored_run
    score_dir = ctx.run_dir / "score"
    res = score_stage(ctx, prev, model)
    scores = pl.read_parquet(res.path)
    assert scores.schema == pl.Schema(SUMMARY_SCHEMA) and not _lists(scores)
    parts = [score_dir / p for p in json.loads((score_dir / "entropies.json").read_text())["parts"]]
    assert len(parts) == 2  # two shards, each one cache part
    for p in parts:  # the per-token table: content key + float16 lists, no duplicate curve in plain mode
        assert pl.read_parquet_schema(p) == pl.Schema({"key": pl.Utf8, **{c: t for c, t in TOKEN_SCHEMA.items()
                                                                           if c != "id"}})
    tokens = scan_entropies(score_dir).collect().join(scores, on="id")
    assert tokens.height == scores.height == 3
    assert tokens["probe_entropy"].null_count() == 3  # plain mode: the curve is plain_entropy[:T-1]
    for r in tokens.iter_rows(named=True):
        assert len(r["plain_entropy"]) == r["T"] and len(r["entropy"]) == r["T"] - 1
        curve = np.asarray(r["entropy"], dtype=np.float64)
        assert abs(curve.sum() - r["eas"]) <= r["eas"] * (U32 + U16 * (1 + U32) + r["T"] * EPS64) + r["T"] * 2.0**-25

    # features read lazily: a full read of any input would fail here
    def no_full_reads(*a, **k):
        raise AssertionError("features_stage read a whole file")

    monkeypatch.setattr(pl, "read_parquet", no_full_reads)
    samples = StageResult("length_cap", prev.path, res.artifact_id, 3, 3)
    feats_res = features_stage(ctx, samples, res, None)
    monkeypatch.undo()
    feats = pl.read_parquet(feats_res.path)
    assert not _lists(feats) and feats.height == 3
    # summaries are not rounded on the way: features carry the scores' float64 values exactly
    assert feats.join(scores, on="id")["eas"].equals(feats.join(scores, on="id")["eas_right"], check_names=False)


def test_score_merge_streams_its_rows_in_blocks(scored_run, monkeypatch):
    """Merged two rows at a time, with a repeated content (another id, the same key) and a row
    scoring sets aside (no boxed answer): the same rows, in order, as the obvious lookup of
    each row's key in the cache parts, and rows in = kept + set aside."""
    import undercurve.stages.score as score_mod
    from undercurve.cache import KEY

    ctx, prev, model = scored_run
    samples = pl.read_parquet(prev.path)
    samples = pl.concat([samples, samples.head(1).with_columns(id=pl.lit("again")),
                         samples.tail(1).with_columns(id=pl.lit("no-box"), response=pl.lit("no answer at all"))])
    samples.write_parquet(prev.path)
    prev = StageResult("length_cap", prev.path, "parent", samples.height, samples.height)
    monkeypatch.setattr(score_mod, "MERGE_ROWS", 2)
    _whole_reads_of(ctx.run_dir / "score" / "keys.parquet", monkeypatch)
    res = score_stage(ctx, prev, model)
    monkeypatch.undo()
    d = ctx.run_dir / "score"
    held = {}
    for part in (d / p for p in json.loads((d / "entropies.json").read_text())["parts"]):
        main = pl.read_parquet(part.with_name(part.name.replace(".entropies", "")))
        for r in main.iter_rows(named=True):
            held.setdefault(r[KEY], r)
    want_kept, want_aside = [], []
    for r in pl.read_parquet(d / "keys.parquet").iter_rows(named=True):
        h = held[r[KEY]]
        if h[score_mod.ASIDE_FLAG] is None:
            want_kept.append({c: (r if c == "id" else h)[c] for c in SUMMARY_SCHEMA})
        else:
            want_aside.append((r["id"], h[score_mod.ASIDE_FLAG]))
    got = pl.read_parquet(res.path)
    assert got.to_dicts() == want_kept and got.height == samples.height - 1
    assert got.filter(pl.col("id") == "again").drop("id").equals(got.head(1).drop("id"))
    aside = pl.read_parquet(d / "set_aside.parquet")
    assert [(i, r) for i, r in aside.select("id", "reason").iter_rows()] == want_aside and aside["id"].to_list() == ["no-box"]
    assert (res.rows_in, res.rows_out, res.set_aside) == (samples.height, samples.height - 1, 1)
    assert res.extra["tokens"] == got["response_tokens"].sum() > 0  # the cost counts every block's scored rows


def test_a_damaged_entropies_part_is_recomputed(scored_run):
    ctx, prev, model = scored_run
    score_stage(ctx, prev, model)
    score_dir = ctx.run_dir / "score"
    sides = [score_dir / p for p in json.loads((score_dir / "entropies.json").read_text())["parts"]]
    mains = [p.with_name(p.name.replace(".entropies", "")) for p in sides]
    before = [p.stat().st_mtime_ns for p in mains]
    sides[1].write_bytes(sides[1].read_bytes()[:-7])  # truncated
    score_stage(ctx, prev, model)
    after = [p.stat().st_mtime_ns for p in mains]
    assert after[0] == before[0]  # verified, reused
    assert after[1] != before[1]  # its entropies failed their hash: the part was recomputed
    assert scan_entropies(score_dir).collect().height == 3
    assert scan_entropies(score_dir, ids=[pl.read_parquet(score_dir / "scores.parquet")["id"][2]]).collect().height == 1


def _whole_reads_of(path, monkeypatch):
    """``pl.read_parquet`` that fails on ``path``: a stage must stream that file, not load it."""
    real = pl.read_parquet

    def read(source, *a, **k):
        if str(source) == str(path):
            raise AssertionError(f"a stage read all of {path}")
        return real(source, *a, **k)

    monkeypatch.setattr(pl, "read_parquet", read)


def test_chat_token_counts_are_those_of_one_chat_at_a_time(tmp_path, tiny_model):
    """The batched render and count (the Rust backend, no offsets) equal rendering and
    tokenising each chat alone through the tokenizer's own calls, even when the tokenizer file turned truncation and
    padding on (the tokenizer's call turns them off; so must the count)."""
    from transformers import AutoTokenizer

    import undercurve.textlen as textlen
    from undercurve.demo import write_demo_inputs
    from undercurve.ingest import ingest

    corpus, _ = write_demo_inputs(tmp_path / "inputs", size=40, seed=5)
    samples, _ = ingest(str(corpus))
    samples = pl.concat([samples, samples.head(1).with_columns(id=pl.lit("unicode"), prompt=pl.lit("héllo <|x|> ∑ 🙂"),
                                                                 response=pl.lit(""))])
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False) for p, r in samples.select("prompt", "response").iter_rows()]
    assert textlen.chat_texts(tok, samples["prompt"].to_list(), samples["response"].to_list()) == texts
    want = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert min(want) < 64 < max(want)
    tok._tokenizer.enable_truncation(64)
    tok._tokenizer.enable_padding(length=128)
    assert textlen.token_lengths(tok, samples, batch=7) == want


def test_length_cap_streams_its_input_in_batches(tmp_path, tiny_model, tokenised_ids, monkeypatch):
    """Batches of 5 rows, counts looked up 10 rows at a time and written 4 at a time, the input
    never read whole, and the outputs of one pass over the whole table: the same kept rows with
    their token counts, in order; the same set-aside rows. A content repeated in a later block
    is counted once."""
    from transformers import AutoTokenizer

    import undercurve.stages.length_cap as length_cap
    import undercurve.textlen as textlen
    from undercurve.demo import write_demo_inputs
    from undercurve.ingest import ingest

    corpus, _ = write_demo_inputs(tmp_path / "inputs", size=24, seed=3)
    samples, _ = ingest(str(corpus))
    samples = pl.concat([samples, samples.head(6).with_columns(pl.col("id") + "-again")])  # in later blocks
    path = tmp_path / "samples.parquet"
    samples.write_parquet(path)
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    cap = int(np.median(textlen.token_lengths(tok, samples)))
    counted = samples.with_columns(pl.Series("chat_tokens", textlen.token_lengths(tok, samples), dtype=pl.Int64))
    want_kept, want_aside = textlen.over_cap(counted, cap)  # the whole table at once
    assert want_kept.height and want_aside.height
    settings = load_settings("configs/demo.yaml", {"workdir": str(tmp_path / "w"), "max_tokens": cap})
    reg = Registry(settings.registry_path, create=True)
    ctx = RunContext(settings, reg.start_run("curate", "t", {}, "h"), str(settings.registry_path))

    batches, whole = [], textlen.over_cap
    monkeypatch.setattr(textlen, "over_cap", lambda df, m: batches.append(df.height) or whole(df, m))
    tokenised_ids.clear()  # counted above for the reference
    monkeypatch.setattr(length_cap, "BATCH_ROWS", 5)
    monkeypatch.setattr(length_cap, "BLOCK_BATCHES", 2)
    monkeypatch.setattr(length_cap, "PART_ROWS", 4)
    _whole_reads_of(path, monkeypatch)
    res = length_cap.length_cap_stage(ctx, StageResult("decontaminate", str(path), "p", samples.height, samples.height),
                                      str(tiny_model))
    monkeypatch.undo()

    n = samples.height
    assert batches == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    firsts = samples.unique(["prompt", "response"], keep="first", maintain_order=True)["id"]
    assert sorted(tokenised_ids) == sorted(firsts) and len(firsts) < n  # repeats looked up, not counted again
    assert (res.rows_in, res.rows_out, res.set_aside) == (n, want_kept.height, want_aside.height)
    assert pl.read_parquet(res.path).equals(want_kept)
    out = ctx.run_dir / "length_cap"
    assert pl.read_parquet(out / "set_aside.parquet").equals(want_aside)
    assert want_aside["reason"].unique().to_list() == [f"over length cap ({cap} tokens)"]
    assert sorted(p.name for p in out.iterdir()) == ["keys.parquet", "samples.parquet", "set_aside.parquet"]  # no temp file left

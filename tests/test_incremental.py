"""A nightly run scores only what it has not seen: results are keyed by content, not by row
position, id or run name (the real torch score stage, tiny model)."""

from __future__ import annotations

import polars as pl
import pytest

from undercurve.config import load_settings
from undercurve.registry import Registry
from undercurve.run import RunContext
from undercurve.scoring import score as score_mod
from undercurve.scoring.score import scan_entropies
from undercurve.stages import StageResult, score_stage


@pytest.fixture
def corpus(tmp_path):
    from undercurve.demo import write_demo_inputs
    from undercurve.ingest import ingest

    path, _ = write_demo_inputs(tmp_path / "inputs", size=12, seed=5)
    samples, _ = ingest(str(path))
    return samples.filter(pl.col("id").str.starts_with("demo")).head(9).with_columns(chat_tokens=pl.lit(10, pl.Int64))


def _run(tmp_path, name, samples, model, spy, **overrides):
    path = tmp_path / f"{name}.parquet"
    samples.write_parquet(path)
    settings = load_settings("configs/tiny.yaml", {"workdir": str(tmp_path / "w"), "run_name": name,
                                                   "scoring.mode": "plain", "scoring.shard_size": 2, **overrides})
    reg = Registry(settings.registry_path, create=True)
    ctx = RunContext(settings, reg.start_run("curate", name, {}, "h"), str(settings.registry_path))
    spy.clear()
    res = score_stage(ctx, StageResult("length_cap", str(path), "parent", samples.height, samples.height), model)
    return res, pl.read_parquet(res.path), ctx.run_dir / "score"


def test_reordered_corpus_with_new_rows_scores_only_the_new_rows(tmp_path, tiny_model, corpus, monkeypatch):
    scored: list[str] = []
    real = score_mod.score_frame

    def spy(df, *a, **k):
        scored.extend(df["id"].to_list())
        return real(df, *a, **k)

    monkeypatch.setattr(score_mod, "score_frame", spy)
    first, held = corpus.head(6), corpus.tail(3)
    res1, s1, dir1 = _run(tmp_path, "night-1", first, str(tiny_model), scored)
    assert sorted(scored) == sorted(first["id"].to_list()) and res1.extra["rows_computed"] == 6

    # night 2, another run name: one row dropped, the rest shuffled, 3 new rows, one old row
    # edited under its old id, one old row's content again under a new id
    edited = first[1].with_columns(pl.col("response") + " Checked again.")
    copy = first[2].with_columns(pl.lit("copy-of-2").alias("id"))
    night2 = pl.concat([first[3], held, first[5], edited, first[4], copy, first[2]])
    res2, s2, dir2 = _run(tmp_path, "night-2", night2, str(tiny_model), scored)
    new = sorted(held["id"].to_list() + [edited["id"][0]])
    assert sorted(scored) == new  # only the new and the edited content went through the model
    assert res2.extra["rows_computed"] == 4 and res2.extra["rows_reused"] == night2.height - 4
    assert s2.height == night2.height and s2["id"].to_list() == night2["id"].to_list()  # the run's order
    # reused scores are the first night's, exactly; the copy carries its original's score
    common = s2.join(s1, on="id", how="inner", suffix="_1").filter(pl.col("id") != edited["id"][0])
    assert common.height == 4 and (common["eas"] == common["eas_1"]).all() and (common["T"] == common["T_1"]).all()
    eas = dict(zip(s2["id"], s2["eas"]))
    assert eas["copy-of-2"] == eas[first["id"][2]]
    # per-token entropies of both runs are readable, each run its own ids
    assert sorted(scan_entropies(dir2).collect()["id"]) == sorted(night2["id"])
    assert sorted(scan_entropies(dir1).collect()["id"]) == sorted(first["id"])

    # other settings are other results: nothing is reused across a change of mode
    res3, _, _ = _run(tmp_path, "night-3", night2, str(tiny_model), scored, **{"scoring.mode": "probe"})
    assert res3.extra["rows_computed"] == len(scored) == night2.height - 1  # the copy: scored once


def test_cache_off_keeps_results_in_the_run(tmp_path, tiny_model, corpus):
    scored: list[str] = []
    _run(tmp_path, "a", corpus.head(2), str(tiny_model), scored, **{"cache.enabled": False})
    assert (tmp_path / "w" / "a" / "cache" / "score").is_dir()
    assert not (tmp_path / "w" / "cache").exists()


def test_rollouts_are_reused_by_content(tmp_path, tiny_model, corpus, monkeypatch):
    import undercurve.stages.pass_rate as pass_rate
    from undercurve.stages import pass_rate_stage

    monkeypatch.setattr(pass_rate, "MERGE_ROWS", 3)  # the merge looks rows up in blocks: two here

    def run(name, samples):
        path = tmp_path / f"{name}.parquet"
        samples.write_parquet(path)
        settings = load_settings("configs/tiny.yaml", {"workdir": str(tmp_path / "w"), "run_name": name,
                                                       "pass_rate.engine": "hf", "pass_rate.rollouts": 2,
                                                       "pass_rate.max_tokens": 6, "pass_rate.shard_size": 2})
        reg = Registry(settings.registry_path, create=True)
        ctx = RunContext(settings, reg.start_run("curate", name, {}, "h"), str(settings.registry_path))
        res = pass_rate_stage(ctx, StageResult("length_cap", str(path), "parent", samples.height, samples.height),
                              str(tiny_model))
        return res, pl.read_parquet(res.path), pl.read_parquet(res.extra["rollouts"])

    first = corpus.head(4)
    res1, r1, ro1 = run("n1", first)
    assert res1.extra["rows_computed"] == 4 and ro1.height == 4 * 2
    night2 = pl.concat([corpus[5], first[2], first[0], corpus[6]])
    res2, r2, ro2 = run("n2", night2)
    assert res2.extra["rows_computed"] == 2 and res2.extra["rows_reused"] == 2
    assert r2["id"].to_list() == night2["id"].to_list() and ro2.height == 4 * 2
    assert ro2["id"].to_list() == [i for i in night2["id"] for _ in range(2)]  # the run's order, across blocks
    assert res2.extra["compute_seconds"] > 0
    assert res2.extra["tokens"] == ro2["response_tokens"].sum() > 0  # every block's rollouts counted
    # the reused samples carry the first night's rollouts, text for text
    for i in (first["id"][0], first["id"][2]):
        cols = [c for c in ro1.columns if c != "id"]
        a, b = (ro.filter(pl.col("id") == i).select(cols).sort(cols[0]) for ro in (ro1, ro2))
        assert a.equals(b)
    assert r2.join(r1, on="id", how="inner").height == 2


def test_length_cap_counts_only_new_contents(tmp_path, tiny_model, corpus, tokenised_ids, monkeypatch):
    """Token counts are cached by content: a reordered corpus with rows added, dropped and
    edited is tokenised only for its new contents, gives the counts and the cap a fresh count
    gives, and a night with nothing new never loads the tokenizer."""
    import undercurve.stages.length_cap as lc
    import undercurve.textlen as textlen
    from undercurve.cache import prune

    base = corpus.drop("chat_tokens")
    load_tokenizer = lc._tokenizer
    cap = int(pl.Series(textlen.token_lengths(load_tokenizer(str(tiny_model)), base)).median())

    def night(name, samples, workdir="w"):
        path = tmp_path / f"{name}.parquet"
        samples.write_parquet(path)
        settings = load_settings("configs/tiny.yaml", {"workdir": str(tmp_path / workdir), "run_name": name,
                                                       "max_tokens": cap})
        reg = Registry(settings.registry_path, create=True)
        ctx = RunContext(settings, reg.start_run("curate", name, {}, "h"), str(settings.registry_path))
        tokenised_ids.clear()
        res = lc.length_cap_stage(ctx, StageResult("decontaminate", str(path), "p", samples.height, samples.height),
                                  str(tiny_model))
        aside = ctx.run_dir / "length_cap" / "set_aside.parquet"
        return res, pl.read_parquet(res.path), pl.read_parquet(aside) if aside.exists() else None, list(tokenised_ids)

    first = base.head(6)
    _, kept1, _, n1 = night("night-1", first)
    assert sorted(n1) == sorted(first["id"])
    edited = first[1].with_columns(pl.col("response") + " Checked again.")
    night2 = pl.concat([first[3], base.tail(3), first[5], edited, first[0], first[2]])
    res2, kept2, aside2, n2 = night("night-2", night2)
    assert sorted(n2) == sorted(base.tail(3)["id"].to_list() + [edited["id"][0]])  # new and edited only
    assert res2.extra["contents_counted"] == 4
    # the same rows, counts, order and set-aside rows as a count from scratch in a fresh workdir
    res_f, kept_f, aside_f, n_f = night("fresh", night2, workdir="fresh")
    assert sorted(n_f) == sorted(night2["id"])
    assert kept2.equals(kept_f) and (aside2 is None) == (aside_f is None)
    if aside2 is not None:
        assert aside2.equals(aside_f)
    assert 0 < kept2.height < night2.height  # the cap really splits this corpus

    # nothing new: no tokenizer at all
    def no_tokenizer(*a, **k):
        raise AssertionError("the tokenizer was loaded with every count cached")

    monkeypatch.setattr(lc, "_tokenizer", no_tokenizer)
    res3, kept3, _, n3 = night("night-3", night2.reverse())
    assert n3 == [] and res3.extra["contents_counted"] == 0 and kept3.equals(kept2.reverse())
    # a cache emptied (or failing verification) is simply recounted
    prune(tmp_path / "w" / "cache", max_bytes=0)
    monkeypatch.setattr(lc, "_tokenizer", load_tokenizer)
    _, kept4, _, n4 = night("night-4", night2)
    assert sorted(n4) == sorted(night2["id"]) and kept4.equals(kept2)

"""The content-keyed result cache: keys follow content, parts are verified before reuse,
eviction is least-recently-used and never takes what a run holds."""

from __future__ import annotations

import os
import time

import polars as pl
import pytest

from undercurve.cache import KEY, ResultCache, content_keys, describe, model_identity, prune, row_key


def _samples(tmp_path, rows):
    path = tmp_path / "samples.parquet"
    pl.DataFrame(rows, schema={"id": pl.Utf8, "source": pl.Utf8, "prompt": pl.Utf8, "response": pl.Utf8}) \
        .write_parquet(path)
    return path


def test_keys_follow_content_not_id_or_position(tmp_path):
    rows = [{"id": f"r{i}", "source": "s", "prompt": f"p{i}", "response": f"a{i}"} for i in range(50)]
    a = pl.read_parquet(content_keys(_samples(tmp_path, rows), ["prompt", "response"], tmp_path / "a.parquet",
                                     batch_rows=7))
    moved = [{**r, "id": f"x{i}"} for i, r in enumerate(reversed(rows))]
    b = pl.read_parquet(content_keys(_samples(tmp_path, moved), ["prompt", "response"], tmp_path / "b.parquet"))
    assert a.columns == ["id", "source", KEY] and a.height == 50
    assert a[KEY].to_list() == b[KEY].to_list()[::-1]  # same content, same key, whatever the id or order
    assert a[KEY].n_unique() == 50
    # the key is the slow, obvious hash of the fields, field boundaries and nulls included
    assert a[KEY][3] == row_key(["p3", "a3"])
    assert row_key(["ab", "c"]) != row_key(["a", "bc"])
    assert row_key([None, "x"]) != row_key(["", "x"])


def test_part_round_trip_and_verification(tmp_path):
    cache = ResultCache.open(tmp_path / "cache", "score", {"model": "m", "mode": "plain"})
    keys = ["k1", "k2"]
    main = pl.DataFrame({KEY: keys, "eas": [1.0, 2.0]})
    side = pl.DataFrame({KEY: keys, "plain_entropy": [[0.5], [0.25, 0.75]]})
    part = cache.write(keys, main, {"entropies": side})
    assert part == cache.part_path(["k2", "k1"])  # a part is named by its set of keys
    assert cache.parts() == [part]
    assert sorted(cache.lookup([part], ["k2", "k1", "k3"])[KEY].to_list()) == keys
    assert cache.lookup([part], keys, "entropies").sort(KEY)["plain_entropy"].to_list() == [[0.5], [0.25, 0.75]]
    # an edited side table: the whole part is no longer trusted
    side_path = cache.side_path(part, "entropies")
    side_path.write_bytes(side_path.read_bytes()[:-10])
    assert cache.parts() == []
    # another settings fingerprint is another folder
    assert ResultCache.open(tmp_path / "cache", "score", {"model": "m", "mode": "probe"}).root != cache.root


def test_a_verified_part_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """Plan and merge both verify the parts a run reuses: the second time costs a stat, not a
    read. Any later edit is still caught: in place with the same size, or with its mtime put
    back (ctime moves), or by a replaced file (a new inode)."""
    import undercurve.io as io

    cache = ResultCache.open(tmp_path / "cache", "score", {"model": "m"})
    part = cache.write(["k1"], pl.DataFrame({KEY: ["k1"], "eas": [1.0]}),
                       {"entropies": pl.DataFrame({KEY: ["k1"], "plain_entropy": [[0.5, 0.25]]})})
    time.sleep(1.1)  # only files unchanged for a second are remembered
    reads = []
    real = io.file_sha256
    monkeypatch.setattr(io, "file_sha256", lambda p: reads.append(p) or real(p))
    assert cache.parts() == [part] and len(reads) == 2
    assert cache.parts() == [part] and len(reads) == 2  # not read again

    side = cache.side_path(part, "entropies")
    st = side.stat()
    data = bytearray(side.read_bytes())
    data[len(data) // 2] ^= 0xFF
    side.write_bytes(bytes(data))  # same size, in place
    os.utime(side, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert side.stat().st_size == st.st_size and side.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.parts() == []
    side.write_bytes(bytes(data))
    data[len(data) // 2] ^= 0xFF
    tmp = side.with_name("restored")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, side)  # the original bytes again, in a new file
    assert cache.parts() == [part]


def test_model_identity_is_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text('{"x": 1}')
        (d / "model.safetensors").write_bytes(b"weights")
    memo = tmp_path / "memo.json"
    assert model_identity(str(a), memo) == model_identity(str(b), memo)  # same files elsewhere
    (b / "model.safetensors").write_bytes(b"other weights")
    assert model_identity(str(a), memo) != model_identity(str(b), memo)  # replaced in place
    assert model_identity("org/name") == "hub:org/name"


def test_prune_lru_and_keep(tmp_path):
    cache = ResultCache.open(tmp_path / "c", "score", {"s": 1})
    parts = []
    for i in range(3):
        keys = [f"k{i}"]
        parts.append(cache.write(keys, pl.DataFrame({KEY: keys, "v": [float(i)] * 1})))
        t = time.time() - 1000 * (3 - i)  # part 0 used longest ago
        os.utime(parts[-1].with_suffix(".fp"), (t, t))
    one = sum(f.stat().st_size for f in cache.root.glob("part-*")) / 3
    info = describe(tmp_path / "c")
    assert info.height == 1 and info["parts"][0] == 3
    # evict to two parts' size, but part 0 (the oldest) is held by a run: part 1 goes
    out = prune(tmp_path / "c", max_bytes=int(2 * one + 1), keep=[parts[0]])
    assert out["parts_removed"] == 1
    assert cache.parts() == sorted([parts[0], parts[2]])
    cache.touch([parts[0]])
    out = prune(tmp_path / "c", older_than_s=500)
    assert out["parts_removed"] == 1 and cache.parts() == [parts[0]]  # recently touched stays


def test_lookup_holding_and_missing_agree_with_an_obvious_reference(tmp_path):
    """Random parts that overlap (a key in several parts: the first part in order wins), and a
    run's keys some of which no part holds, repeated and in any order."""
    import random

    rnd = random.Random(7)
    cache = ResultCache.open(tmp_path / "cache", "k", {})
    universe = [f"k{i:03d}" for i in range(200)]
    parts, first = [], {}
    for j in range(6):
        keys = rnd.sample(universe[:150], 40)
        side = [(k, r) for k in keys for r in range(rnd.randint(0, 3))]  # any number of rows per key
        parts.append(cache.write(keys, pl.DataFrame({KEY: keys, "v": [j * 1000 + int(k[1:]) for k in keys]}),
                                 {"many": pl.DataFrame({KEY: [k for k, _ in side], "r": [j * 10 + r for _, r in side]},
                                                       schema={KEY: pl.Utf8, "r": pl.Int64})}))
    parts = cache.parts()  # verified, in the order a run reads them
    for part in parts:
        many = pl.read_parquet(cache.side_path(part, "many"))
        for k, v in pl.read_parquet(part).iter_rows():
            first.setdefault(k, (v, str(part), many.filter(pl.col(KEY) == k)["r"].to_list()))
    ask = rnd.choices(universe, k=120)  # repeats, and keys beyond any part (k150..)
    got = ResultCache.lookup(parts, ask)
    assert got[KEY].is_unique().all()
    assert {k: (v, p) for k, v, p in got.iter_rows()} == {k: first[k][:2] for k in set(ask) if k in first}
    assert ResultCache.lookup([], ask).height == 0
    # a side table: every row of the key's first part, none of another part's
    rows = ResultCache.lookup(parts, ask, "many")
    assert {k: rows.filter(pl.col(KEY) == k)["r"].to_list() for k in set(ask) if k in first} == {
        k: first[k][2] for k in set(ask) if k in first}
    assert set(rows[KEY]) <= set(ask)

    run = tmp_path / "keys.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(ask))], KEY: ask}).write_parquet(run)
    want_parts = {str(p) for p in parts if set(pl.read_parquet(p)[KEY]) & set(ask)}
    assert set(cache.holding(run, parts)) == want_parts and cache.holding(run, []) == []
    missing = cache.missing(run).collect()
    seen = set()
    want = [(f"r{i}", k) for i, k in enumerate(ask) if k not in first and not (k in seen or seen.add(k))]
    assert list(missing.iter_rows()) == want  # one row per missing key, the run's first row for it
    # a schema: those columns, cast, also from no parts at all
    typed = ResultCache.lookup(parts, ask, schema={"v": pl.Float64})
    assert typed.columns == [KEY, "v", "part"] and typed.schema["v"] == pl.Float64
    assert typed.sort(KEY)["v"].to_list() == [float(v) for v in got.sort(KEY)["v"]]
    empty = ResultCache.lookup([], ask, schema={"v": pl.Int64})
    assert empty.height == 0 and dict(empty.schema) == {KEY: pl.Utf8, "v": pl.Int64, "part": pl.Utf8}
    # merged: the run's rows in order, 7 at a time, each with its result; a key no part holds is an error
    held = tmp_path / "held.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(ask))], KEY: ask}).filter(pl.col(KEY).is_in(list(first))) \
        .write_parquet(held)
    blocks = list(cache.merged(held, parts, 7))
    assert {b.height for b in blocks[:-1]} == {7}
    assert [(i, k, v) for b in blocks for i, k, v in b.iter_rows()] == [
        (i, k, first[k][0]) for i, k in pl.read_parquet(held).iter_rows()]
    with pytest.raises(RuntimeError, match=r"^\d+ of 7 rows have no result"):
        list(cache.merged(run, parts, 7))
    with pytest.raises(RuntimeError, match="7 of 7 rows have no result"):
        list(cache.merged(run, [], 7))


def test_a_run_prunes_to_max_gb_but_keeps_what_it_used(tmp_path):
    from undercurve.config import load_settings
    from undercurve.registry import Registry
    from undercurve.run import RunContext
    from undercurve.stages import prune_cache

    settings = load_settings("configs/tiny.yaml", {"workdir": str(tmp_path), "cache.max_gb": 1e-9})
    reg = Registry(settings.registry_path, create=True)
    cache = ResultCache.open(settings.cache_dir, "score", {"s": 1})
    old = cache.write(["a"], pl.DataFrame({KEY: ["a"]}))
    past = time.time() - 3600
    os.utime(old.with_suffix(".fp"), (past, past))  # last used an hour before this run
    ctx = RunContext(settings, reg.start_run("curate", "r", {}, "h"), str(settings.registry_path))
    time.sleep(0.01)
    mine = cache.write(["b"], pl.DataFrame({KEY: ["b"]}))  # written (used) by this run
    out = prune_cache(ctx)
    assert out["parts_removed"] == 1 and cache.parts() == [mine]
    assert prune_cache(RunContext(load_settings("configs/tiny.yaml", {"workdir": str(tmp_path)}), ctx.run_id,
                                  ctx.registry_path)) is None  # no max_gb: nothing evicted

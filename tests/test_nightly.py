"""A real nightly: one folder per night (run name templates), retention of older nights, and
what changed since the last night (undercurve/nightly.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from conftest import demo_overrides
from undercurve import nightly
from undercurve.config import ConfigError, load_settings
from undercurve.registry import Registry

REPO = Path(__file__).resolve().parent.parent


def _at(day: int, hour: int = 2):
    return lambda: datetime(2025, 1, day, hour, 0, 7, tzinfo=timezone.utc)


# --- run name templates ----------------------------------------------------------------------

def test_run_name_placeholders_expand_once_when_settings_load(monkeypatch, tmp_path):
    monkeypatch.setattr(nightly, "_now", _at(5))
    assert nightly.expand("nightly-{date}") == "nightly-2025-01-05"
    assert nightly.expand("n-{date}-{time}") == "n-2025-01-05-020007"
    s = load_settings("configs/tiny.yaml", {"workdir": str(tmp_path), "run_name": "nightly-{date}"})
    assert (s.run_name, s.run_series, s.series) == ("nightly-2025-01-05", "nightly-{date}", "nightly-{date}")
    assert s.run_dir == tmp_path / "nightly-2025-01-05"
    monkeypatch.setattr(nightly, "_now", _at(6))  # the next day: loaded settings keep their name
    again = type(s).model_validate(s.model_dump())
    assert (again.run_name, again.run_series) == ("nightly-2025-01-05", "nightly-{date}")
    plain = load_settings("configs/tiny.yaml", {"workdir": str(tmp_path)})  # unchanged default behaviour
    assert (plain.run_name, plain.run_series, plain.series, plain.run_dir) == ("demo", None, "demo", tmp_path / "demo")
    # the shipped nightly config gives each night its own folder and keeps a week
    shipped = load_settings("configs/nightly.yaml")
    assert (shipped.run_name, shipped.run_series, shipped.retention.keep_runs) == (
        "nightly-2025-01-06", "nightly-{date}", 7)


@pytest.mark.parametrize("name,words", [
    ("nightly-{dat}", ["run_name", "unknown placeholder {dat}", "{date} (UTC YYYY-MM-DD)"]),
    ("nightly-{date:%Y}", ["run_name", "unknown placeholder {date:%Y}"]),
    ("nightly-{}", ["run_name", "unknown placeholder {}"]),
    ("nightly-{date", ["run_name", "expected '}'"]),
    ("nightly-}", ["run_name", "'}'"]),
    ("nightly-{{date}}", ["run_name", "'{{' and '}}' are not allowed"]),
    ("{date}/x", ["run_name", "plain folder name"]),
])
def test_a_bad_placeholder_is_a_short_error_naming_the_key(name, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings("configs/tiny.yaml", {"workdir": str(tmp_path), "run_name": name})
    msg = str(err.value)
    assert all(w in msg for w in words), msg
    assert len(msg.splitlines()) == 1 and len(msg) < 200, msg


def test_run_series_is_checked_too():
    with pytest.raises(ConfigError, match="run_series = 'n-{x}': unknown placeholder {x}"):
        load_settings("configs/tiny.yaml", {"run_name": "n", "run_series": "n-{x}"})
    with pytest.raises(ConfigError, match="run_name 'other' is not a name of run_series 'n-{date}'"):
        load_settings("configs/tiny.yaml", {"run_name": "other", "run_series": "n-{date}"})


# --- retention -------------------------------------------------------------------------------

def _folder(workdir: Path, name: str) -> Path:
    d = workdir / name / "select"
    d.mkdir(parents=True)
    (d / "eas.parquet").write_bytes(b"x")
    return workdir / name


def test_retention_removes_only_older_folders_of_the_series_never_a_running_one(monkeypatch, tmp_path):
    from undercurve.io import run_lock

    monkeypatch.setattr(nightly, "_now", _at(7))
    workdir = tmp_path / "runs"
    nights = {d: _folder(workdir, f"nightly-2025-01-0{d}") for d in range(1, 8)}
    others = [_folder(workdir, n) for n in ("nightly", "nightly-latest", "other-2025-01-01", "demo-inputs",
                                             "nightly-2025-01-01-x", "cache")]
    (workdir / "nightly-2025-01-09").write_text("a file, not a run folder")
    settings = load_settings("configs/tiny.yaml", {"workdir": str(workdir), "run_name": "nightly-{date}",
                                                  "retention.keep_runs": 2})
    assert settings.run_dir == nights[7]
    reg = Registry(settings.registry_path, create=True)
    running = reg.start_run("curate", "nightly-2025-01-02", {}, "h")  # this process: alive, RUNNING
    done = reg.start_run("curate", "nightly-2025-01-03", {}, "h")
    reg.finish_run(done, "COMPLETED", {})
    me = reg.start_run("curate", settings.run_name, {}, "h")  # the run itself, still RUNNING
    with run_lock(nights[4]):  # a run of another registry holds night 4's lock
        out = nightly.retention_for_run(reg, settings)
    removed = sorted(Path(p).name for p in out["removed"])
    assert removed == ["nightly-2025-01-01", "nightly-2025-01-03", "nightly-2025-01-05"]
    assert sorted(Path(s["folder"]).name for s in out["skipped"]) == ["nightly-2025-01-02", "nightly-2025-01-04"]
    left = sorted(p.name for p in workdir.iterdir())
    assert left == sorted(["nightly-2025-01-02", "nightly-2025-01-04", "nightly-2025-01-06", "nightly-2025-01-07",
                           "nightly-2025-01-09", "registry.duckdb", *(o.name for o in others)])
    assert all(o.is_dir() for o in others)
    # once night 2's run is over and night 4's lock is free they go too; the newest 2 stay
    reg.finish_run(running, "COMPLETED", {})
    reg.finish_run(me, "COMPLETED", {})
    out = nightly.retention_for_run(reg, settings)
    assert sorted(Path(p).name for p in out["removed"]) == ["nightly-2025-01-02", "nightly-2025-01-04"]
    assert [Path(p).name for p in out["kept"]] == ["nightly-2025-01-06", "nightly-2025-01-07"]
    # no retention setting, or a plain run name: nothing is removed
    assert nightly.retention_for_run(reg, load_settings("configs/tiny.yaml", {"workdir": str(workdir)})) is None
    plain = load_settings("configs/tiny.yaml", {"workdir": str(workdir), "run_name": "nightly",
                                               "retention.keep_runs": 1})
    assert nightly.retention_for_run(reg, plain)["removed"] == [] and (workdir / "nightly").is_dir()


def test_series_folders_are_ordered_by_their_date_and_time_not_their_name(tmp_path):
    for name in ("x-235959-2025-01-01", "x-000000-2025-01-02", "x-120000-2025-01-01", "x-1-2025-01-03"):
        (tmp_path / name).mkdir()
    assert [p.name for p in nightly.series_folders(tmp_path, "x-{time}-{date}")] == [
        "x-120000-2025-01-01", "x-235959-2025-01-01", "x-000000-2025-01-02"]
    assert nightly.apply_retention(tmp_path, "x-{time}-{date}", 1)["kept"] == [str(tmp_path / "x-000000-2025-01-02")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000-2025-01-02", "x-1-2025-01-03"]


# --- what changed since the last night -------------------------------------------------------

def _night(run_dir: Path, rows: dict[str, str], selections: dict[str, list[str]], keys: bool = True) -> None:
    """A hand-built run folder: rows id -> content, the keys the score stage would write."""
    (run_dir / "length_cap").mkdir(parents=True)
    ids = list(rows)
    pl.DataFrame({"id": ids, "source": ["s"] * len(ids), "prompt": [rows[i] for i in ids]}).write_parquet(
        run_dir / "length_cap" / "samples.parquet")
    if keys:
        (run_dir / "score").mkdir()
        pl.DataFrame({"id": ids, "source": ["s"] * len(ids), "key": [f"k:{rows[i]}" for i in ids]}).write_parquet(
            run_dir / "score" / "keys.parquet")
    (run_dir / "select").mkdir()
    for strategy, chosen in selections.items():
        pl.DataFrame({"id": chosen, "strategy": [strategy] * len(chosen), "rank": list(range(len(chosen))),
                      "score": [1.0] * len(chosen)}, schema_overrides={"id": pl.Utf8}).write_parquet(
            run_dir / "select" / f"{strategy}.parquet")


LAST_ROWS = {f"r{i}": f"text {i}" for i in range(10)}
THIS_ROWS = {**{f"r{i}": f"text {i}" for i in range(3, 10)}, "r5": "text 5 edited",
             **{f"r{i}": f"text {i}" for i in range(10, 14)}}
LAST_SEL = {"eas": ["r0", "r1", "r2", "r3", "r4"], "random": ["r1", "r5", "r7"], "length": ["r9"]}
THIS_SEL = {"eas": ["r3", "r4", "r10", "r11", "r12"], "random": ["r7", "r5", "r1"], "length": [], "edis": ["r3"]}


def _slow_rows(this: dict[str, str], last: dict[str, str], by_key: bool) -> dict:
    name = (lambda i, rows: rows[i]) if by_key else (lambda i, rows: i)
    this_k = [name(i, this) for i in this]
    last_k = [name(i, last) for i in last]
    return {"new": sum(1 for k in this_k if k not in last_k), "removed": sum(1 for k in last_k if k not in this_k),
            "kept": sum(1 for k in this_k if k in last_k), "this_night": len(this_k), "last_night": len(last_k)}


def _slow_churn(this: list[str], last: list[str]) -> dict:
    added = [i for i in this if i not in last]
    dropped = [i for i in last if i not in this]
    both = [i for i in this if i in last]
    union = set(this) | set(last)
    return {"added": len(added), "dropped": len(dropped), "kept": len(both),
            "jaccard": round(len(both) / len(union), 4) if union else 1.0}


def test_rows_and_selection_churn_between_two_hand_built_nights(tmp_path):
    last, this = tmp_path / "n-2025-01-01", tmp_path / "n-2025-01-02"
    _night(last, LAST_ROWS, LAST_SEL)
    _night(this, THIS_ROWS, THIS_SEL)
    rows = nightly.rows_diff(this, last)
    assert rows == {"by": "content key", **_slow_rows(THIS_ROWS, LAST_ROWS, by_key=True)}
    assert (rows["new"], rows["removed"], rows["kept"]) == (5, 4, 6)  # r5 edited: removed and new by content
    churn = {c["strategy"]: c for c in nightly.selection_churn(this, last, list(THIS_SEL))}
    for s in ("eas", "random", "length"):
        got = {k: churn[s][k] for k in ("added", "dropped", "kept", "jaccard")}
        assert got == _slow_churn(THIS_SEL[s], LAST_SEL[s]), s
        assert (churn[s]["this_night"], churn[s]["last_night"], churn[s]["source"]) == (
            len(THIS_SEL[s]), len(LAST_SEL[s]), "file")
    assert churn["eas"]["jaccard"] == 0.25 and churn["random"]["jaccard"] == 1.0 and churn["length"]["jaccard"] == 0.0
    assert churn["edis"]["last_night"] is None and churn["edis"]["source"] == "not run last night"
    # without keys.parquet on one side the rows are compared by id, and it says so
    (last / "score" / "keys.parquet").unlink()
    rows = nightly.rows_diff(this, last)
    assert rows == {"by": "id", **_slow_rows(THIS_ROWS, LAST_ROWS, by_key=False)}
    assert (rows["new"], rows["removed"], rows["kept"]) == (4, 3, 7)


def test_since_last_night_picks_the_previous_completed_run_of_the_series(tmp_path):
    reg = Registry(tmp_path / "registry.duckdb", create=True)

    def run(name, status, series="n-{date}", contamination=(), folder=None):
        rid = reg.start_run("curate", name, {"run_series": series, "workdir": str(tmp_path)}, "h")
        if contamination:
            reg.add_rows("contamination", rid, pl.DataFrame(
                contamination, schema=["benchmark", "method", "n"], orient="row"))
        reg.finish_run(rid, status, {"run_dir": str(folder or tmp_path / name)})
        return rid

    last, this = tmp_path / "n-2025-01-01", tmp_path / "n-2025-01-02"
    _night(last, LAST_ROWS, LAST_SEL)
    _night(this, THIS_ROWS, THIS_SEL)
    prev = run("n-2025-01-01", "COMPLETED", contamination=[("gsm8k", "ngram", 2), ("math", "ngram", 1)])
    run("n-2025-01-01", "FAILED")  # a later failed run of the series does not count
    run("other", "COMPLETED", series=None)  # nor does another series
    rid = reg.start_run("curate", "n-2025-01-02", {"run_series": "n-{date}"}, "h")
    reg.add_rows("contamination", rid, pl.DataFrame({"benchmark": ["gsm8k", "gsm8k"], "method": ["ngram", "embedding"],
                                                     "n": [3, 1]}))
    diff = nightly.since_last_night(reg, rid, this, "n-{date}", list(THIS_SEL))
    assert diff["previous"]["run_id"] == prev and not diff["first_night"]
    assert diff["rows"] == nightly.rows_diff(this, last)
    assert diff["selections"] == nightly.selection_churn(this, last, list(THIS_SEL))
    assert diff["contamination"] == [
        {"benchmark": "gsm8k", "method": "embedding", "this_night": 1, "last_night": 0, "change": 1},
        {"benchmark": "gsm8k", "method": "ngram", "this_night": 3, "last_night": 2, "change": 1},
        {"benchmark": "math", "method": "ngram", "this_night": 0, "last_night": 1, "change": -1}]
    md = nightly.markdown(diff)
    assert "Rows (by content key): 5 new, 4 removed, 6 kept" in md and "| eas | 5 | 5 | 3 | 3 | 0.25 |" in md
    json.dumps(diff)  # it goes into the registry's summary_json
    # last night's folder removed (retention): rows not compared, churn from the registry's selections
    reg.add_selection(prev, pl.DataFrame({"strategy": ["eas"] * 5, "rank": range(5), "id": LAST_SEL["eas"],
                                          "score": [1.0] * 5}))
    import shutil

    shutil.rmtree(last)
    diff = nightly.since_last_night(reg, rid, this, "n-{date}", ["eas", "random"])
    assert diff["rows"]["by"] is None and "is gone" in diff["rows"]["unavailable"]
    eas, random_ = diff["selections"]
    assert eas["source"] == "registry" and eas["jaccard"] == 0.25 and random_["last_night"] is None
    # the first run of a series
    first = nightly.since_last_night(reg, prev, last, "n-{date}", ["eas"])
    assert first["first_night"] and "First night" in nightly.markdown(first)


# --- two real nights -------------------------------------------------------------------------

def test_two_nights_of_the_curate_flow(prefect_harness, tmp_path, monkeypatch, capsys):
    """Night 1 and night 2 of a `nightly-{date}` series (the clock moved a day), keep_runs 1:
    night 2 gets its own folder, compares itself with night 1, and removes night 1's folder."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.cli import main
    from flows.curate import curate

    workdir = tmp_path / "runs"
    small = {"run_name": "nightly-{date}", "pass_rate.enabled": False,
             "selection.strategies": ["random", "length", "eas"],
             "selection.budget": 4, "retention.keep_runs": 1}
    monkeypatch.setattr(nightly, "_now", _at(1))
    first = curate("configs/tiny.yaml", demo_overrides(workdir, **small, **{"corpus.demo_size": 10}))
    night1 = workdir / "nightly-2025-01-01"
    assert Path(first["run_dir"]) == night1.resolve() and first["since_last_night"]["first_night"]
    keys1 = pl.read_parquet(night1 / "score" / "keys.parquet")
    sel1 = {s: set(pl.read_parquet(night1 / "select" / f"{s}.parquet")["id"]) for s in ("random", "length", "eas")}

    monkeypatch.setattr(nightly, "_now", _at(2))
    second = curate("configs/tiny.yaml", demo_overrides(workdir, **small, **{"corpus.demo_size": 13}))
    night2 = workdir / "nightly-2025-01-02"
    assert Path(second["run_dir"]) == night2.resolve()
    assert not night1.exists() and night2.is_dir()  # retention: the newest 1 of the series
    diff = second["since_last_night"]
    assert diff["previous"]["run_id"] == first["run_id"] and diff["previous"]["run_name"] == night1.name
    keys2 = pl.read_parquet(night2 / "score" / "keys.parquet")
    k1, k2 = keys1["key"].to_list(), keys2["key"].to_list()
    assert diff["rows"] == {"by": "content key", "this_night": len(k2), "last_night": len(k1),
                            "new": sum(k not in k1 for k in k2), "removed": sum(k not in k2 for k in k1),
                            "kept": sum(k in k1 for k in k2)}
    assert diff["rows"]["new"] == 3 and diff["rows"]["removed"] == 0  # the demo's first rows are the same
    for c in diff["selections"]:
        sel2 = set(pl.read_parquet(night2 / "select" / f"{c['strategy']}.parquet")["id"])
        assert {k: c[k] for k in ("added", "dropped", "kept", "jaccard")} == _slow_churn(
            sorted(sel2), sorted(sel1[c["strategy"]])), c
    reg = Registry(workdir / "registry.duckdb")
    found = reg.query("SELECT run_id, benchmark, method, n FROM contamination").to_dicts()
    for c in diff["contamination"]:
        def n(rid):
            return sum(r["n"] for r in found if r["run_id"] == rid and (r["benchmark"], r["method"]) == (
                c["benchmark"], c["method"]))
        assert (c["this_night"], c["last_night"]) == (n(second["run_id"]), n(first["run_id"]))
    assert sum(c["this_night"] for c in diff["contamination"]) > 0  # the demo's planted leaks
    stored = json.loads(reg.query("SELECT summary_json FROM runs WHERE run_id = ?", [second["run_id"]]).item())
    assert stored["since_last_night"] == json.loads(json.dumps(diff, default=str))

    async def artifacts(key):
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return [(a.type, a.data) for a in arts]

    changes = [data for kind, data in asyncio.run(artifacts("nightly-changes")) if kind == "markdown"]
    rows = diff["rows"]
    assert any("First night" in m for m in changes)
    assert any(f"Rows (by content key): {rows['new']} new, {rows['removed']} removed, {rows['kept']} kept" in m
               for m in changes), changes
    tables = [data for kind, data in asyncio.run(artifacts("nightly-churn")) if kind == "table"]
    eas = next(c for c in diff["selections"] if c["strategy"] == "eas")
    assert any(json.loads(t) and any(r.get("strategy") == "eas" and r.get("jaccard") == eas["jaccard"]
                                     for r in json.loads(t)) for t in tables), tables
    assert main(["show", second["run_id"], "--registry", str(workdir / "registry.duckdb")]) == 0
    shown = capsys.readouterr().out
    assert f"since last night (run {first['run_id']}" in shown and "selection churn since last night" in shown

"""Nightly runs: a folder per night, retention, and what changed since the last night.

A run name may be a template: ``nightly-{date}`` is expanded once, when the settings load, to
``nightly-2025-06-01`` (UTC), so each night has its own folder ``<workdir>/<run_name>``. The
template names the run's *series* (``RunSettings.run_series``); a plain run name is a series
of one folder. Placeholders (nothing else is accepted):

    {date}  the UTC date, YYYY-MM-DD
    {time}  the UTC time, HHMMSS

After a completed curate run, ``apply_retention`` removes the older folders of its series
beyond ``retention.keep_runs`` (never the newest N, never one in use), and ``since_last_night``
compares the run with the previous COMPLETED curate run of the same series in the registry:
rows new / removed / kept (by content key where both runs have ``score/keys.parquet``, else by
id), contamination per benchmark and method, and the selection churn per strategy. Only the
id and key columns are read (``scan_parquet(...).select(...)``), never the corpus text.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import string
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger("undercurve")

PLACEHOLDERS = {  # name -> (strftime format, regex of its expansion, what it means)
    "date": ("%Y-%m-%d", r"\d{4}-\d{2}-\d{2}", "UTC YYYY-MM-DD"),
    "time": ("%H%M%S", r"\d{6}", "UTC HHMMSS"),
}
KEYS_FILE = Path("score") / "keys.parquet"  # id, source, key: written by the score stage
IDS_FILE = Path("length_cap") / "samples.parquet"  # the same rows (the score stage's input), by id
KEY = "key"  # the content key column (undercurve.cache.KEY)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _allowed() -> str:
    return ", ".join(f"{{{k}}} ({v[2]})" for k, v in PLACEHOLDERS.items())


def placeholders(template: str) -> list[str]:
    """The placeholders of a run name template, in order; ``ValueError`` for anything else
    (an unknown name, a format spec, an unbalanced or escaped brace: a name never holds one)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{e}; placeholders are {_allowed()}") from None
    found = []
    for literal, name, spec, conv in parts:
        if "{" in literal or "}" in literal:
            raise ValueError(f"'{{{{' and '}}}}' are not allowed; placeholders are {_allowed()}")
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"unknown placeholder {shown}; placeholders are {_allowed()}")
        found.append(name)
    return found


def is_template(name: str) -> bool:
    """Does ``name`` hold (valid) placeholders?"""
    try:
        return bool(placeholders(name))
    except ValueError:
        return False


def expand(template: str, now: datetime | None = None) -> str:
    """``nightly-{date}`` -> ``nightly-2025-06-01`` (UTC ``now``, default: the clock)."""
    names = placeholders(template)
    now = (now or _now()).astimezone(timezone.utc)
    return template.format(**{n: now.strftime(PLACEHOLDERS[n][0]) for n in names})


def series_pattern(template: str) -> re.Pattern:
    """The folder names a template expands to, each placeholder a named group."""
    out, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if name is not None:
            placeholders("{" + name + "}")  # ValueError for an unknown one
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{PLACEHOLDERS[name][1]})")
            seen.add(name)
    return re.compile("".join(out))


def series_folders(workdir: str | Path, series: str) -> list[Path]:
    """The run folders of ``series`` under ``workdir``, oldest first (by the date and time in
    their names, then by name). A plain name is a series of (at most) its one folder."""
    pattern = series_pattern(series)
    found = []
    for d in Path(workdir).iterdir() if Path(workdir).is_dir() else []:
        m = pattern.fullmatch(d.name)
        if m and d.is_dir() and not d.is_symlink():
            when = m.groupdict()
            found.append(((when.get("date") or "", when.get("time") or "", d.name), d))
    return [d for _, d in sorted(found)]


def apply_retention(workdir: str | Path, series: str, keep: int, running: set[str] = frozenset(),
                    protect: tuple[str | Path, ...] = ()) -> dict:
    """Remove the folders of ``series`` older than its newest ``keep``. Never removed: the
    newest ``keep``, a folder named in ``running`` (its run is RUNNING in the registry), one in
    ``protect``, and one whose run lock another process holds. Returns what was removed and
    what was skipped (with why); an OS error on one folder is reported, not raised."""
    from undercurve.io import RunLocked, run_lock

    if keep < 1:
        raise ValueError("keep must be >= 1")
    folders = series_folders(workdir, series)
    protected = {Path(p).resolve() for p in protect}
    removed, skipped = [], []
    for d in folders[:-keep]:
        if d.name in running or d.resolve() in protected:
            skipped.append({"folder": str(d), "why": "its run is running"})
            continue
        try:
            with run_lock(d):
                shutil.rmtree(d)
        except RunLocked:
            skipped.append({"folder": str(d), "why": "another process holds its run lock"})
            continue
        except OSError as e:
            skipped.append({"folder": str(d), "why": f"{type(e).__name__}: {e}"})
            continue
        removed.append(str(d))
        log.info("retention: removed %s (series %s keeps its newest %d)", d, series, keep)
    for s in skipped:
        log.warning("retention: kept %s: %s", s["folder"], s["why"])
    return {"series": series, "keep_runs": keep, "removed": removed, "skipped": skipped,
            "kept": [str(d) for d in series_folders(workdir, series)]}


def retention_for_run(registry, settings) -> dict | None:
    """``apply_retention`` for a run's settings (``retention.keep_runs``; None: keep all)."""
    keep = settings.retention.keep_runs
    if keep is None:
        return None
    running = set(registry.query("SELECT run_name FROM runs WHERE status = 'RUNNING'")
                  ["run_name"].to_list())
    # this run's own row is RUNNING until it is recorded COMPLETED; its folder is protected anyway
    return apply_retention(settings.workdir, settings.series, keep, running, protect=(settings.run_dir,))


# --- what changed since the last night ----------------------------------------------------

def _ids(run_dir: Path, column: str, rel: Path) -> pl.DataFrame:
    return pl.scan_parquet(run_dir / rel).select(column).collect()


def rows_diff(this_dir: str | Path, last_dir: str | Path) -> dict:
    """Rows new / removed / kept between two runs' scored rows: by content key when both
    folders have ``score/keys.parquet``, else by id (``length_cap/samples.parquet``).

    new: this night's rows whose key (id) last night did not have; removed: last night's rows
    whose key this night does not have; kept: this night's rows whose key last night had."""
    this_dir, last_dir = Path(this_dir), Path(last_dir)
    if (this_dir / KEYS_FILE).is_file() and (last_dir / KEYS_FILE).is_file():
        by, column, rel = "content key", KEY, KEYS_FILE
    elif (this_dir / IDS_FILE).is_file() and (last_dir / IDS_FILE).is_file():
        by, column, rel = "id", "id", IDS_FILE
    else:
        missing = [str(d / IDS_FILE) for d in (this_dir, last_dir) if not (d / IDS_FILE).is_file()]
        return {"by": None, "unavailable": f"no rows to compare: {', '.join(missing)} missing"}
    now, last = _ids(this_dir, column, rel), _ids(last_dir, column, rel)
    last_u, now_u = last.unique(), now.unique()
    return {"by": by, "this_night": now.height, "last_night": last.height,
            "new": now.join(last_u, on=column, how="anti").height,
            "removed": last.join(now_u, on=column, how="anti").height,
            "kept": now.join(last_u, on=column, how="semi").height}


def selected_ids(run_dir: str | Path, strategy: str) -> set[str] | None:
    """The ids ``select/<strategy>.parquet`` holds (None: no such file)."""
    path = Path(run_dir) / "select" / f"{strategy}.parquet"
    if not path.is_file():
        return None
    return set(pl.scan_parquet(path).select("id").collect()["id"].to_list())


def churn(this: set[str], last: set[str]) -> dict:
    """Selected ids added, dropped and kept, and the Jaccard index (1.0 when both are empty)."""
    union = this | last
    return {"this_night": len(this), "last_night": len(last), "added": len(this - last),
            "dropped": len(last - this), "kept": len(this & last),
            "jaccard": round(len(this & last) / len(union), 4) if union else 1.0}


def selection_churn(this_dir: str | Path, last_dir: str | Path | None, strategies: list[str],
                    last_selected: dict[str, set[str]] | None = None) -> list[dict]:
    """Churn per strategy of this run, against last night's ``select/<strategy>.parquet`` or,
    where that file is gone (retention, a reused folder), ``last_selected`` (the registry's
    ``selections`` of that run). A strategy last night did not run: ``last_night`` None."""
    out = []
    for s in strategies:
        this = selected_ids(this_dir, s) or set()
        last, source = (selected_ids(last_dir, s) if last_dir is not None else None), "file"
        if last is None and last_selected is not None and s in last_selected:
            last, source = last_selected[s], "registry"
        if last is None:
            out.append({"strategy": s, "this_night": len(this), "last_night": None, "added": None,
                        "dropped": None, "kept": None, "jaccard": None, "source": "not run last night"})
            continue
        out.append({"strategy": s, **churn(this, last), "source": source})
    return out


def contamination_diff(this_rows: list[dict], last_rows: list[dict] | None) -> list[dict]:
    """Contamination found per (benchmark, method): this night's count vs last night's
    (``last_rows`` None: no last night). Rows: registry ``contamination`` (benchmark, method, n)."""
    def totals(rows):
        acc: dict[tuple, int] = {}
        for r in rows or []:
            k = (r["benchmark"], r["method"])
            acc[k] = acc.get(k, 0) + int(r["n"])
        return acc

    now, last = totals(this_rows), totals(last_rows)
    out = []
    for b, m in sorted(set(now) | set(last)):
        n, p = now.get((b, m), 0), (last.get((b, m), 0) if last_rows is not None else None)
        out.append({"benchmark": b, "method": m, "this_night": n, "last_night": p,
                    "change": None if p is None else n - p})
    return out


def previous_run(registry, series: str, run_id: str) -> dict | None:
    """The newest COMPLETED curate run of ``series`` other than ``run_id``: run_id, run_name,
    finished_at and its run folder (from its summary, else workdir/run_name of its config)."""
    rows = registry.query(
        "SELECT run_id, run_name, finished_at, config_json, summary_json FROM runs "
        "WHERE flow = 'curate' AND status = 'COMPLETED' AND run_id <> ? ORDER BY finished_at DESC", [run_id])
    for r in rows.iter_rows(named=True):
        config = json.loads(r["config_json"] or "{}")
        if (config.get("run_series") or r["run_name"]) != series:
            continue
        summary = json.loads(r["summary_json"] or "{}")
        run_dir = summary.get("run_dir") or str(Path(config.get("workdir", ".")) / r["run_name"])
        return {"run_id": r["run_id"], "run_name": r["run_name"], "finished_at": str(r["finished_at"]),
                "run_dir": run_dir}
    return None


def since_last_night(registry, run_id: str, run_dir: str | Path, series: str, strategies: list[str]) -> dict:
    """What changed since the previous COMPLETED curate run of ``series`` (see the module)."""
    def contamination(rid):
        return registry.query("SELECT benchmark, method, n FROM contamination WHERE run_id = ?", [rid]).to_dicts()

    prev = previous_run(registry, series, run_id)
    out: dict[str, Any] = {"series": series, "run_id": run_id, "previous": prev, "first_night": prev is None}
    if prev is None:
        out["contamination"] = contamination_diff(contamination(run_id), None)
        return out
    this_dir, last_dir = Path(run_dir), Path(prev["run_dir"])
    same = this_dir.resolve() == last_dir.resolve()
    if same:  # a plain run name: this run has replaced the last night's files
        out["rows"] = {"by": None, "unavailable": f"last night's run used this run's folder {this_dir}; "
                                                  "a run name template (nightly-{date}) keeps one folder per night"}
    elif not last_dir.is_dir():
        out["rows"] = {"by": None, "unavailable": f"last night's folder {last_dir} is gone (retention?)"}
    else:
        out["rows"] = rows_diff(this_dir, last_dir)
    sel = registry.query("SELECT strategy, sample_id FROM selections WHERE run_id = ?", [prev["run_id"]])
    last_selected: dict[str, set[str]] = {}
    for s, ids in sel.group_by("strategy").agg("sample_id").iter_rows():
        last_selected[s] = set(ids)
    out["selections"] = selection_churn(this_dir, None if same else last_dir, strategies, last_selected)
    out["contamination"] = contamination_diff(contamination(run_id), contamination(prev["run_id"]))
    return out


def markdown(diff: dict) -> str:
    """The diff as a short markdown report (the ``nightly-changes`` artifact)."""
    lines = [f"# What changed since the last night ({diff['series']})", ""]
    prev = diff.get("previous")
    if prev is None:
        lines += [f"First night: no earlier COMPLETED curate run of the series `{diff['series']}` in the registry.",
                  ""]
    else:
        lines += [f"Compared with run `{prev['run_id']}` ({prev['run_name']}, finished {prev['finished_at']}).", ""]
        rows = diff["rows"]
        if rows.get("by") is None:
            lines += [f"Rows: not compared: {rows['unavailable']}.", ""]
        else:
            lines += [f"Rows (by {rows['by']}): {rows['new']} new, {rows['removed']} removed, {rows['kept']} kept "
                      f"({rows['last_night']} last night, {rows['this_night']} this night).", ""]
        lines += ["## Selection churn", "", "| strategy | this night | last night | added | dropped | Jaccard |",
                  "|---|---|---|---|---|---|"]
        for c in diff["selections"]:
            cells = [c["strategy"], c["this_night"], *(("-" if c[k] is None else c[k])
                                                       for k in ("last_night", "added", "dropped", "jaccard"))]
            lines.append("| " + " | ".join(str(x) for x in cells) + " |")
        lines.append("")
    lines += ["## Contamination found", "", "| benchmark | method | this night | last night |", "|---|---|---|---|"]
    for c in diff["contamination"]:
        lines.append(f"| {c['benchmark']} | {c['method']} | {c['this_night']} | "
                     f"{'-' if c['last_night'] is None else c['last_night']} |")
    if not diff["contamination"]:
        lines.append("| (none) | | 0 | |")
    return "\n".join(lines) + "\n"

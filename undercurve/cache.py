"""Per-sample results keyed by content, shared by every run in a workdir.

What a sample's score (or its rollouts) is depends on its content and on what computed it,
never on its position in the corpus, its id or the run's name. So a result is stored under

    <cache dir>/<kind>/<settings fingerprint>/part-<fp>.parquet   rows keyed by ``key``
                                             part-<fp>.<table>.parquet  side tables (entropies)
                                             part-<fp>.fp          marker, written last
                                             settings.json         what the fingerprint means

``key`` is a hash of the fields the result depends on (``content_keys``); the settings
fingerprint covers the model's identity (its files' content, ``model_identity``), every
setting that changes the result and the code's version. A nightly run over a reordered corpus
with rows added or removed, under any run name, recomputes only the keys no verified part
holds. A part is written whole by the shard that computed it; its marker vouches for every
file's sha256, and a part that fails it is ignored (its rows are recomputed). A marker's
mtime is the part's last use: ``prune`` evicts least recently used parts first.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import polars as pl

from undercurve.io import (_read_marker, file_sha256, fingerprint, iter_parquet, outputs_verified, write_marker,
                           write_text_atomic)

KEY = "key"
_SEP = "\x1f"  # joins the key's fields; cannot occur in a field's text by accident


def row_key(values: Sequence[str | None]) -> str:
    """The content key of one row: 128 bits of sha256 over its fields (None != "")."""
    blob = _SEP.join("\x00" if v is None else "\x01" + v for v in values)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def content_keys(samples: str | Path, fields: Sequence[str], out: str | Path,
                 carry: Sequence[str] = ("id", "source"), batch_rows: int = 8192) -> Path:
    """Stream ``samples`` (Parquet) into ``out``: the ``carry`` columns and ``key`` per row,
    in the samples' order. Reads only the columns it needs, ``batch_rows`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from undercurve.io import _tmp_name

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    src = pq.ParquetFile(samples)
    carry = [c for c in carry if c in src.schema_arrow.names]
    tmp = _tmp_name(out)
    schema = pa.schema([*(src.schema_arrow.field(c) for c in carry), pa.field(KEY, pa.string())])
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in src.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys([*carry, *fields]))):
            cols = [batch.column(f).to_pylist() for f in fields]
            keys = [row_key(vals) for vals in zip(*cols)]
            writer.write_batch(pa.record_batch([*(batch.column(c) for c in carry), pa.array(keys, pa.string())],
                                               schema=schema))
    os.replace(tmp, out)
    return out


_MODEL_FILES = (".safetensors", ".bin", ".json", ".model", ".txt", ".py", ".gguf", ".tiktoken")


def model_identity(model: str, memo: str | Path | None = None) -> str:
    """What a model IS, for cache keys: the sha256 of its files (weights, config, tokenizer).

    A local folder replaced in place gets a new identity; the same files at another path keep
    theirs. Hashes are memoised by (path, size, mtime) in ``memo`` (a JSON file), so a large
    model is read once. A hub id that is not a local folder stands for itself."""
    root = Path(model)
    if not root.is_dir():
        return f"hub:{model}"
    memo_path = Path(memo) if memo else None
    known = {}
    if memo_path and memo_path.exists():
        try:
            known = json.loads(memo_path.read_text())
        except ValueError:
            known = {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _MODEL_FILES)
    digests, changed = [], False
    for p in files:
        st = p.stat()
        stamp = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if known.get(stamp) is None:
            known[stamp], changed = file_sha256(p), True
        digests.append((str(p.relative_to(root)), known[stamp]))
    if memo_path and changed:
        write_text_atomic(json.dumps(known), memo_path)
    return "sha256:" + fingerprint(digests)


@dataclass(frozen=True)
class ResultCache:
    """One kind of result under one settings fingerprint: ``<cache dir>/<kind>/<fp>/``."""

    root: Path

    @classmethod
    def open(cls, cache_dir: str | Path, kind: str, settings: dict) -> "ResultCache":
        root = Path(cache_dir) / kind / fingerprint(settings)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "settings.json").exists():
            write_text_atomic(json.dumps(settings, sort_keys=True, indent=1, default=str), root / "settings.json")
        return cls(root)

    def part_path(self, keys: Sequence[str]) -> Path:
        """Where the part computing exactly these keys lives (the same keys: the same part)."""
        return self.root / f"part-{fingerprint(sorted(keys))}.parquet"

    def part_fingerprint(self, part: str | Path) -> str:
        return f"{self.root.name}:{Path(part).name}"

    def write(self, keys: Sequence[str], main: pl.DataFrame, side: dict[str, pl.DataFrame] | None = None) -> Path:
        """Store one computed part: every file atomically, the marker last."""
        from undercurve.io import write_parquet_atomic

        path = self.part_path(keys)
        files = [write_parquet_atomic(df, self.side_path(path, t)) for t, df in (side or {}).items()]
        files.append(write_parquet_atomic(main, path))
        write_marker(marker(path), self.part_fingerprint(path), files)
        return path

    def done(self, part: str | Path) -> bool:
        """The part exists whole, with the hashes its marker recorded."""
        recorded = _read_marker(marker(part)).get("sha256") or {}
        files = [marker(part).parent / name for name in recorded]
        return Path(part).name in recorded and outputs_verified(marker(part), self.part_fingerprint(part), files)

    def parts(self) -> list[Path]:
        """Every verified part (a part failing its hashes is left out and logged)."""
        import logging

        found = []
        for m in sorted(self.root.glob("part-*.fp")):
            part = m.with_suffix(".parquet")
            if self.done(part):
                found.append(part)
            else:
                logging.getLogger("undercurve").warning("cache: %s fails verification; its rows are recomputed", part)
        return found

    def missing(self, keys: str | Path) -> pl.LazyFrame:
        """``id, key`` of the rows of a ``content_keys`` file whose key no verified part holds,
        one row per distinct key (a repeated content is computed once)."""
        run, parts = pl.scan_parquet(keys), self.parts()
        if parts:  # the run's keys that parts hold, then the others: only the run's keys are hashed
            run = run.join(pl.scan_parquet(parts).select(KEY).join(run.select(KEY), on=KEY, how="semi"),
                           on=KEY, how="anti")
        return run.unique(KEY, keep="first", maintain_order=True).select("id", KEY)

    def holding(self, keys: str | Path, parts: list[Path]) -> list[str]:
        """The parts (of ``parts``) that hold a key of a ``content_keys`` file: what a run reads.
        Only the file's keys are hashed, never every key the cache holds (other runs', nights')."""
        if not parts:
            return []
        return (pl.scan_parquet(parts, include_file_paths="part").select(KEY, "part")
                .join(pl.scan_parquet(keys).select(KEY), on=KEY, how="semi").select("part").unique()
                .collect()["part"].to_list())

    @classmethod
    def lookup(cls, parts: Sequence[Path], keys: pl.DataFrame | pl.Series | Sequence[str],
               table: str | None = None, schema: dict | None = None) -> pl.DataFrame:
        """The rows of ``parts`` for ``keys``: one per key held (from the first part in ``parts``
        that holds it; a key held by none is absent), with the ``part`` it came from. With
        ``table``, that part's side-table rows for each key instead (any number per key, e.g.
        rollouts), in stored order. ``schema``: the columns wanted and their types; the result
        is then ``key``, those and ``part``, also when ``parts`` is empty.

        The parts are filtered by the keys before anything else, so memory is that of the rows
        asked for: a stage looks its rows up a block at a time and stays flat as the run or the
        cache grows. (A key filter, not a semi-join: the Parquet reader then decodes the other
        columns of matching rows only; a semi-join decoded every row first: 2.6x the peak on
        400k keys with 2 x 2 kB of text each, ``benchmarks/bench_cache_lookup.py``.)"""
        if not parts:
            return pl.DataFrame(schema={KEY: pl.Utf8, **(schema or {}), "part": pl.Utf8})
        if isinstance(keys, pl.DataFrame):
            keys = keys[KEY]
        wanted = pl.col(KEY).is_in(pl.Series(KEY, keys, dtype=pl.Utf8).unique().implode())

        def shaped(lf: pl.LazyFrame) -> pl.LazyFrame:
            if schema is None:
                return lf
            return lf.select(KEY, *(pl.col(c).cast(t) for c, t in schema.items() if c != KEY), "part")

        main = (pl.scan_parquet(list(parts), include_file_paths="part").filter(wanted)
                .unique(KEY, keep="first", maintain_order=True))
        if table is None:
            return shaped(main).collect()
        owner = main.select(KEY, pl.col("part").str.replace(r"\.parquet$", f".{table}.parquet"))
        return shaped(pl.scan_parquet([cls.side_path(p, table) for p in parts], include_file_paths="part")
                      .filter(wanted).join(owner, on=[KEY, "part"], how="semi", maintain_order="left")).collect()

    def merged(self, keys: str | Path, parts: Sequence[Path], rows: int) -> Iterator[pl.DataFrame]:
        """A ``content_keys`` file's rows, ``rows`` at a time and in order, each joined with its
        result in ``parts``: how a run reads its results without holding them all. Every key
        must be held; one that no part holds (a part removed mid-run) is an error, not a gap."""
        for block in iter_parquet(keys, rows):
            found = self.lookup(parts, block)
            absent = block.join(found, on=KEY, how="anti").height
            if absent:
                raise RuntimeError(f"{absent} of {block.height} rows have no result in {self.root} "
                                   "(a part was removed mid-run?)")
            yield block.join(found.drop("part"), on=KEY, how="inner", maintain_order="left")

    @staticmethod
    def side_path(part: str | Path, table: str) -> Path:
        """A part's side table: ``part-X.parquet`` -> ``part-X.<table>.parquet``."""
        part = Path(part)
        return part.with_name(f"{part.stem}.{table}.parquet")

    def touch(self, parts: list[Path]) -> None:
        """Mark parts as used now (the eviction order)."""
        now = time.time()
        for p in parts:
            os.utime(marker(p), (now, now))


def marker(part: str | Path) -> Path:
    return Path(part).with_suffix(".fp")


def _part_files(m: Path) -> list[Path]:
    stem = m.name[: -len(".fp")]
    return [m, *m.parent.glob(f"{stem}.parquet"), *m.parent.glob(f"{stem}.*.parquet")]


def describe(cache_dir: str | Path) -> pl.DataFrame:
    """One row per kind and settings fingerprint: parts, bytes, last use, what the settings are."""
    rows = []
    for root in sorted(p for p in Path(cache_dir).glob("*/*") if (p / "settings.json").exists()):
        markers = list(root.glob("part-*.fp"))
        size = sum(f.stat().st_size for m in markers for f in _part_files(m))
        last = max((m.stat().st_mtime for m in markers), default=None)
        settings = json.loads((root / "settings.json").read_text())
        rows.append({"kind": root.parent.name, "fingerprint": root.name, "parts": len(markers),
                     "mib": round(size / 2**20, 3),
                     "last_used": None if last is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(last)),
                     "model": str(settings.get("model_identity") or settings.get("model") or "")[:40],
                     "path": str(root)})
    return pl.DataFrame(rows, schema={"kind": pl.Utf8, "fingerprint": pl.Utf8, "parts": pl.Int64, "mib": pl.Float64,
                                      "last_used": pl.Utf8, "model": pl.Utf8, "path": pl.Utf8})


def prune(cache_dir: str | Path, max_bytes: int | None = None, older_than_s: float | None = None,
          keep: Sequence[str | Path] = (), keep_used_since: float | None = None) -> dict:
    """Evict parts: unused for ``older_than_s`` seconds, then least recently used first until the
    cache holds at most ``max_bytes``. Parts in ``keep``, and parts used at or after the time
    ``keep_used_since`` (a run's own, since it started), stay. Returns counts."""
    keep_set = {str(Path(p).resolve()) for p in keep}
    entries = []
    for m in Path(cache_dir).glob("*/*/part-*.fp"):
        files = _part_files(m)
        entries.append((m.stat().st_mtime, sum(f.stat().st_size for f in files if f.exists()), m, files))
    entries.sort(key=lambda e: e[0])  # least recently used first
    total = sum(e[1] for e in entries)
    removed, freed, now = 0, 0, time.time()
    for mtime, size, m, files in entries:
        if str(m.with_suffix(".parquet").resolve()) in keep_set or (
                keep_used_since is not None and mtime >= keep_used_since):
            continue
        too_old = older_than_s is not None and now - mtime > older_than_s
        too_big = max_bytes is not None and total - freed > max_bytes
        if not (too_old or too_big):
            continue
        m.unlink()  # the marker first: a half-removed part is never taken as done
        for f in files[1:]:
            f.unlink(missing_ok=True)
        removed, freed = removed + 1, freed + size
    return {"parts_removed": removed, "bytes_freed": freed, "bytes_left": total - freed}

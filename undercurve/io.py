"""Atomic Parquet I/O, content hashes and resumable shards.

A stage output appears under its final name only once it is complete (write to a temporary
name, fsync, ``os.replace``), so a run killed at any point leaves either a finished file or
nothing. Resume = skip shards whose output already exists for the same input fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _publish(tmp: Path, path: Path) -> Path:
    """A finished temp file -> its final name: fsync first, so a crash never leaves a renamed
    but empty file."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    df.write_parquet(tmp, compression="zstd", statistics=True)
    return _publish(tmp, path)


def sink_parquet_atomic(lf: pl.LazyFrame, path: str | Path) -> Path:
    """``write_parquet_atomic`` for a lazy frame: streamed to a temp name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    lf.sink_parquet(tmp, compression="zstd", statistics=True)
    return _publish(tmp, path)


def iter_parquet(path: str | Path, rows: int) -> Iterator[pl.DataFrame]:
    """A Parquet file as frames of ``rows`` rows (the last one shorter), in file order. Each is a
    slice of a lazy scan, which the reader pushes down: only that slice is decoded, so memory
    is about one batch whatever the file's row groups (pyarrow's ``iter_batches`` peaked at
    about twice as much on 16 kB rows)."""
    scan = pl.scan_parquet(path)
    total = scan.select(pl.len()).collect().item()  # from the footer
    for start in range(0, total, rows):
        yield scan.slice(start, rows).collect()


class ParquetSink:
    """Frames -> one Parquet file, appended batch by batch under a temporary name; the file
    appears under ``path`` only on ``commit``, so a killed run leaves no half file there.
    ``schema``: a polars schema (dict) or an Arrow schema; written frames are cast to it, so
    every batch (and an empty file) has the same types. As a context manager, a sink left
    without ``commit`` (an error, or nothing worth keeping) removes its temporary file."""

    def __init__(self, path: str | Path, schema: dict | pa.Schema):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_name(self.path)
        self.schema = schema if isinstance(schema, pa.Schema) else pl.DataFrame(schema=schema).to_arrow().schema
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd", write_statistics=True)
        self.rows = 0
        self.done = False

    def write(self, batch: pl.DataFrame | pa.Table) -> None:
        table = batch.select(self.schema.names).to_arrow() if isinstance(batch, pl.DataFrame) else batch
        if table.num_rows:  # an empty batch would still add a row group
            self.writer.write_table(table.cast(self.schema))
            self.rows += table.num_rows

    def commit(self) -> Path:
        self.writer.close()
        self.done = True
        return _publish(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already failing: the temporary file goes either way
            pass
        self.done = True
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, *exc) -> None:
        if not self.done:
            self.abort()


def write_text_atomic(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
    return _publish(tmp, path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# sha256 of files this process has hashed, by what the file system says of them. A score
# cache part verified when a run plans is then not read again when it merges. Only files
# unchanged for a second before hashing are remembered: file times tick coarsely (a few ms),
# so an edit right after a write could keep the same stamp; an edit after the hash cannot.
_HASHED: dict[str, tuple[tuple[int, int, int, int], str]] = {}


def verified_sha256(path: str | Path) -> str:
    """``file_sha256``, remembered for a file whose size, inode, mtime and ctime (which any
    write, rename or ``utime`` moves) have not changed since this process hashed it."""
    path = os.path.abspath(path)
    started = time.time_ns()
    st = os.stat(path)
    stamp = (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    hit = _HASHED.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    digest = file_sha256(path)
    if started - max(st.st_mtime_ns, st.st_ctime_ns) > 1_000_000_000:
        if len(_HASHED) >= 100_000:  # a long-lived worker: start over rather than grow
            _HASHED.clear()
        _HASHED[path] = (stamp, digest)
    return digest


def fingerprint(obj) -> str:
    """Stable short hash of a JSON-able object (settings, id lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Shard:
    """One unit of resumable work: an input file, an output file, and the fingerprint that
    says whether an existing output belongs to this input and these settings."""

    index: int
    input_path: str
    output_path: str
    fingerprint: str

    @property
    def marker(self) -> Path:
        return Path(self.output_path).with_suffix(".fp")

    def done(self) -> bool:
        """Finished for this input and settings, and the output is byte for byte what was written."""
        return outputs_verified(self.marker, self.fingerprint, [self.output_path])

    def tampered(self) -> bool:
        """An output exists with this fingerprint's marker but fails its hash: truncated or edited."""
        return Path(self.output_path).exists() and _read_marker(self.marker).get("fingerprint") == self.fingerprint \
            and not self.done()


def _read_marker(marker: Path) -> dict:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}


def write_marker(marker: str | Path, fingerprint_: str, outputs: list[str | Path]) -> None:
    """Vouch for finished outputs: the work's fingerprint and each output's content hash.
    Written last, so a run killed before it simply redoes the work."""
    write_text_atomic(json.dumps({"fingerprint": fingerprint_,
                                  "sha256": {_rel(p, marker): file_sha256(p) for p in outputs}}), marker)


def _rel(path: str | Path, marker: str | Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(marker).resolve().parent)


def outputs_verified(marker: str | Path, fingerprint_: str, outputs: list[str | Path]) -> bool:
    """True when the marker vouches for this fingerprint and every output still has the
    recorded hash; a missing, truncated or edited output means the work is redone."""
    m = _read_marker(Path(marker))
    if m.get("fingerprint") != fingerprint_:
        return False
    hashes = m.get("sha256") or {}
    return bool(outputs) and all(Path(p).exists() and hashes.get(_rel(p, marker)) == verified_sha256(p) for p in outputs)


class RunLocked(RuntimeError):
    pass


class run_lock:
    """Exclusive lock on a run folder: two runs with the same name would mix their files."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise RunLocked(f"another run is using {self.path.parent}; pick another run_name or wait") from None
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()

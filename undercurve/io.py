"""Atomic Parquet I/O, content hashes and resumable shards.

A stage output appears under its final name only once it is complete (write to a temporary
name, fsync, ``os.replace``), so a run killed at any point leaves either a finished file or
nothing. Resume = skip shards whose output already exists for the same input fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import polars as pl


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet_atomic(df: pl.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    df.write_parquet(tmp, compression="zstd", statistics=True)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(obj) -> str:
    """Stable short hash of a JSON-able object (settings, id lists)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def iter_shards(df: pl.DataFrame, shard_size: int) -> Iterator[tuple[int, pl.DataFrame]]:
    for i, start in enumerate(range(0, df.height, shard_size)):
        yield i, df.slice(start, shard_size)


def run_sharded(
    df: pl.DataFrame,
    out_dir: str | Path,
    shard_size: int,
    fn: Callable[[pl.DataFrame], pl.DataFrame],
    *,
    settings: dict,
    on_shard: Callable[[int, int, bool], None] | None = None,
) -> list[Path]:
    """Apply ``fn`` shard by shard, writing ``shard-NNNNN.parquet`` atomically.

    A shard whose output exists and whose fingerprint (shard content + settings) matches is not
    recomputed; a stale one (different input or settings) is. ``on_shard(i, n, skipped)``
    reports progress.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = (df.height + shard_size - 1) // shard_size
    paths = []
    for i, shard in iter_shards(df, shard_size):
        path = out / f"shard-{i:05d}.parquet"
        # content, not just ids: an edited sample with the same id must be recomputed
        content = hashlib.sha256(shard.write_csv().encode()).hexdigest()
        fp = fingerprint({"content": content, "settings": settings})
        marker = out / f"shard-{i:05d}.fp"
        done = path.exists() and marker.exists() and marker.read_text() == fp
        if not done:
            write_parquet_atomic(fn(shard), path)
            write_text_atomic(fp, marker)
        paths.append(path)
        if on_shard:
            on_shard(i, n, done)
    # shards from an earlier, larger input must not leak into the result
    keep = {p.name for p in paths}
    for stale in out.glob("shard-*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    return paths


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

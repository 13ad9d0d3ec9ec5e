"""Ingest or the n-gram decontamination filter alone, two checkouts against each other on the
same corpus: each run in a fresh process (imports before the clock), the checkouts
alternating so that load drifts hit both alike. Prints each checkout's median wall time and
their ratio, and checks that both wrote the same rows.

The corpus is ``bench_scale``'s (``bench_decontam`` prompts, a one-line worked answer with a
boxed number; ~0.01 % of lines lack a response, ~0.1 % of prompts copy a benchmark item).
``--stage ingest``: ``ingest_to`` on its JSON Lines. ``--stage decontaminate``: a
``Decontaminator`` (13-gram, ``bench_scale``'s benchmark file, no embeddings) over the
ingested rows, 8,192 at a time as the stage reads them.

    .venv/bin/python benchmarks/bench_ingest.py --rows 100000 --repeats 5 --base /tmp/bs-old --code /tmp/bs-new
    .venv/bin/python benchmarks/bench_ingest.py --stage decontaminate --rows 100000 --repeats 5 --base /tmp/bs-old --code /tmp/bs-new
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUN = {
    "ingest": """
import json, sys, time
from undercurve.ingest import ingest_to
t0 = time.perf_counter()
c = ingest_to(sys.argv[1], sys.argv[2] + "/kept.parquet", sys.argv[2] + "/aside.parquet")
print(json.dumps({"wall_s": time.perf_counter() - t0, "rows_in": c.rows_in, "kept": c.kept, "set_aside": c.set_aside}))
""",
    "decontaminate": """
import json, sys, time
from pathlib import Path
import polars as pl
from undercurve.decontam import Decontaminator
from undercurve.io import ParquetSink, iter_parquet
from undercurve.decontam import REMOVED_SCHEMA
src, out = Path(sys.argv[1]), Path(sys.argv[2])
spec = {"name": "bench", "path": str(src.parent / "benchmark.jsonl"), "text_field": "problem", "id_field": "id"}
settings = {"suites": [spec], "embedding": False, "ngram_n": 13, "cache_dir": str(out / "index")}
Decontaminator(settings)  # the benchmark's index, built and cached before the clock
t0 = time.perf_counter()
n = 0
with Decontaminator(settings) as filt, ParquetSink(out / "kept.parquet", pl.read_parquet_schema(src)) as kept, \\
        ParquetSink(out / "aside.parquet", REMOVED_SCHEMA) as aside:
    for batch in iter_parquet(src, 8192):
        k, r = filt.filter(batch)
        kept.write(k)
        aside.write(r)
        n += batch.height
    kept.commit(), aside.commit()
print(json.dumps({"wall_s": time.perf_counter() - t0, "rows_in": n, "kept": kept.rows, "set_aside": aside.rows}))
""",
}


def corpus(folder: Path, rows: int) -> Path:
    """``bench_scale``'s corpus (the one its floor run ingests)."""
    sys.path.insert(0, str(HERE))
    from bench_scale import write_corpus

    write_corpus(folder, rows, 2100)
    return folder / "corpus.jsonl"


def once(stage: str, code: Path, src: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run([sys.executable, "-c", RUN[stage], str(src), str(out)],
                          cwd=code, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the baseline checkout")
    ap.add_argument("--code", type=Path, default=HERE.parent, help="the checkout under test (default: this one)")
    ap.add_argument("--stage", choices=sorted(RUN), default="ingest")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import polars as pl

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp = Path(tmp)
        src = corpus(tmp, a.rows)
        if a.stage == "decontaminate":  # its input: the corpus ingested once
            once("ingest", a.base.resolve(), src, tmp)
            src = tmp / "kept.parquet"
        outs = {name: tmp / name for name in ("base", "code")}
        for o in outs.values():
            o.mkdir()
        times: dict[str, list[float]] = {"base": [], "code": []}
        for i in range(a.repeats):
            for name, code in (("base", a.base), ("code", a.code)) if i % 2 == 0 else (("code", a.code), ("base", a.base)):
                r = once(a.stage, code.resolve(), src, outs[name])
                times[name].append(r["wall_s"])
                print(f"{name} run {i + 1}: {json.dumps(r)}  load {os.getloadavg()[0]:.2f}", flush=True)
        same = all(pl.read_parquet(outs["base"] / f).equals(pl.read_parquet(outs["code"] / f))
                   for f in ("kept.parquet", "aside.parquet"))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{a.stage}, {a.rows:,} rows, {a.repeats} runs each: base {a.base} median {med['base']:.2f} s "
          f"(min {min(times['base']):.2f}), code {a.code} median {med['code']:.2f} s (min {min(times['code']):.2f}); "
          f"code / base = {med['code'] / med['base']:.2f}; same rows written: {same}")


if __name__ == "__main__":
    main()

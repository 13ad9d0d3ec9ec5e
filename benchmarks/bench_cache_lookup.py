"""One block's lookup in the result cache: ``ResultCache.lookup`` (a key filter the Parquet
reader applies before decoding the other columns) against a semi-join of the same parts on
the block's keys (what the merges did before), each in a fresh process for its peak RSS.

The parts are real cache parts (``ResultCache.write``): a main table of 12 float columns and a
side table ``rollouts`` with 2 rows of text per key (SYNTHETIC, ~``--chars`` characters each,
distinct per key, like rollouts). Both variants must return the same rows; the script checks.

    .venv/bin/python benchmarks/bench_cache_lookup.py --keys 400000 --block 65536
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def build(folder: Path, keys: int, parts: int, chars: int) -> None:
    import numpy as np
    import polars as pl

    from undercurve.cache import KEY, ResultCache

    rng = np.random.default_rng(0)
    cache = ResultCache.open(folder, "bench", {})
    every = [f"{x:032x}" for x in rng.integers(0, 2**62, keys)]
    for j in range(parts):
        ks = every[j::parts]
        main = pl.DataFrame({KEY: ks, **{f"c{i}": rng.random(len(ks)) for i in range(12)}})
        side = pl.DataFrame({KEY: [k for k in ks for _ in range(2)], "rollout": [r for _ in ks for r in range(2)],
                             "text": [f"{k}-{r} " * (chars // 35) for k in ks for r in range(2)]})
        cache.write(ks, main, {"rollouts": side})


def measure(folder: Path, variant: str, block: int) -> dict:
    import numpy as np
    import polars as pl

    from bench_data_plane import _peak_mib, _rss_mib
    from undercurve.cache import KEY, ResultCache

    cache = ResultCache(next(p for p in (folder / "bench").iterdir() if p.is_dir()))
    parts = cache.parts()
    every = pl.concat([pl.read_parquet(p, columns=[KEY]) for p in parts])[KEY]
    keys = pl.Series(KEY, np.random.default_rng(1).choice(every.to_numpy(), block, replace=False))

    def semi_join() -> pl.DataFrame:  # the merges before: the block's keys joined to every part
        wanted = pl.LazyFrame({KEY: keys}).unique()
        main = (pl.scan_parquet(parts, include_file_paths="part").join(wanted, on=KEY, how="semi", maintain_order="left")
                .unique(KEY, keep="first", maintain_order=True).collect())
        owner = main.lazy().select(KEY, pl.col("part").str.replace(r"\.parquet$", ".rollouts.parquet"))
        return (pl.scan_parquet([cache.side_path(p, "rollouts") for p in parts], include_file_paths="part")
                .join(wanted, on=KEY, how="semi", maintain_order="left")
                .join(owner, on=[KEY, "part"], how="semi", maintain_order="left").collect())

    run = {"semi_join": semi_join, "lookup": lambda: ResultCache.lookup(parts, keys, "rollouts")}[variant]
    floor = _rss_mib()
    t = time.perf_counter()
    rows = run()
    wall = time.perf_counter() - t
    digest = rows.drop("part").sort(KEY, "rollout").hash_rows().sum()
    return {"variant": variant, "wall_s": wall, "peak_mib": _peak_mib(), "floor_mib": floor, "rows": rows.height,
            "digest": int(digest)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=400_000)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--block", type=int, default=65_536)
    ap.add_argument("--chars", type=int, default=2_000, help="characters per side-table text")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(Path(a.child[0]), a.child[1], int(a.child[2]))))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-cache-lookup-"))
    t = time.perf_counter()
    build(folder, a.keys, a.parts, a.chars)
    print(f"{a.keys:,} keys in {a.parts} parts, 2 side rows of ~{a.chars} chars per key, built in "
          f"{time.perf_counter() - t:.1f} s; one block of {a.block:,} keys, each variant in a fresh process")
    out = {}
    for variant in ("semi_join", "lookup"):
        proc = subprocess.run([sys.executable, __file__, "--child", str(folder), variant, str(a.block)],
                              capture_output=True, text=True, check=True)
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["semi_join"]["digest"] == out["lookup"]["digest"], "the variants returned different rows"
    print("| variant | wall s | peak RSS MiB | peak - floor MiB | rows |\n|---|---|---|---|---|")
    for r in out.values():
        print(f"| {r['variant']} | {r['wall_s']:.2f} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['floor_mib']:.0f} | {r['rows']:,} |")
    s, lk = out["semi_join"], out["lookup"]
    print(f"lookup / semi-join: wall {lk['wall_s'] / s['wall_s']:.2f}x, peak over floor "
          f"{(lk['peak_mib'] - lk['floor_mib']) / (s['peak_mib'] - s['floor_mib']):.2f}x (same rows)")
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

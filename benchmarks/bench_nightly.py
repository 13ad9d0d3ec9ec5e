"""Nightly rerun cost and whole-run memory of the real curate flow (issue 15), in one run.

Every curate run below is the real CLI (``undercurve run configs/... --flow curate --set ...``)
in its own child process: Prefect flow, every stage, the registry; nothing is mocked. The
corpora are the demo's generator (``undercurve.demo``, graded arithmetic problems in the
AM-DeepSeek-R1 chat format, every sixth row GSM8K format, two planted benchmark leaks, three
broken lines and a duplicate id), written as local JSONL; the demo's GSM8K-style benchmark is
given to the contamination filter through ``decontam.local_paths``, so everything is offline.

1. Nightly ratio (target <= 0.15). Night 1: a curate run over N rows in a fresh workdir.
   Night 2: the SAME workdir (so the same content-keyed cache, ``<workdir>/cache``), a NEW run
   name, the night-1 corpus shuffled plus ``--new-frac`` x N new rows from the same generator.
   Wall time of each CLI process, night 2 / night 1, and the score artifact's
   ``rows_computed`` / ``rows_reused`` from the registry (``artifacts.meta_json``). Done for
   the real small model (SmolLM2-135M-Instruct, ``scoring.mode: probe``) and for the tiny
   random model (``configs/tiny.yaml``), where fixed costs dominate. ``pass_rate.enabled:
   false`` in both: CPU rollouts of a real model are ~57 tokens/s (benchmarks/results/rollouts.md),
   too slow at this size. Strategies random, length, eas.
2. Whole-run peak RSS at ``--rss-rows`` (default 1,000 and 8,000): a curate run of the tiny
   model (``scoring.mode: plain``, pass rate off), each in a fresh workdir. Two readings: the
   ``ru_maxrss`` of the CLI process from ``os.wait4`` (exact; the largest single process of its
   tree: the flow process), and the peak of the SUM of RSS over the CLI process and all its
   descendants (the ephemeral Prefect server, tokenizer workers), polled with psutil every
   0.2 s (a spike shorter than that can be missed).

Models are converted / built once (outside every timing) and given to the runs as a folder
(``model.path`` = the converted SmolLM2 folder; ``model.tiny_dir`` for the tiny model, whose
tokenizer is trained on the 48-row demo corpus, as configs/tiny.yaml builds it).

Prefect: unless PREFECT_API_URL is set in the environment, each CLI process starts its own
ephemeral Prefect server (the default, as a cron-started nightly would): that start-up is inside
every measured wall time, equally for both nights. The script prints which.

Usage (the results in benchmarks/results/nightly.md):
    .venv/bin/python -u benchmarks/bench_nightly.py --rows 100 --tiny-rows 1000 --rss-rows 1000 8000 \
        --smollm2 runs/models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "undercurve"
STRATEGIES = "[random, length, eas]"
STAGES = ("ingest", "decontaminate", "length_cap", "score", "features", "select")


# ---------------------------------------------------------------------------- inputs
def write_corpora(out: Path, n: int, new_frac: float, seed: int = 0) -> dict:
    """Night 1: demo rows 0..n-1 plus the demo's extra lines (two planted benchmark leaks, the
    broken lines, a duplicate id); night 2: those plus rows n..n+new-1 of the same generator,
    shuffled. Rows are made as ``write_demo_inputs`` makes its corpus (same generator, seed and
    formats); the benchmark file and the extra lines come from ``write_demo_inputs`` at its
    default size: at a size above ~400 rows it never returns (its benchmark wants 5 one-digit
    sums the corpus does not hold, and there are only 81), see benchmarks/results/nightly.md."""
    from undercurve.demo import _am_record, _gsm8k_record, _item, write_demo_inputs

    n_new = round(n * new_frac)
    small, bench = write_demo_inputs(out / "demo48", size=48, seed=seed)
    extra = [ln for ln in small.read_text().splitlines()
             if ln.strip() and not ln.startswith('{"id": "demo-')]  # leaks, broken lines (no demo rows)
    extra.append(extra[0])  # a duplicate id (of leak-0), as the demo appends one
    rng = random.Random(seed)
    items = [_item(i % 5, rng) for i in range(n + n_new)]
    rows = [json.dumps(_gsm8k_record(f"demo-{i}", p) if i % 6 == 5 else _am_record(f"demo-{i}", p))
            for i, p in enumerate(items)]
    old, new = rows[:n], rows[n:]
    night1 = old + extra
    night2 = old + new + extra
    random.Random(seed + 1).shuffle(night2)
    out.mkdir(parents=True, exist_ok=True)
    p1, p2 = out / "night1.jsonl", out / "night2.jsonl"
    p1.write_text("\n".join(night1) + "\n")
    p2.write_text("\n".join(night2) + "\n")
    # level-0 problems repeat (81 distinct one-digit sums), so some "new" rows are word for word
    # an old row under a new id: the cache knows them (see distinct_new_contents)
    return {"night1": str(p1), "night2": str(p2), "benchmark": str(bench), "old_rows": len(old),
            "new_rows": len(new), "lines_night1": len(night1), "lines_night2": len(night2)}


def distinct_new_contents(night1_samples: Path, night2_samples: Path) -> int:
    """Contents (prompt, response, answer) night 2's scored samples have and night 1's do not."""
    import polars as pl

    cols = ["prompt", "response", "answer"]
    a = pl.read_parquet(night1_samples, columns=cols).unique()
    b = pl.read_parquet(night2_samples, columns=cols).unique()
    return b.join(a, on=cols, how="anti", nulls_equal=True).height


def prepare_models(models: Path, which: set[str]) -> dict:
    """Convert SmolLM2 / build the tiny model once, in a child process (not timed)."""
    code = (
        "import sys, json, tempfile\n"
        "from pathlib import Path\n"
        "models, which = Path(sys.argv[1]), sys.argv[2].split(',')\n"
        "out = {}\n"
        "if 'smollm2' in which:\n"
        "    from undercurve.models import convert_smollm2\n"
        "    out['smollm2'] = str(convert_smollm2(models / 'smollm2-135m-instruct'))\n"
        "if 'tiny' in which:\n"
        "    from undercurve.demo import tokenizer_texts, write_demo_inputs\n"
        "    from undercurve.tiny_model import build_tiny_qwen2\n"
        "    corpus, _ = write_demo_inputs(Path(tempfile.mkdtemp()), 48, 0)\n"
        "    out['tiny'] = str(build_tiny_qwen2(models / 'tiny-qwen2', tokenizer_texts(corpus)))\n"
        "print(json.dumps(out))\n")
    models.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", code, str(models), ",".join(sorted(which))], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"model preparation failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- one CLI run
def _tree_rss(proc) -> tuple[int, int]:
    """(RSS of the process, RSS summed over it and every descendant), bytes."""
    import psutil

    try:
        own = proc.memory_info().rss
    except psutil.Error:
        return 0, 0
    total = own
    try:
        children = proc.children(recursive=True)
    except psutil.Error:
        children = []
    for c in children:
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return own, total


def cli_run(config: str, sets: dict, log: Path, poll_s: float = 0.2) -> dict:
    """One ``undercurve run CONFIG --flow curate`` process: wall, exit code, peak RSS."""
    import psutil

    cmd = [str(CLI), "run", config, "--flow", "curate"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": os.environ.get(
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"}
    peak = {"own": 0, "tree": 0}
    stop = threading.Event()
    with open(log, "w") as fh:
        t_start = time.time()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        ps = psutil.Process(p.pid)

        def poll() -> None:
            while not stop.is_set():
                own, tree = _tree_rss(ps)
                peak["own"], peak["tree"] = max(peak["own"], own), max(peak["tree"], tree)
                stop.wait(poll_s)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"curate run failed (exit {p.returncode}); log {log}:\n{log.read_text()[-4000:]}")
    return {"wall_s": wall, "t_start": t_start, "maxrss_mib": ru.ru_maxrss / 1024,
            "poll_own_peak_mib": peak["own"] / 2**20, "poll_tree_peak_mib": peak["tree"] / 2**20,
            "user_s": ru.ru_utime, "sys_s": ru.ru_stime}


def run_facts(workdir: Path, run_name: str, t_start: float) -> dict:
    """From the registry: status, the score artifact's rows_computed / rows_reused, and a
    timeline (seconds from the CLI's start to the run's start, to each stage's artifact, to
    the run's end)."""
    from undercurve.registry import Registry

    reg = Registry(workdir / "registry.duckdb")
    run = reg.query("SELECT run_id, status, started_at, finished_at FROM runs WHERE run_name = ? "
                    "ORDER BY started_at DESC LIMIT 1", [run_name]).to_dicts()[0]
    arts = reg.query("SELECT stage, kind, rows, created_at, meta_json FROM artifacts WHERE run_id = ? "
                     "ORDER BY created_at", [run["run_id"]]).to_dicts()

    def ts(x: datetime) -> float:
        return x.timestamp() - t_start

    score = next((a for a in arts if a["stage"] == "score" and a["kind"] == "scores"), None)
    meta = json.loads(score["meta_json"]) if score else {}
    timeline = {"flow_started": ts(run["started_at"])}
    for st in STAGES:
        done = [a for a in arts if a["stage"] == st and a["kind"] != "set_aside"]
        if done:
            timeline[st] = ts(max(a["created_at"] for a in done))
    timeline["flow_finished"] = ts(run["finished_at"])
    shards = reg.query("SELECT count(*) AS n, sum(seconds) AS s FROM shard_runs WHERE run_id = ? AND stage = 'score'",
                       [run["run_id"]]).to_dicts()[0]
    rows = {a["stage"]: a["rows"] for a in arts if a["kind"] in ("samples", "scores")}
    return {"status": run["status"], "rows_computed": meta.get("rows_computed"), "rows_reused": meta.get("rows_reused"),
            "score_shards": shards["n"], "score_shard_s": shards["s"] or 0.0, "timeline": timeline,
            "rows_per_stage": rows,
            "length_cap_samples": str(workdir / run_name / "length_cap" / "samples.parquet")}


def _sets(workdir: Path, run_name: str, corpus: str, bench: str, model: dict, mode: str, shard_size: int,
          budget: int) -> dict:
    return {"workdir": str(workdir), "run_name": run_name, "corpus.source": corpus,
            "decontam.local_paths": "{gsm8k: %s}" % bench, **model, "scoring.mode": mode,
            "scoring.shard_size": shard_size, "pass_rate.enabled": "false", "selection.strategies": STRATEGIES,
            "selection.budget": budget}


def _fmt_timeline(tl: dict) -> str:
    prev, parts = 0.0, []
    for k, v in tl.items():
        parts.append(f"{k} +{v - prev:.1f}")
        prev = v
    return ", ".join(parts)


def nightly(base: Path, label: str, config: str, model: dict, n: int, new_frac: float, mode: str,
            shard_size: int, budget: int) -> dict:
    work = base / f"nightly-{label}"
    inputs = write_corpora(base / f"inputs-{label}-{n}", n, new_frac)
    out = {"label": label, "config": config, "rows": n, "mode": mode, "shard_size": shard_size, **inputs}
    for night, corpus in (("night1", inputs["night1"]), ("night2", inputs["night2"])):
        name = f"bench-{night}"
        r = cli_run(config, _sets(work, name, corpus, inputs["benchmark"], model, mode, shard_size, budget),
                    base / f"{label}-{night}.log")
        r.update(run_facts(work, name, r["t_start"]))
        out[night] = r
        print(json.dumps({"label": label, "night": night, **{k: v for k, v in r.items() if k != "t_start"}}),
              flush=True)
    out["ratio"] = out["night2"]["wall_s"] / out["night1"]["wall_s"]
    out["new_contents"] = distinct_new_contents(Path(out["night1"]["length_cap_samples"]),
                                                Path(out["night2"]["length_cap_samples"]))
    out["cache_mib"] = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file()) / 2**20
    return out


def rss(base: Path, rows: int, model: dict) -> dict:
    work = base / f"rss-{rows}"
    inputs = write_corpora(base / f"inputs-rss-{rows}", rows, 0.0)
    r = cli_run("configs/tiny.yaml", _sets(work, "bench-rss", inputs["night1"], inputs["benchmark"], model, "plain",
                                           64, max(16, rows // 10)), base / f"rss-{rows}.log")
    r.update(run_facts(work, "bench-rss", r["t_start"]))
    r["rows"] = rows
    print(json.dumps({"rss_rows": rows, **{k: v for k, v in r.items() if k != "t_start"}}), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return r


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100, help="night-1 rows, SmolLM2 (0: skip)")
    ap.add_argument("--tiny-rows", type=int, default=1000, help="night-1 rows, tiny model (0: skip)")
    ap.add_argument("--new-frac", type=float, default=0.10, help="new rows on night 2, as a fraction of N")
    ap.add_argument("--rss-rows", type=int, nargs="*", default=[1000, 8000], help="whole-run RSS (tiny, plain)")
    ap.add_argument("--shard-size", type=int, default=64, help="scoring.shard_size (the library default)")
    ap.add_argument("--models", type=Path, help="where to convert / build the models (default: under --base)")
    ap.add_argument("--smollm2", type=Path, help="an already converted SmolLM2 folder to use instead of converting "
                    "(e.g. runs/models/smollm2-135m-instruct of `make demo`); only read")
    ap.add_argument("--base", type=Path, help="work folder (default: a new /tmp/bench-nightly-*, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep --base")
    ap.add_argument("--summary", type=Path, help="also write the measurements as JSON here (bench_targets.py)")
    a = ap.parse_args()
    base = a.base or Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    base.mkdir(parents=True, exist_ok=True)
    models_dir = a.models or base / "models"
    print(f"# bench_nightly {datetime.now().isoformat(timespec='seconds')}", flush=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"code {rev}; {os.cpu_count()} CPUs; load average at start {os.getloadavg()}", flush=True)
    print("prefect: " + (f"PREFECT_API_URL={os.environ['PREFECT_API_URL']} (a running server, shared)"
                         if os.environ.get("PREFECT_API_URL") else
                         "PREFECT_API_URL unset: each CLI process starts its own ephemeral Prefect server "
                         "(inside every wall time)"), flush=True)
    which = ({"smollm2"} if a.rows and not a.smollm2 else set()) | ({"tiny"} if a.tiny_rows or a.rss_rows else set())
    t0 = time.perf_counter()
    models = prepare_models(models_dir, which)
    if a.smollm2:
        models["smollm2"] = str(a.smollm2.resolve())
    print(f"models ready in {time.perf_counter() - t0:.1f}s (not timed below): {models}", flush=True)
    loads = {"start": os.getloadavg()}
    results: dict = {"nightly": [], "rss": []}
    try:
        if a.rows:
            results["nightly"].append(nightly(base, "smollm2", "configs/demo.yaml", {"model.path": models["smollm2"]},
                                              a.rows, a.new_frac, "probe", a.shard_size, max(12, a.rows // 10)))
            loads["after smollm2"] = os.getloadavg()
        if a.tiny_rows:
            results["nightly"].append(nightly(base, "tiny", "configs/tiny.yaml",
                                              {"model.path": "tiny", "model.tiny_dir": str(models_dir)},
                                              a.tiny_rows, a.new_frac, "probe", a.shard_size, max(16, a.tiny_rows // 10)))
            loads["after tiny"] = os.getloadavg()
        for rows in a.rss_rows:
            results["rss"].append(rss(base, rows, {"model.path": "tiny", "model.tiny_dir": str(models_dir)}))
        loads["end"] = os.getloadavg()
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    report(results, loads)
    if a.summary:
        a.summary.write_text(json.dumps({**results, "loads": loads}, default=str))


def report(results: dict, loads: dict) -> None:
    print()
    print("load average (1, 5, 15 min): " + "; ".join(f"{k} {v[0]:.2f} {v[1]:.2f} {v[2]:.2f}" for k, v in loads.items()))
    if results["nightly"]:
        print()
        print("| model (scoring mode) | night 1 rows (+ new) | night 1 wall s | night 2 wall s | night 2 / night 1 | "
              "night 1 rows_computed / reused | night 2 rows_computed / reused | distinct new contents | "
              "night 1 score shard s | night 2 score shard s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results["nightly"]:
            n1, n2 = r["night1"], r["night2"]
            print(f"| {r['label']} ({r['mode']}) | {r['old_rows']:,} (+{r['new_rows']:,}) | {n1['wall_s']:.1f} | "
                  f"{n2['wall_s']:.1f} | **{r['ratio']:.3f}** | {n1['rows_computed']} / {n1['rows_reused']} | "
                  f"{n2['rows_computed']} / {n2['rows_reused']} | {r['new_contents']} | {n1['score_shard_s']:.1f} | "
                  f"{n2['score_shard_s']:.1f} |")
        print()
        print("Timeline of each run, seconds since the previous mark (CLI start -> flow_started: imports, "
              "settings, the ephemeral Prefect server; ingest: prepare_inputs (model resolution, imports) + "
              "ingest; each stage: until its artifact is recorded; select -> flow_finished: finish_run "
              "(run summary, report) and retention; exit: flow_finished -> process exit, server stop):")
        for r in results["nightly"]:
            for night in ("night1", "night2"):
                x = r[night]
                print(f"- {r['label']} {night} (wall {x['wall_s']:.1f}, exit "
                      f"+{x['wall_s'] - x['timeline']['flow_finished']:.1f}): {_fmt_timeline(x['timeline'])}")
        for r in results["nightly"]:
            print(f"- {r['label']}: cache {r['cache_mib']:.1f} MiB after both nights; "
                  f"rows per stage night 2: {r['night2']['rows_per_stage']}")
    if results["rss"]:
        print()
        print("| rows (tiny, plain) | wall s | CLI process ru_maxrss MiB (wait4) | CLI process polled peak MiB | "
              "process tree polled peak MiB (sum) | rows scored |")
        print("|---|---|---|---|---|---|")
        for r in results["rss"]:
            print(f"| {r['rows']:,} | {r['wall_s']:.1f} | {r['maxrss_mib']:.0f} | {r['poll_own_peak_mib']:.0f} | "
                  f"{r['poll_tree_peak_mib']:.0f} | {r['rows_computed']} |")
    print()
    for r in results["nightly"]:
        print(f"nightly ratio, {r['label']} ({r['mode']}), {r['old_rows']:,} rows + {r['new_rows']:,} new: "
              f"{r['ratio']:.3f} (target <= 0.15: {'met' if r['ratio'] <= 0.15 else 'NOT met'}); night 2 scored "
              f"{r['night2']['rows_computed']} rows, reused {r['night2']['rows_reused']}")
    if len(results["rss"]) >= 2:
        lo, hi = results["rss"][0], results["rss"][-1]
        g, gt = hi["maxrss_mib"] - lo["maxrss_mib"], hi["poll_tree_peak_mib"] - lo["poll_tree_peak_mib"]
        ok = g * 2**20 <= 100e6 and gt * 2**20 <= 100e6
        print(f"whole curate run peak RSS {lo['rows']:,} -> {hi['rows']:,} rows: flow process {lo['maxrss_mib']:.0f} -> "
              f"{hi['maxrss_mib']:.0f} MiB ({g:+.0f} MiB), process tree {lo['poll_tree_peak_mib']:.0f} -> "
              f"{hi['poll_tree_peak_mib']:.0f} MiB ({gt:+.0f} MiB) (target: grows <= 100 MB: {'met' if ok else 'NOT met'})")


if __name__ == "__main__":
    main()

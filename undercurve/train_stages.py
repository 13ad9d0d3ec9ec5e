"""Train/evaluate stages: identical ms-swift SFT per selection, evalscope Pass@1 of the
top checkpoints, and the paper's Table 3 comparison. Plain functions (no Prefect)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from undercurve.run import RunContext

log = logging.getLogger("undercurve")


def find_selections(ctx: RunContext, curate_run_id: str | None = None) -> tuple[str, dict[str, str]]:
    """The ms-swift JSONL of each strategy from a curate run (default: the newest completed
    one with this run name) -> (curate run id, {strategy: path})."""
    reg = ctx.registry
    if curate_run_id is None:
        runs = reg.query("SELECT run_id FROM runs WHERE flow = 'curate' AND run_name = ? AND status = 'COMPLETED' "
                         "ORDER BY finished_at DESC LIMIT 1", [ctx.settings.run_name])
        if runs.height == 0:
            raise LookupError(f"no completed curate run named {ctx.settings.run_name!r} in {ctx.registry_path}; "
                              "run the curate flow first (or the pipeline flow)")
        curate_run_id = runs["run_id"][0]
    arts = reg.query("SELECT kind, path FROM artifacts WHERE run_id = ? AND kind LIKE 'swift_jsonl:%'", [curate_run_id])
    found = {k.split(":", 1)[1]: p for k, p in arts.iter_rows()}
    if not found:
        raise LookupError(f"curate run {curate_run_id} exported no selection")
    return curate_run_id, found


def resolve_benchmarks(ctx: RunContext, demo_benchmark: str | None) -> dict[str, str | None]:
    """Benchmark name -> directory evalscope reads (``test.jsonl`` of problem/answer), or None
    for the hub. Local files are converted; "demo" uses the demo's held-out problems."""
    from undercurve.answers import gsm8k_final
    from undercurve.evaluate import write_local_benchmark

    out: dict[str, str | None] = {}
    for name, value in ctx.settings.eval.benchmarks.items():
        if value is None:
            out[name] = None
            continue
        target = ctx.stage_dir("eval_data") / name
        if value == "demo":
            if demo_benchmark is None:
                raise ValueError(f"eval benchmark {name}: 'demo' needs corpus.source: demo")
            recs = [json.loads(line) for line in Path(demo_benchmark).read_text().splitlines() if line.strip()]
            records = [{"problem": r["question"], "answer": gsm8k_final(r["answer"])} for r in recs]
        elif Path(value).is_dir():
            out[name] = value
            continue
        else:
            records = pl.read_parquet(value).to_dicts() if value.endswith(".parquet") else [
                json.loads(line) for line in Path(value).read_text().splitlines() if line.strip()]
            bad = [r for r in records if not r.get("problem") or r.get("answer") in (None, "")]
            if bad:
                raise ValueError(f"eval benchmark {name}: {len(bad)} records without problem/answer in {value}")
        out[name] = str(write_local_benchmark(records, target))
    return out


def _weights(checkpoints) -> list[Path]:
    return sorted(p for c in checkpoints for p in Path(c).glob("*.safetensors"))


def train_strategy(ctx: RunContext, strategy: str, jsonl: str, model: str, progress=None) -> dict:
    """SFT on one selection. The output folder is keyed by what determines the result (the
    selection's content, the model, the SFT settings), so a finished SFT is reused only for
    the same inputs, and only after its checkpoint weights match the hashes recorded when it
    finished; ``overwrite`` then only ever replaces this key's own folder."""
    from undercurve.io import file_sha256, fingerprint, outputs_verified, write_marker
    from undercurve.train import load_sft_result, run_sft

    sft = ctx.settings.train.sft.model_dump()
    key = fingerprint({"data": file_sha256(jsonl), "model": str(model), "sft": sft})
    out_dir = ctx.stage_dir("train") / strategy / key
    marker = out_dir / "sft.verified"
    reused = (out_dir / "sft_result.json").exists() and \
        outputs_verified(marker, key, _weights(load_sft_result(out_dir).checkpoints))
    if reused:
        res = load_sft_result(out_dir)
        log.info("train %s: finished earlier and verified, %d checkpoints in %s", strategy, len(res.checkpoints), out_dir)
    else:
        if marker.exists():
            log.warning("train %s: checkpoints in %s fail their recorded hashes: training again", strategy, out_dir)
        log.info("train %s: ms-swift SFT on %s (log: %s)", strategy, jsonl, out_dir / "sft.log")
        from undercurve.progress import SFT_STEP, from_lines

        res = run_sft(jsonl, model, out_dir, {**sft, "overwrite": True},
                      on_line=from_lines(SFT_STEP, progress) if progress else None)
        write_marker(marker, key, _weights(res.checkpoints))
    top = res.top_k(ctx.settings.train.top_k_checkpoints)
    rank = {str(c): i + 1 for i, c in enumerate(top)}
    rows = pl.DataFrame([{"strategy": strategy, "checkpoint": Path(c).name, "step": int(Path(c).name.rsplit("-", 1)[-1]),
                          "val_loss": res.val_loss.get(str(c)), "path": str(c)} for c in res.checkpoints],
                        schema={"strategy": pl.Utf8, "checkpoint": pl.Utf8, "step": pl.Int64, "val_loss": pl.Float64, "path": pl.Utf8})
    reg = ctx.registry
    reg.add_rows("checkpoints", ctx.run_id, rows)
    data = _artifact_id(reg, jsonl, "swift_jsonl:%")  # lineage: checkpoint -> the selection it learnt
    for c in res.checkpoints:
        reg.add_artifact(ctx.run_id, "train", f"checkpoint:{strategy}", c, None, parents=[data] if data else [],
                         meta={"val_loss": res.val_loss.get(str(c)), "rank": rank.get(str(c))})
    return {"strategy": strategy, "out_dir": str(out_dir), "top": [str(c) for c in top], "log": str(res.log_path)}


def evaluate_checkpoint(ctx: RunContext, strategy: str, checkpoint: str, rank: int, model_label: str,
                        benchmarks: dict[str, str | None], progress=None) -> list[dict]:
    """Average Pass@1 with N repeats on every benchmark, recorded in the registry."""
    from undercurve.evaluate import run_eval

    e = ctx.settings.eval
    work_dir = ctx.stage_dir("eval") / strategy / Path(checkpoint).name
    log.info("eval %s %s (rank %d): %s, %d repeats (log: %s)", strategy, Path(checkpoint).name, rank,
             ", ".join(benchmarks), e.repeats, work_dir / "eval.log")
    from undercurve.progress import EVAL_SAMPLES, from_lines

    res = run_eval(checkpoint, benchmarks, e.repeats, e.settings, work_dir=work_dir,
                   on_line=from_lines(EVAL_SAMPLES, progress) if progress else None)
    rows = res.to_rows(model=model_label, strategy=strategy, checkpoint_rank=rank)
    frame = pl.DataFrame([{k: r[k] for k in ("model", "strategy", "checkpoint_rank", "benchmark", "pass1_mean",
                                             "pass1_std", "n_repeats")} | {"checkpoint": checkpoint} for r in rows])
    with ctx.registry.batch() as reg:
        reg.add_rows("eval_results", ctx.run_id, frame)
        ckpt = _artifact_id(reg, checkpoint, "checkpoint:%")  # lineage: eval result -> checkpoint
        for r in rows:
            reg.add_artifact(ctx.run_id, "eval", f"eval_report:{strategy}:{r['benchmark']}", r["report_path"], None,
                             parents=[ckpt] if ckpt else [],
                             meta={"checkpoint": checkpoint, "rank": rank, "pass1": r["pass1_mean"]})
    return rows


def _artifact_id(reg, path: str | Path, kind_like: str) -> str | None:
    """The newest registered artifact of this file and kind (for lineage across runs)."""
    found = reg.query("SELECT artifact_id FROM artifacts WHERE path = ? AND kind LIKE ? ORDER BY created_at DESC LIMIT 1",
                      [str(Path(path).resolve()), kind_like])
    return found["artifact_id"][0] if found.height else None


def strategy_costs(ctx: RunContext, curate_run_id: str, strategies: list[str]) -> pl.DataFrame:
    """What each strategy's signal cost in its curate run: the model stages it needs (EAS:
    scoring; pass rate: rollouts; random and length: none), their compute seconds in that run
    and the tokens the model processed. The paper's efficiency claim, as numbers."""
    from undercurve.strategies import make

    found = ctx.registry.query("SELECT stage, meta_json FROM artifacts WHERE run_id = ? AND kind IN ('scores', 'pass_rates')",
                               [curate_run_id])
    cost = {stage: json.loads(meta or "{}") for stage, meta in found.iter_rows()}
    options = ctx.settings.selection.options
    rows = []
    for name in strategies:
        stages = sorted(make(name, options.get(name)).stages())
        rows.append({"strategy": name, "model_stages": "+".join(stages) or "none",
                     "compute_seconds": sum(cost.get(st, {}).get("compute_seconds", 0.0) for st in stages),
                     "tokens": sum(cost.get(st, {}).get("tokens", 0) for st in stages)})
    return pl.DataFrame(rows, schema={"strategy": pl.Utf8, "model_stages": pl.Utf8, "compute_seconds": pl.Float64,
                                      "tokens": pl.Int64})


def cost_markdown(costs: pl.DataFrame) -> str:
    lines = ["## What each strategy's signal cost (curation)", "",
             "| strategy | model stages | compute seconds (this curate run) | tokens (scored or generated) |",
             "|---|---|---|---|"]
    lines += [f"| {r['strategy']} | {r['model_stages']} | {r['compute_seconds']:.1f} | {r['tokens']:,} |"
              for r in costs.iter_rows(named=True)]
    return "\n".join(lines) + "\n\nSeconds are 0 where the curate run reused results of an earlier run; tokens do not depend on reuse."


def comparison_report(ctx: RunContext, rows: list[dict], not_run: dict[str, str] | None = None,
                      costs: pl.DataFrame | None = None) -> dict:
    """Table 3 with intervals: a summary (Pass@1 and the difference to random, each with a
    bootstrap 95% interval; the base model as a row), then the per checkpoint and benchmark
    detail. Every strategy of the curate run appears: those without results with the reason."""
    from undercurve.io import write_text_atomic
    from undercurve.report import comparison_table, detail_markdown, pass1_summary, summary_markdown, write_report

    table = comparison_table(pl.DataFrame(rows).drop("table", strict=False))
    summary = pass1_summary(rows)
    md_path, csv_path = write_report(table, ctx.stage_dir("report"))
    summary_csv = ctx.stage_dir("report") / "summary.csv"
    summary.write_csv(summary_csv)
    parts = ["# Strategy comparison: Average Pass@1 (%)", summary_markdown(summary), detail_markdown(table)]
    if costs is not None and costs.height:
        parts.append(cost_markdown(costs))
        costs.write_csv(ctx.stage_dir("report") / "costs.csv")
    markdown = "\n\n".join(parts) + "\n"
    if not_run:
        markdown += "\n\nStrategies without a result:\n\n" + "\n".join(f"- `{s}`: {why}" for s, why in not_run.items()) + "\n"
    write_text_atomic(markdown, md_path)
    with ctx.registry.batch() as reg:
        reg.add_artifact(ctx.run_id, "report", "comparison_md", md_path, table.height)
        reg.add_artifact(ctx.run_id, "report", "comparison_csv", csv_path, table.height)
        reg.add_artifact(ctx.run_id, "report", "pass1_summary_csv", summary_csv, summary.height)
    return {"markdown": markdown, "md_path": str(md_path), "csv_path": str(csv_path),
            "summary": summary.to_dicts(), "costs": [] if costs is None else costs.to_dicts()}

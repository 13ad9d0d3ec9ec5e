"""Before the first stage: the curate stages' folders cleared of an earlier run's outputs, the
corpus and the model resolved."""

from __future__ import annotations

import logging
from pathlib import Path

from undercurve.run import RunContext

log = logging.getLogger("undercurve")


CURATE_STAGES = ("ingest", "decontaminate", "length_cap", "score", "pass_rate", "features", "select")


def clear_stale_outputs(ctx: RunContext) -> int:
    """Remove the final files an earlier run of this name left in the curate stage folders,
    so nothing of it can be mistaken for this run's. Sub-folders (the shard caches) stay:
    they are reused only after their fingerprint and content hash are verified."""
    n = 0
    for stage in CURATE_STAGES:
        d = ctx.run_dir / stage
        for f in (d.iterdir() if d.is_dir() else []):
            if f.is_file():
                f.unlink()
                n += 1
    if n:
        log.info("removed %d output files of an earlier run of %s", n, ctx.run_dir)
    return n


def prepare_inputs(ctx: RunContext, fresh: bool = False) -> dict:
    """Resolve the corpus source and the model (building the offline demo ones if asked);
    ``fresh`` (curate): first clear what an earlier run of this name left behind."""
    from undercurve.models import resolve_model

    if fresh:
        clear_stale_outputs(ctx)
    s = ctx.settings
    source, bench, texts = s.corpus.source, None, []
    if source == "demo":
        from undercurve.demo import tokenizer_texts, write_demo_inputs

        corpus, bench = write_demo_inputs(Path(s.workdir) / "demo-inputs" / f"n{s.corpus.demo_size}-seed{s.corpus.seed}",
                                          s.corpus.demo_size, s.corpus.seed)
        source, texts = str(corpus), tokenizer_texts(corpus)
    model_dir = s.model.tiny_dir or str(Path(s.workdir) / "models")
    model = resolve_model(s.model.path, model_dir, texts)
    return {"corpus": source, "model": model, "demo_benchmark": None if bench is None else str(bench)}

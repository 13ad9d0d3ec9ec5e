"""Length cap: samples longer than ``max_tokens`` (with the model's tokenizer) set aside.

Streams: ``BATCH_ROWS`` rows at a time are read, tokenised and written, so memory does not
grow with the corpus; outputs and row order are those of one pass over the whole table.

Token counts are kept in the workdir's content-keyed cache (``undercurve.cache``): a chat
counted before, with the same model files, is not tokenised again, and a night with no new
content does not even load the tokenizer. The cap itself is applied every run, so changing
``max_tokens`` needs no recount. In memory beside one batch: one (key, count) row per distinct
content of the run, ~100 bytes each."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from undercurve.cache import KEY, ResultCache, content_keys, model_identity
from undercurve.io import ParquetSink, iter_parquet
from undercurve.run import RunContext
from undercurve.schema import SET_ASIDE_SCHEMA
from undercurve.stages.result import StageResult, _finish_streamed, _parquet_rows

BATCH_ROWS = 2048  # rows in memory at a time (tokenised in sub-batches by token_lengths)
PART_ROWS = 65_536  # new counts per cache part (fewer, larger parts to verify)
# What a count depends on, and the version of the counting code (``textlen``).
LENGTH_FIELDS = ("prompt", "response")
LENGTH_VERSION = 1
COUNTS_SCHEMA = {KEY: pl.Utf8, "chat_tokens": pl.Int64}


def length_cache(ctx: RunContext, model: str) -> ResultCache:
    root = ctx.settings.cache_dir
    return ResultCache.open(root, "chat_tokens", {
        "version": LENGTH_VERSION, "trust_remote_code": ctx.settings.model.trust_remote_code,
        "model_identity": model_identity(model, root / "model-hashes.json")})


def length_cap_stage(ctx: RunContext, prev: StageResult, model: str, progress=None) -> StageResult:
    from undercurve.textlen import over_cap, token_lengths

    cap = ctx.settings.max_tokens
    d = ctx.stage_dir("length_cap")
    cache = length_cache(ctx, model)
    keys = content_keys(prev.path, LENGTH_FIELDS, d / "keys.parquet", carry=())
    # the counts the cache already holds for this run's contents (one small row per content)
    used = cache.holding(keys, cache.parts())
    known = (cache.rows(used).join(pl.scan_parquet(keys), on=KEY, how="semi").select(list(COUNTS_SCHEMA)).collect()
             if used else pl.DataFrame(schema=COUNTS_SCHEMA))
    tokenizer, fresh, counted_rows = None, [], 0
    schema = {**pl.read_parquet_schema(prev.path), "chat_tokens": pl.Int64}  # from the footer
    rows_in, total = 0, _parquet_rows(Path(prev.path))
    with ParquetSink(d / "samples.parquet", schema) as kept, ParquetSink(d / "set_aside.parquet", SET_ASIDE_SCHEMA) as aside:
        for batch, batch_keys in zip(iter_parquet(prev.path, BATCH_ROWS), iter_parquet(keys, BATCH_ROWS)):
            batch = batch.with_columns(batch_keys[KEY])
            new = batch.join(known, on=KEY, how="anti").unique(KEY, keep="first", maintain_order=True)
            if new.height:
                tokenizer = tokenizer or _tokenizer(model, ctx.settings.model.trust_remote_code)
                counted = pl.DataFrame({KEY: new[KEY], "chat_tokens": token_lengths(tokenizer, new)}, schema=COUNTS_SCHEMA)
                known = pl.concat([known, counted])
                fresh.append(counted)
                counted_rows += counted.height
                if sum(f.height for f in fresh) >= PART_ROWS:
                    _store(cache, fresh)
            within, over = over_cap(batch.join(known, on=KEY, how="left", maintain_order="left").drop(KEY), cap)
            kept.write(within)
            aside.write(over)
            rows_in += batch.height
            if progress:
                progress(rows_in, total)
        _store(cache, fresh)
        cache.touch(used)
        return _finish_streamed(ctx, "length_cap", kept, aside, rows_in, [prev.artifact_id],
                                extra={"max_tokens": cap, "contents_counted": counted_rows, "cache": str(cache.root)})


def _tokenizer(model: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)


def _store(cache: ResultCache, fresh: list[pl.DataFrame]) -> None:
    """The counts made since the last part, as one cache part."""
    if fresh:
        counts = pl.concat(fresh)
        cache.write(counts[KEY].to_list(), counts)
        fresh.clear()

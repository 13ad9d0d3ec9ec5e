"""Length cap: samples longer than ``max_tokens`` (with the model's tokenizer) set aside.

Streams: ``BATCH_ROWS`` rows at a time are read, tokenised and written, so memory does not
grow with the corpus; outputs and row order are those of one pass over the whole table.

Token counts are kept in the workdir's content-keyed cache (``undercurve.cache``): a chat
counted before, with the same model files, is not tokenised again, and a night with no new
content does not even load the tokenizer. The cap itself is applied every run, so changing
``max_tokens`` needs no recount. The counts are looked up ``BLOCK_BATCHES`` batches at a time (one
scan of the cache parts per block), so what is held beside one batch is one block's counts and
the counts not yet written to a part: memory does not grow with the corpus."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from undercurve.cache import KEY, ResultCache, content_keys, model_identity
from undercurve.io import ParquetSink, iter_parquet
from undercurve.run import RunContext
from undercurve.schema import SET_ASIDE_SCHEMA
from undercurve.stages.result import StageResult, _finish_streamed, _parquet_rows

BATCH_ROWS = 2048  # rows in memory at a time (tokenised in sub-batches by token_lengths)
BLOCK_BATCHES = 32  # batches whose counts are looked up in the cache together
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
    parts = cache.holding(keys, cache.parts())  # the parts holding any of this run's contents
    used = list(parts)
    pending = pl.DataFrame(schema=COUNTS_SCHEMA)  # counted by this run, not yet in a part
    tokenizer, counted_rows = None, 0
    schema = {**pl.read_parquet_schema(prev.path), "chat_tokens": pl.Int64}  # from the footer
    rows_in, total = 0, _parquet_rows(Path(prev.path))
    samples = iter_parquet(prev.path, BATCH_ROWS)
    with ParquetSink(d / "samples.parquet", schema) as kept, ParquetSink(d / "set_aside.parquet", SET_ASIDE_SCHEMA) as aside:
        for block in iter_parquet(keys, BLOCK_BATCHES * BATCH_ROWS):  # whole batches per block
            wanted = block.select(KEY).unique()
            known = pl.concat([cache.lookup(parts, wanted, schema=COUNTS_SCHEMA).drop("part"),
                               pending.join(wanted, on=KEY, how="semi")])
            for start in range(0, block.height, BATCH_ROWS):
                batch = next(samples).with_columns(block[KEY].slice(start, BATCH_ROWS))
                new = batch.join(known, on=KEY, how="anti").unique(KEY, keep="first", maintain_order=True)
                if new.height:
                    tokenizer = tokenizer or _tokenizer(model, ctx.settings.model.trust_remote_code)
                    counted = pl.DataFrame({KEY: new[KEY], "chat_tokens": token_lengths(tokenizer, new)},
                                           schema=COUNTS_SCHEMA)
                    known, pending = pl.concat([known, counted]), pl.concat([pending, counted])
                    counted_rows += counted.height
                    if pending.height >= PART_ROWS:
                        parts.append(_store(cache, pending))
                        pending = pending.clear()
                within, over = over_cap(batch.join(known, on=KEY, how="left", maintain_order="left").drop(KEY), cap)
                kept.write(within)
                aside.write(over)
                rows_in += batch.height
                if progress:
                    progress(rows_in, total)
        if pending.height:
            _store(cache, pending)
        cache.touch(used)
        return _finish_streamed(ctx, "length_cap", kept, aside, rows_in, [prev.artifact_id],
                                extra={"max_tokens": cap, "contents_counted": counted_rows, "cache": str(cache.root)})


def _tokenizer(model: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)


def _store(cache: ResultCache, counts: pl.DataFrame) -> Path:
    """Counts made by this run, as one cache part."""
    return cache.write(counts[KEY].to_list(), counts)

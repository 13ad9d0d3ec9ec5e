"""Length cap: total tokens of prompt + response with the model's chat template applied. Works on
one batch of rows at a time (``stages.length_cap`` streams the table through it)."""

from __future__ import annotations

from typing import Callable

import polars as pl

from undercurve.schema import set_aside_frame

STAGE = "length_cap"


def chat_texts(tokenizer, prompts: list[str], responses: list[str]) -> list[str]:
    """Each (prompt, response) rendered with the tokenizer's chat template: one batched call
    (the template compiled once; ~1.5x faster than a call per row, the same strings)."""
    if not prompts:
        return []
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses)]
    return list(tokenizer.apply_chat_template(chats, tokenize=False))


def counter(tokenizer) -> Callable[[list[str]], list[int]]:
    """texts -> token counts, the numbers of ``tokenizer(texts, add_special_tokens=False)``.

    A fast tokenizer's Rust backend is called directly with ``encode_batch_fast``: no
    character offsets and no Python lists of ids, only lengths (1.2-1.5x faster on this CPU).
    The backend is set as the tokenizer's own call sets it: no truncation, no padding, special
    tokens split or not as the tokenizer says."""
    backend = getattr(tokenizer, "_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is None:  # a slow (Python) tokenizer
        return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return lambda texts: [len(e) for e in fast(texts, add_special_tokens=False)]


def token_lengths(tokenizer, df: pl.DataFrame, batch: int = 512) -> list[int]:
    """Batched fast-tokenizer counts; same numbers as tokenising each chat separately."""
    count = counter(tokenizer)
    lengths: list[int] = []
    for start in range(0, df.height, batch):
        part = df.slice(start, batch)
        lengths += count(chat_texts(tokenizer, part["prompt"].to_list(), part["response"].to_list()))
    return lengths


def over_cap(df: pl.DataFrame, max_tokens: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows with a ``chat_tokens`` column -> (rows within the cap, set-aside rows over it)."""
    over = df.filter(pl.col("chat_tokens") > max_tokens)
    aside = set_aside_frame(
        [{"id": r["id"], "source": r["source"], "reason": f"over length cap ({max_tokens} tokens)",
          "detail": f"{r['chat_tokens']} tokens"} for r in over.select("id", "source", "chat_tokens").to_dicts()],
        STAGE,
    )
    return df.filter(pl.col("chat_tokens") <= max_tokens), aside


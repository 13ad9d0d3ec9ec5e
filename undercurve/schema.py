"""The canonical sample and the set-aside record.

Every stage reads and writes samples with exactly these columns (plus stage-specific
metric columns). A row a stage cannot use is never dropped silently: it becomes a
set-aside record with the stage and the reason, so rows in = rows kept + rows set aside.
"""

from __future__ import annotations

import polars as pl

SAMPLE_SCHEMA = {
    "id": pl.Utf8,  # stable: the source's id, else a hash of prompt + response
    "source": pl.Utf8,  # where the row came from (dataset id or file)
    "prompt": pl.Utf8,  # the question, without chat template
    "response": pl.Utf8,  # reasoning + solution, ends with a \boxed{} final answer
    "answer": pl.Utf8,  # ground-truth final answer
    # where the answer came from: "field" (the record's answer), "reference_answer" (chat
    # info.reference_answer), "gsm8k" (the '#### N' line), "response_boxed" (the response's own
    # last \boxed{}); null in frames built without it
    "answer_source": pl.Utf8,
}

SET_ASIDE_SCHEMA = {
    "id": pl.Utf8,
    "source": pl.Utf8,
    "stage": pl.Utf8,
    "reason": pl.Utf8,
    "detail": pl.Utf8,  # evidence for the reason (raw text snippet, matched n-grams, ...)
}


def set_aside_frame(rows: list[dict], stage: str) -> pl.DataFrame:
    """Build a set-aside frame; ``rows`` hold id/source/reason/detail."""
    data = [
        {
            "id": r.get("id"),
            "source": r.get("source"),
            "stage": stage,
            "reason": r["reason"],
            "detail": None if r.get("detail") is None else str(r["detail"])[:2000],
        }
        for r in rows
    ]
    return pl.DataFrame(data, schema=SET_ASIDE_SCHEMA)

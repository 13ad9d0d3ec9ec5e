"""Read a reasoning corpus into canonical samples; set aside what cannot be used.

Formats recognised per record:
- chat messages (AM-DeepSeek-R1-0528-Distilled): ``messages`` with a user and an assistant
  turn; the reference answer from ``info.reference_answer`` when present;
- GSM8K: ``question`` + ``answer`` whose last line is ``#### N``; the worked solution is
  rendered as ``<think>solution</think>`` + ``\\boxed{N}`` so it has an EAS trajectory;
- MATH style: ``problem`` + ``solution`` (+ ``answer``);
- canonical: ``prompt`` + ``response`` + ``answer``.

Local JSONL is read line by line, not through ``datasets``' json builder, because that
builder aborts the whole file on one malformed line; each bad line is set aside instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import polars as pl

from undercurve.answers import DEFAULT_BOX_OPENERS, gsm8k_final, last_boxed
from undercurve.schema import SAMPLE_SCHEMA, set_aside_frame

STAGE = "ingest"


def stable_id(prompt: str, response: str) -> str:
    return hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:16]


def _text(v) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None


def _from_messages(rec: dict) -> tuple[str | None, str | None, str | None]:
    msgs = rec.get("messages") or rec.get("conversations")
    if not isinstance(msgs, list):
        return None, None, None
    user = next((m for m in msgs if isinstance(m, dict) and m.get("role") in ("user", "human")), None)
    bot = next(
        (m for m in reversed(msgs) if isinstance(m, dict) and m.get("role") in ("assistant", "gpt")), None
    )
    prompt = _text(user.get("content")) if user else None
    response = _text(bot.get("content")) if bot else None
    answer = None
    for m in (user, bot):
        info = (m or {}).get("info")
        if isinstance(info, dict) and _text(info.get("reference_answer")):
            answer = _text(info["reference_answer"])
            break
    return prompt, response, answer or _text(rec.get("answer"))


def _from_gsm8k(rec: dict) -> tuple[str | None, str | None, str | None]:
    solution = _text(rec.get("answer"))
    final = gsm8k_final(solution or "")
    if final is None:
        return _text(rec.get("question")), None, None
    reasoning = solution.rsplit("####", 1)[0].strip()
    response = f"<think>\n{reasoning}\n</think>\n\nThe answer is $\\boxed{{{final}}}$."
    return _text(rec.get("question")), response, final


def to_sample(rec: dict, source: str, box_openers=DEFAULT_BOX_OPENERS) -> tuple[dict | None, str | None]:
    """One raw record -> (canonical sample, None) or (None, reason it was set aside)."""
    if "messages" in rec or "conversations" in rec:
        prompt, response, answer = _from_messages(rec)
    elif "question" in rec and "####" in str(rec.get("answer", "")):
        prompt, response, answer = _from_gsm8k(rec)
    elif "problem" in rec:
        prompt, response, answer = _text(rec.get("problem")), _text(rec.get("solution")), _text(rec.get("answer"))
    elif "prompt" in rec or "response" in rec:
        prompt, response, answer = _text(rec.get("prompt")), _text(rec.get("response")), _text(rec.get("answer"))
    else:
        return None, "unknown record format"
    if prompt is None:
        return None, "missing or empty prompt"
    if response is None:
        return None, "missing or empty response"
    boxed = last_boxed(response, tuple(box_openers))
    if boxed is None:
        return None, "response has no \\boxed{} final answer"
    answer = answer or boxed
    if not answer.strip():
        return None, "empty answer"
    rid = rec.get("id", rec.get("uuid"))
    rid = str(rid) if rid not in (None, "") else stable_id(prompt, response)
    return {"id": rid, "source": source, "prompt": prompt, "response": response, "answer": answer}, None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str | None, str]]:
    """(line number, record or None, reason or None, raw snippet) for every non-blank line."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield n, None, f"not UTF-8 ({exc.reason})", repr(raw[:200])
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, None, f"malformed JSON ({exc.msg})", line[:200]
                continue
            if not isinstance(rec, dict):
                yield n, None, "record is not a JSON object", line[:200]
                continue
            yield n, rec, None, ""


def _iter_records(source: str, split: str, limit: int | None) -> Iterator[tuple[str, dict | None, str | None, str]]:
    path = Path(source)
    if path.suffix in (".jsonl", ".json") and path.exists():
        for n, rec, reason, raw in iter_jsonl(path):
            yield f"{path.name}:{n}", rec, reason, raw
        return
    import datasets  # heavy import, only for Parquet files and hub ids

    if path.suffix == ".parquet" and path.exists():
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    else:
        if path.suffix in (".jsonl", ".json", ".parquet"):
            raise FileNotFoundError(f"corpus file not found: {source}")
        ds = datasets.load_dataset(source, split=split)
    for i, rec in enumerate(ds):
        yield f"{source}:{i}", rec, None, ""


def ingest(source: str, *, split: str = "train", limit: int | None = None,
           box_openers=DEFAULT_BOX_OPENERS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load ``source`` -> (samples, set_aside). Every input row lands in exactly one of them."""
    kept: list[dict] = []
    aside: list[dict] = []
    seen: set[str] = set()
    label = Path(source).name if Path(source).exists() else source
    for n, (where, rec, reason, raw) in enumerate(_iter_records(source, split, limit)):
        if limit is not None and n >= limit:
            break
        if rec is not None:
            sample, reason = to_sample(rec, label, box_openers)
            raw = json.dumps(rec, ensure_ascii=False, default=str)[:200]
        if reason is None and sample["id"] in seen:
            reason = "duplicate id"
        if reason is not None:
            rid = rec.get("id") if isinstance(rec, dict) else None
            aside.append({"id": None if rid is None else str(rid), "source": label, "reason": reason, "detail": f"{where}: {raw}"})
            continue
        seen.add(sample["id"])
        kept.append(sample)
    return pl.DataFrame(kept, schema=SAMPLE_SCHEMA), set_aside_frame(aside, STAGE)

"""Property tests for ingestion: whatever the input, no exception, every row accounted for,
every kept row usable, every set-aside row explained."""

import json
import tempfile
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from undercurve import ingest as ingest_mod
from undercurve.ingest import DETAIL_CHARS, SourceError, _utf16_or_32, ingest_to, to_sample

SETTINGS = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BOM = b"\xef\xbb\xbf"

# any character, lone surrogates included (json.dumps escapes them as \udXXX)
TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
                           max_leaves=12)
BOXED = st.builds(lambda a, b: f"{a} \\boxed{{{b}}}", TEXT, TEXT)
FIELD = JSON_VALUES | TEXT | BOXED | st.integers(min_value=-10**6, max_value=10**6)


def _good(i: int) -> dict:
    return {"id": f"g{i}", "prompt": f"What is {i}?", "response": f"<think>{i}</think> \\boxed{{{i}}}"}


def _run(name: str, data: bytes) -> tuple:
    """Ingest ``data`` written as ``name``; check the invariants; -> (counts, samples, aside)."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / name
        src.write_bytes(data)
        out_s, out_a = Path(d) / "out" / "s.parquet", Path(d) / "out" / "a.parquet"
        if _utf16_or_32(data[:4]):  # the one source-level refusal random bytes can hit
            with pytest.raises(SourceError, match="UTF-16 or UTF-32"):
                ingest_to(str(src), out_s, out_a)
            return None, None, None
        counts = ingest_to(str(src), out_s, out_a)
        samples = pl.read_parquet(Path(d) / "out" / "s.parquet")
        aside = pl.read_parquet(Path(d) / "out" / "a.parquet")
    assert counts.rows_in == counts.kept + counts.set_aside == samples.height + aside.height
    assert (samples.height, aside.height) == (counts.kept, counts.set_aside)
    for row in samples.iter_rows(named=True):
        for col in ("id", "prompt", "response", "answer", "answer_source"):
            v = row[col]
            assert isinstance(v, str) and v.strip() and "\x00" not in v
            v.encode("utf-8")  # strict: no lone surrogate
    assert samples["id"].n_unique() == samples.height
    assert aside["reason"].null_count() == 0 and all(r for r in aside["reason"])
    assert "unexpected error" not in set(aside["reason"])  # the safety net never fires
    assert all(0 < len(d) <= DETAIL_CHARS for d in aside["detail"])
    assert sum(counts.reasons.values()) == counts.set_aside
    return counts, samples, aside


def _rows_in_jsonl(lines: list[bytes]) -> int:
    """Non-blank lines: a line of only whitespace (after an optional BOM) is not a row."""
    return sum(1 for line in lines if (line[3:] if line.startswith(BOM) else line).strip())


LINE = (st.binary(max_size=40)
        | st.integers(0, 40).map(lambda i: json.dumps(_good(i)).encode())
        | st.tuples(st.integers(0, 40), st.integers(0, 60), st.binary(min_size=1, max_size=3)).map(
            lambda t: (lambda s: s[:t[1]] + t[2] + s[t[1]:])(json.dumps(_good(t[0])).encode()))  # a good line, damaged
        | st.sampled_from([b"", b"  ", BOM, BOM + json.dumps(_good(99)).encode(), b"\x00", b"\xff"]))


@SETTINGS
@given(st.lists(LINE.map(lambda b: b.replace(b"\n", b" ")), max_size=25))
def test_random_byte_lines(lines):
    counts, samples, _ = _run("c.jsonl", b"\n".join(lines) + b"\n")
    assert counts is None or counts.rows_in == _rows_in_jsonl(lines)


@SETTINGS
@given(st.lists(JSON_VALUES, max_size=15), st.booleans())
def test_random_json_values_as_lines_and_as_an_array(values, ascii_only):
    lines = [json.dumps(v, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") for v in values]
    counts, _, _ = _run("c.jsonl", b"\n".join(lines))
    assert counts.rows_in == len(values)
    counts, _, _ = _run("c.json", json.dumps(values, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
    assert counts.rows_in == len(values)  # every element is one row


PROMPT = st.sampled_from(["What is 2+2?", "  Q?  "]) | TEXT | FIELD
RESPONSE = BOXED | FIELD
ANSWER = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | FIELD
RECORD = (st.fixed_dictionaries({"prompt": PROMPT, "response": RESPONSE}, optional={"id": FIELD, "answer": ANSWER})
          | st.fixed_dictionaries({}, optional={"id": FIELD, "prompt": FIELD, "response": FIELD, "answer": FIELD}))


@SETTINGS
@given(st.lists(RECORD, max_size=12))
def test_random_field_types(recs):
    lines = [json.dumps(r).encode() for r in recs]
    counts, samples, aside = _run("c.jsonl", b"\n".join(lines))
    assert counts.rows_in == len(recs)
    for rec in recs:
        sample, reason = to_sample(rec, "x")
        assert (sample is None) != (reason is None)
        if sample is None:
            continue
        raw = rec.get("answer")
        if isinstance(raw, str) and raw.strip():  # the given answer, never replaced
            assert (sample["answer"], sample["answer_source"]) == (raw.strip(), "field")
        elif isinstance(raw, int) and not isinstance(raw, bool):
            assert (sample["answer"], sample["answer_source"]) == (str(raw), "field")
        elif isinstance(raw, float):
            assert float(sample["answer"]) == raw and sample["answer_source"] == "field"
        else:
            assert raw is None or raw == "" or raw.isspace()  # lists, objects, bools are set aside
            assert sample["answer_source"] == "response_boxed"


@SETTINGS
@given(st.lists(st.one_of(st.integers(0, 30).map(_good), JSON_VALUES), max_size=10), st.integers(1, 16),
       st.sampled_from([None, 0, 2]))
def test_json_read_in_small_chunks_equals_json_read_whole(values, chunk, indent):
    data = json.dumps(values, indent=indent).encode("utf-8", "surrogatepass")
    whole = _run("c.json", data)
    with mock.patch.object(ingest_mod, "CHUNK", chunk):
        chunked = _run("c.json", data)
    assert whole[0].rows_in == len(values)  # every element is one row
    assert whole[0] == chunked[0]
    assert whole[1].equals(chunked[1]) and whole[2].equals(chunked[2])

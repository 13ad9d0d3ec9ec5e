"""Read a reasoning corpus into canonical samples; set aside what cannot be used.

One bad row costs one row: a record that cannot be used is set aside with a short, stable
reason and a truncated copy of the raw record (``detail``, at most 300 characters) and the
run goes on. Nothing is silently changed: where the answer came from is recorded in
``answer_source``. Rows in = rows kept + rows set aside; blank lines (only whitespace and an
optional UTF-8 BOM) are not rows. Reading and writing stream: memory does not grow with the
number of rows (only the set of ids seen, for duplicate detection, does).

Sources (``ingest_to`` / ``ingest``):
- a file: JSON Lines (``.jsonl``, ``.ndjson``), JSON (``.json``: an array, pretty-printed or
  not, one object, or objects one after another), Parquet (``.parquet``); JSON and JSON Lines
  may be compressed (``.gz``, ``.zst``/``.zstd``, ``.bz2``, ``.xz``); extensions in any case
  (``.JSONL``, ``.Json.GZ``); a UTF-8 BOM at the start of a file or line is ignored;
- a folder: every supported file in it, recursively, in sorted order of relative path
  (hidden files and folders, and files of other types, are skipped);
- a glob pattern (``data/*.jsonl.gz``, ``**`` allowed): the matching files, sorted;
- a ``datasets`` dataset saved with ``save_to_disk`` (a folder with ``dataset_info.json`` or
  ``state.json``), read with ``datasets.load_from_disk`` (``split`` picks from a DatasetDict);
- anything else is taken for a hub dataset id: ``datasets.load_dataset(source, split=split,
  streaming=True)``.
A path that does not exist raises ``FileNotFoundError``; an unreadable or unsupported source
(unknown file type, UTF-16 text, a corrupt compressed or Parquet file) raises ``SourceError``.
An empty source gives 0 rows whatever its format; ``NoUsableRows`` is what a caller raises
(``ingest_stage`` does) when nothing was kept.

What one malformed value costs: in JSON Lines, its line; in a ``.json`` of objects one after
another, the text up to the next line that starts with ``{`` or ``[``; inside a JSON array,
the rest of the file (there is no way to resynchronise), as one row. A value nested too deep
or holding an over-long integer is valid JSON: its end is found and reading goes on.

Record layouts (first match wins):
- chat ``messages`` (OpenAI: ``role``/``content``, content a string or a list of
  ``{"type": "text", "text": ...}`` parts, joined without separator) or ShareGPT
  ``conversations`` (``from``/``value``; human/user -> user, gpt/assistant/chatgpt/model ->
  assistant); system turns are ignored; exactly one user turn then one assistant turn; the
  reference answer from ``info.reference_answer`` of either turn, else a top-level ``answer``
  (AM-DeepSeek-R1-0528-Distilled has this layout);
- GSM8K: ``question`` + ``answer`` whose last line is ``#### N``; the worked solution is
  rendered as ``<think>solution</think>`` + ``\\boxed{N}`` so it has an EAS trajectory;
- MATH: ``problem`` + ``solution`` (+ ``answer``);
- canonical: ``prompt`` + ``response`` (+ ``answer``).
The id is the record's ``id`` (else ``uuid``), a string or an integer; without one, a hash
of prompt + response. Prompt, response and answer are stripped of surrounding whitespace.

Answers: a string is stripped; an int or a finite float is written as a string (3 -> "3",
3.0 -> "3", 0.5 -> "0.5"); a list, object or bool is set aside. With no answer the last
``\\boxed{}`` of the response is the answer. ``answer_source`` says which: ``field`` (the
record's ``answer``), ``reference_answer`` (chat ``info.reference_answer``), ``gsm8k`` (the
``#### N`` line), ``response_boxed`` (the response's own last box).

Set-aside reasons (the complete vocabulary; specifics go to ``detail``):
- reading: ``not UTF-8``, ``malformed JSON``, ``nested too deep``, ``integer too long``,
  ``record too long`` (a line or JSON value over ``MAX_RECORD_CHARS``), ``record is not a
  JSON object``;
- layout: ``unknown record layout`` (detail: the keys found and the layouts accepted),
  ``multi-turn conversation``, ``unknown message role``, ``non-text message content``;
- fields: ``missing or empty prompt``, ``missing or empty response``, ``wrong type: <field>
  is <type>`` (field: ``prompt``, ``response``, ``answer``, ``id``, ``messages``,
  ``conversations``, ``message``; type: ``int``, ``float``, ``bool``, ``list``, ``object``,
  ``null``, or another Python type name from Parquet/datasets), ``field too long: <field>``
  (``prompt``, ``response``, ``answer``, ``id``; over ``MAX_FIELD_CHARS`` characters),
  ``NUL byte in text`` (raw in the line, or U+0000 in a kept field), ``invalid Unicode (lone
  surrogate)`` (e.g. JSON ``"\\ud800"``: a str that cannot be written as UTF-8);
- answer: ``answer is a list``, ``answer is an object``, ``answer is a bool``, ``answer is
  not a finite number``, ``GSM8K answer has no final number``;
- ``response has no \\boxed{} final answer`` (none, unbalanced, or empty with no answer
  given), ``duplicate id`` (the first row with an id is kept);
- Parquet only: ``unreadable value`` (a value pyarrow cannot convert);
- ``unexpected error``: a safety net that should never fire (the tests check it does not).

Local files are read here, not through ``datasets``' json builder, because that builder
aborts the whole file on one malformed line.
"""

from __future__ import annotations

import bz2
import codecs
import glob as globlib
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from undercurve.answers import DEFAULT_BOX_OPENERS, gsm8k_final, last_boxed
from undercurve.io import ParquetSink
from undercurve.schema import SAMPLE_SCHEMA, SET_ASIDE_SCHEMA

log = logging.getLogger("undercurve")

STAGE = "ingest"
MAX_FIELD_CHARS = 2_000_000  # per text field (prompt, response, answer, id)
MAX_RECORD_CHARS = 64 * 1024 * 1024  # one JSON Lines line / one JSON value, in bytes resp. characters
DETAIL_CHARS = 300  # set-aside detail: where + specifics + the start of the raw record
BATCH_ROWS = 10_000  # rows per Parquet write ...
BATCH_CHARS = 64 * 1024 * 1024  # ... or fewer, when the rows are long
CHUNK = 1 << 20  # bytes read at a time from a .json file

ACCEPTED_LAYOUTS = ("prompt+response(+answer), messages (role/content), conversations (from/value), "
                    "question+answer with '#### N' (GSM8K), problem+solution(+answer) (MATH)")
ACCEPTED_FILES = ".jsonl, .ndjson, .json, .parquet; JSON(L) also as .gz, .zst, .zstd, .bz2, .xz"

_JSONL, _JSON, _PARQUET = "jsonl", "json", "parquet"
_BASE_EXT = {".jsonl": _JSONL, ".ndjson": _JSONL, ".json": _JSON, ".parquet": _PARQUET}
_COMPRESSED = (".gz", ".zst", ".zstd", ".bz2", ".xz")
_BOM = b"\xef\xbb\xbf"
_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt", "chatgpt", "model"}
_SYSTEM_ROLES = {"system"}


class SourceError(ValueError):
    """The source as a whole cannot be read: unsupported type, wrong encoding, corrupt file."""


class NoUsableRows(ValueError):
    """A source gave no usable row: a run on it would be empty, so it fails instead."""

    def __init__(self, source: str, counts: "IngestCounts", aside_path: str | Path | None = None):
        self.source, self.counts = source, counts
        if counts.rows_in == 0:
            msg = f"no usable rows in {source}: the source is empty (0 rows read)"
        else:
            top = ", ".join(f"{n} x {r!r}" for r, n in counts.top_reasons(5))
            msg = (f"no usable rows in {source}: {counts.rows_in} rows read, 0 kept, "
                   f"{counts.set_aside} set aside ({top})")
            if aside_path is not None:
                msg += f"; the set-aside rows are in {aside_path}"
        super().__init__(msg)


@dataclass
class IngestCounts:
    rows_in: int = 0
    kept: int = 0
    set_aside: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # set-aside rows per reason

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.kept + self.set_aside == self.kept + sum(self.reasons.values())

    def top_reasons(self, n: int = 5) -> list[tuple[str, int]]:
        return Counter(self.reasons).most_common(n)


# ---------------------------------------------------------------------------- mapping
class _Aside(Exception):
    """Internal: this record is set aside (reason from the fixed vocabulary, note = specifics)."""

    def __init__(self, reason: str, note: str = ""):
        super().__init__(reason)
        self.reason, self.note = reason, note


def stable_id(prompt: str, response: str) -> str:
    return hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:16]


def _type_name(v) -> str:
    if isinstance(v, dict):
        return "object"
    if isinstance(v, (list, tuple)):
        return "list"
    return "null" if v is None else type(v).__name__


def _check_text(name: str, s: str) -> str:
    if len(s) > MAX_FIELD_CHARS:
        raise _Aside(f"field too long: {name}", f"{name} has {len(s)} characters (limit {MAX_FIELD_CHARS})")
    if "\x00" in s:
        raise _Aside("NUL byte in text", f"{name} contains U+0000 at {s.index(chr(0))}")
    if not s.isascii():  # O(1); ASCII text holds no surrogate
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Aside("invalid Unicode (lone surrogate)", f"{name}: {s[exc.start]!r} at {exc.start}") from None
    return s


def _text(name: str, v) -> str:
    """A required text field: a non-empty string (stripped)."""
    if v is None:
        raise _Aside(f"missing or empty {name}", f"{name} is absent")
    if not isinstance(v, str):
        raise _Aside(f"wrong type: {name} is {_type_name(v)}")
    s = v.strip()
    if not s:
        raise _Aside(f"missing or empty {name}", f"{name} is blank")
    return _check_text(name, s)


def canonical_number(v: int | float) -> str:
    """3 -> "3", 3.0 -> "3", 0.5 -> "0.5", 1e20 -> "1e+20"; raises _Aside for nan/inf."""
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _Aside("answer is not a finite number", repr(v))
        if v.is_integer() and abs(v) < 2**53:
            return str(int(v))
        return repr(v)
    try:
        return str(v)
    except ValueError:  # more digits than Python converts
        raise _Aside("integer too long", "answer") from None


def _answer(v) -> str | None:
    """An optional answer: None when absent or blank (the response's box is used then)."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise _Aside("answer is a bool", repr(v))
    if isinstance(v, (int, float)):
        return canonical_number(v)
    if isinstance(v, (list, tuple)):
        raise _Aside("answer is a list")
    if isinstance(v, dict):
        raise _Aside("answer is an object")
    if not isinstance(v, str):
        raise _Aside(f"wrong type: answer is {_type_name(v)}")
    return v.strip() or None


def _content(name: str, v) -> str:
    """Message content: a string, or a list of text parts (joined without separator)."""
    if isinstance(v, list):
        texts = []
        for i, part in enumerate(v):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if part.get("type", "text") != "text":
                    raise _Aside("non-text message content", f"{name} part {i} has type {str(part['type'])[:40]!r}")
                if not isinstance(part.get("text"), str):
                    raise _Aside(f"wrong type: {name} is {_type_name(part.get('text'))}", f"content part {i}")
                texts.append(part["text"])
            else:
                raise _Aside(f"wrong type: {name} is {_type_name(part)}", f"content part {i}")
        v = "".join(texts)
    return _text(name, v)


def _from_messages(rec: dict, key: str) -> tuple[str, str, list[tuple]]:
    msgs = rec[key]
    if not isinstance(msgs, list):
        raise _Aside(f"wrong type: {key} is {_type_name(msgs)}")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _Aside(f"wrong type: message is {_type_name(m)}", f"{key}[{i}]")
        role = m.get("role", m.get("from"))
        r = role.strip().lower() if isinstance(role, str) else None
        if r in _SYSTEM_ROLES:
            continue
        if r in _USER_ROLES:
            turns.append(("user", m))
        elif r in _ASSISTANT_ROLES:
            turns.append(("assistant", m))
        else:
            raise _Aside("unknown message role", f"{key}[{i}] role {str(role)[:40]!r}")
    roles = [t for t, _ in turns]
    if "user" not in roles:
        raise _Aside("missing or empty prompt", f"no user turn in {key}")
    if "assistant" not in roles:
        raise _Aside("missing or empty response", f"no assistant turn in {key}")
    if roles != ["user", "assistant"]:
        raise _Aside("multi-turn conversation", "turns: " + ", ".join(roles)[:120])
    user, bot = turns[0][1], turns[1][1]
    prompt = _content("prompt", user.get("content", user.get("value")))
    response = _content("response", bot.get("content", bot.get("value")))
    answers = []
    for m in (user, bot):
        info = m.get("info")
        if isinstance(info, dict) and info.get("reference_answer") is not None:
            answers.append(("reference_answer", info["reference_answer"]))
    answers.append(("field", rec.get("answer")))
    return prompt, response, answers


def _layout(rec: dict) -> tuple[str, str, list[tuple]]:
    """(prompt, response, [(answer_source, raw answer), ...] in order of preference)."""
    if "messages" in rec or "conversations" in rec:
        return _from_messages(rec, "messages" if "messages" in rec else "conversations")
    if "question" in rec and isinstance(rec.get("answer"), str) and "####" in rec["answer"]:
        solution = rec["answer"]
        final = gsm8k_final(solution)
        if final is None:
            raise _Aside("GSM8K answer has no final number", "nothing after '####'")
        prompt = _text("prompt", rec.get("question"))
        reasoning = solution.rsplit("####", 1)[0].strip()
        response = f"<think>\n{reasoning}\n</think>\n\nThe answer is $\\boxed{{{final}}}$."
        return prompt, _check_text("response", response), [("gsm8k", final)]
    if "problem" in rec:
        return _text("prompt", rec.get("problem")), _text("response", rec.get("solution")), [("field", rec.get("answer"))]
    if "prompt" in rec or "response" in rec:
        return _text("prompt", rec.get("prompt")), _text("response", rec.get("response")), [("field", rec.get("answer"))]
    keys = ", ".join(map(str, list(rec)[:12])) + (", ..." if len(rec) > 12 else "")
    raise _Aside("unknown record layout", f"keys [{keys[:150]}]; accepted: {ACCEPTED_LAYOUTS}")


def _id(rec: dict, prompt: str, response: str) -> str:
    rid = rec.get("id")
    if rid is None or rid == "":
        rid = rec.get("uuid")
    if rid is None or rid == "":
        return stable_id(prompt, response)
    if isinstance(rid, float) and math.isfinite(rid) and rid.is_integer():
        rid = int(rid)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _Aside(f"wrong type: id is {_type_name(rid)}")
    try:
        return _check_text("id", str(rid))
    except ValueError:  # an int with more digits than Python converts
        raise _Aside("integer too long", "id") from None


def _map(rec, source: str, box_openers) -> dict:
    """One raw record -> canonical sample, or raise _Aside."""
    if not isinstance(rec, dict):
        raise _Aside("record is not a JSON object", f"a JSON {_type_name(rec)}")
    prompt, response, answers = _layout(rec)
    boxed = last_boxed(response, tuple(box_openers))
    if boxed is None:
        raise _Aside("response has no \\boxed{} final answer")
    answer, answer_source = None, None
    for src, raw in answers:
        try:
            answer = _answer(raw)
        except _Aside as a:
            raise _Aside(a.reason, f"{src}: {a.note}" if a.note else src) from None
        if answer is not None:
            answer_source = src
            break
    if answer is None:
        answer, answer_source = boxed.strip(), "response_boxed"
        if not answer:
            raise _Aside("response has no \\boxed{} final answer", "the last box is empty")
    _check_text("answer", answer)
    return {"id": _id(rec, prompt, response), "source": source, "prompt": prompt, "response": response,
            "answer": answer, "answer_source": answer_source}


def to_sample(rec, source: str, box_openers=DEFAULT_BOX_OPENERS) -> tuple[dict | None, str | None]:
    """One raw record -> (canonical sample, None) or (None, reason it was set aside)."""
    try:
        return _map(rec, source, box_openers), None
    except _Aside as a:
        return None, a.reason


# ---------------------------------------------------------------------------- reading
class _Row(NamedTuple):
    label: str  # the file (or dataset) the row came from: the ``source`` column
    where: str  # label:line, label[index], label:value N, label:row N
    value: object = None  # the parsed record (when reason is None)
    reason: str | None = None  # set aside while reading
    note: str = ""
    raw: str | None = None  # the raw text (cut to DETAIL_CHARS when set aside); None: render ``value``


def _safe(s: str) -> str:
    """Any str -> one Parquet can store (lone surrogates and NUL escaped)."""
    return s.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _snippet(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)[:DETAIL_CHARS]
    except (RecursionError, ValueError, TypeError):
        return f"<{_type_name(value)}>"


def _kind(name: str) -> tuple[str | None, str | None]:
    """(format, compression) from a file name, any capitalisation."""
    low = name.lower()
    comp = next((c for c in _COMPRESSED if low.endswith(c)), None)
    base = low[: -len(comp)] if comp else low
    fmt = next((f for ext, f in _BASE_EXT.items() if base.endswith(ext)), None)
    if fmt == _PARQUET and comp:
        return None, None
    return fmt, comp


class _Guarded(io.RawIOBase):
    """Turns read errors (corrupt compressed data) into SourceError."""

    def __init__(self, fh, label: str):
        self._fh, self._label = fh, label

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self._fh.read(len(b))
        except Exception as exc:  # OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError
            raise SourceError(f"{self._label}: cannot read, the file is corrupt or truncated ({exc})") from None
        b[: len(data)] = data
        return len(data)

    def close(self):
        self._fh.close()
        super().close()


def _open_binary(path: Path, comp: str | None, label: str) -> io.BufferedReader:
    if comp == ".gz":
        raw = gzip.open(path, "rb")
    elif comp in (".zst", ".zstd"):
        import zstandard

        fh = open(path, "rb")
        raw = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh, read_across_frames=True,
                                                                               closefd=True)
    elif comp == ".bz2":
        raw = bz2.open(path, "rb")
    elif comp == ".xz":
        raw = lzma.open(path, "rb")
    else:
        raw = open(path, "rb")
    reader = io.BufferedReader(_Guarded(raw, label), buffer_size=CHUNK)
    head = reader.peek(4)[:4]
    if _utf16_or_32(head):
        reader.close()
        raise SourceError(f"{label}: the text is UTF-16 or UTF-32 (it starts with {head!r}); convert it to UTF-8")
    return reader


def _utf16_or_32(head: bytes) -> bool:
    """A byte-order mark followed by the NUL bytes of UTF-16/32 text (not just any 2 bytes)."""
    if len(head) < 4:
        return False
    return (head in (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")
            or (head[:2] == b"\xff\xfe" and head[2] != 0 and head[3] == 0)  # UTF-16LE: '{' = 7b 00
            or (head[:2] == b"\xfe\xff" and head[2] == 0 and head[3] != 0))  # UTF-16BE: '{' = 00 7b


def _iter_jsonl(fh, label: str) -> Iterator[_Row]:
    n, readline, loads = 0, fh.readline, json.loads  # bound once: this loop runs per line
    while True:
        raw = readline(MAX_RECORD_CHARS + 1)
        if not raw:
            return
        n += 1
        where = f"{label}:{n}"
        if len(raw) > MAX_RECORD_CHARS and not raw.endswith(b"\n"):
            size = len(raw)
            while True:  # skip the rest of the line without holding it
                more = fh.readline(CHUNK)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield _Row(label, where, reason="record too long", note=f"line of {size} bytes (limit {MAX_RECORD_CHARS})",
                       raw=raw[:DETAIL_CHARS].decode("utf-8", "backslashreplace"))
            continue
        if raw.startswith(_BOM):
            raw = raw[3:]
        if raw.isspace() or not raw:
            continue  # blank lines are not rows
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _Row(label, where, reason="not UTF-8", note=f"byte {raw[exc.start]:#04x} at {exc.start}",
                       raw=raw[:DETAIL_CHARS].decode("utf-8", "backslashreplace"))
            continue
        if "\x00" in line:
            yield _Row(label, where, reason="NUL byte in text", note=f"raw NUL byte at {line.index(chr(0))}",
                       raw=line[:DETAIL_CHARS])
            continue
        try:
            rec = loads(line)
        except json.JSONDecodeError as exc:
            yield _Row(label, where, reason="malformed JSON", note=f"{exc.msg} at char {exc.pos}", raw=line[:DETAIL_CHARS])
            continue
        except RecursionError:
            yield _Row(label, where, reason="nested too deep", raw=line[:DETAIL_CHARS])
            continue
        except ValueError as exc:  # int with too many digits
            yield _Row(label, where, reason="integer too long", note=str(exc)[:80], raw=line[:DETAIL_CHARS])
            continue
        yield _Row(label, where, rec, raw=line)  # cut only if set aside: most rows are kept


_WS = re.compile(r"[ \t\n\r\ufeff]*")
_SKIP_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|[^"\[\]{}]+', re.S)
_SCALAR = re.compile(r'[^\s,\]}]+')
_RESYNC = re.compile(r"\n[\[{]")
_ESCAPED = re.compile("[\udc80-\udcff]")
_DECODER = json.JSONDecoder()


def _skip_value(buf: str, pos: int, final: bool) -> int | None:
    """End of the (syntactically valid) JSON value at ``pos`` without building it; None if
    it does not end within ``buf`` (``final``: nothing follows ``buf``)."""
    if buf[pos] not in "[{":
        m = _SCALAR.match(buf, pos)
        return m.end() if m and (m.end() < len(buf) or final) else None
    depth, i = 0, pos
    while i < len(buf):
        m = _SKIP_TOKEN.match(buf, i)
        if m is None:
            return None  # unterminated string
        tok, i = m.group(), m.end()
        if tok in ("[", "{"):
            depth += 1
        elif tok in ("]", "}"):
            depth -= 1
            if depth == 0:
                return i
    return None


class _JsonStream:
    """A .json file read in chunks and parsed value by value (never the whole file at once).
    Invalid UTF-8 is decoded with surrogateescape so that it can be pinned to one value."""

    def __init__(self, fh, label: str):
        self.fh, self.label = fh, label
        self.dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.buf, self.pos, self.eof = "", 0, False

    def more(self, n: int = CHUNK) -> None:
        if self.eof:
            return
        data = self.fh.read(n)
        if not data:
            self.eof = True
            self.buf += self.dec.decode(b"", final=True)
        else:
            self.buf += self.dec.decode(data)

    def compact(self) -> None:
        if self.pos > CHUNK:
            self.buf, self.pos = self.buf[self.pos:], 0

    def skip_ws(self) -> bool:
        """Move past whitespace; False at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return True
            if self.eof:
                return False
            self.compact()
            self.more()

    def _can_grow(self, start: int) -> bool:
        return not self.eof and len(self.buf) - start <= MAX_RECORD_CHARS

    def value(self, where: str) -> tuple[_Row, bool]:
        """Parse the value at ``pos`` -> (row, resync needed). On success ``pos`` moves past it."""
        self.compact()
        start = self.pos
        while True:
            grow = max(CHUNK, len(self.buf) - start)
            try:
                value, end = _DECODER.raw_decode(self.buf, start)
            except json.JSONDecodeError as exc:
                if self._can_grow(start) and (exc.pos >= len(self.buf) - 8 or exc.msg.startswith("Unterminated")):
                    self.more(grow)
                    continue
                raw = self.buf[start:start + DETAIL_CHARS]
                if len(self.buf) - start > MAX_RECORD_CHARS:
                    return _Row(self.label, where, reason="record too long",
                                note=f"no end within {MAX_RECORD_CHARS} characters", raw=raw), True
                at = f"at char {exc.pos - start} of the value"
                if exc.pos < len(self.buf) and self.buf[exc.pos] == "\x00":
                    return _Row(self.label, where, reason="NUL byte in text", note=f"raw NUL byte {at}", raw=raw), True
                return _Row(self.label, where, reason="malformed JSON", note=f"{exc.msg} {at}", raw=raw), True
            except (RecursionError, ValueError) as exc:
                reason = "nested too deep" if isinstance(exc, RecursionError) else "integer too long"
                end = _skip_value(self.buf, start, self.eof)
                if end is None and self._can_grow(start):
                    self.more(grow)
                    continue
                raw = self.buf[start:start + DETAIL_CHARS]
                if end is None:
                    return _Row(self.label, where, reason=reason, note="its end cannot be found", raw=raw), True
                self.pos = end
                return _Row(self.label, where, reason=reason, raw=raw), False
            if (end == len(self.buf) and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and self._can_grow(start)):
                self.more(grow)  # a number at the end of the buffer may go on
                continue
            self.pos = end
            text = self.buf[start:end]
            bad = _ESCAPED.search(text)
            if bad:  # bytes that are not UTF-8 (decoded with surrogateescape)
                return _Row(self.label, where, reason="not UTF-8", note=f"byte {ord(bad.group()) - 0xDC00:#04x} "
                            f"at char {bad.start()}", raw=text[:DETAIL_CHARS]), False
            return _Row(self.label, where, value, raw=text), False

    def rest(self, where: str, reason: str, note: str) -> _Row:
        """Everything from ``pos`` on, as one set-aside row (no resync possible)."""
        return _Row(self.label, where, reason=reason, note=note + "; the rest of the file is this one row",
                    raw=self.buf[self.pos:self.pos + DETAIL_CHARS])

    def resync(self) -> None:
        """Skip to the next line that starts an object or an array (or to the end)."""
        while True:
            m = _RESYNC.search(self.buf, self.pos)
            if m:
                self.pos = m.start() + 1
                return
            self.pos = max(self.pos, len(self.buf) - 1)
            if self.eof:
                self.pos = len(self.buf)
                return
            self.compact()
            self.more()


def _iter_json(fh, label: str) -> Iterator[_Row]:
    s = _JsonStream(fh, label)
    n = 0  # top-level values
    while s.skip_ws():
        if s.buf[s.pos] != "[":
            n += 1
            row, resync = s.value(f"{label}:value {n}")
            yield row
            if resync:  # objects one after another: go on at the next line that starts one
                s.resync()
            continue
        # an array: each element is a row
        s.pos += 1
        i = 0
        while True:
            if not s.skip_ws():
                yield s.rest(f"{label}[{i}]", "malformed JSON", "the array is not closed (file truncated?)")
                return
            c = s.buf[s.pos]
            if c == "]":
                s.pos += 1
                break
            if i:
                if c != ",":
                    yield s.rest(f"{label}[{i}]", "malformed JSON", f"expected ',' or ']' after element {i - 1}")
                    return
                s.pos += 1
                if not s.skip_ws():
                    yield s.rest(f"{label}[{i}]", "malformed JSON", "the array is not closed (file truncated?)")
                    return
                if s.buf[s.pos] == "]":  # a trailing comma loses nothing
                    s.pos += 1
                    break
            row, resync = s.value(f"{label}[{i}]")
            if resync:
                yield row._replace(note=row.note + "; the rest of the file is this one row")
                return
            yield row
            i += 1


def _iter_parquet(path: Path, label: str) -> Iterator[_Row]:
    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=1024)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise SourceError(f"{label}: not a readable Parquet file ({exc})") from None
    n = 0
    try:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                raise SourceError(f"{label}: cannot read Parquet after row {n} ({exc})") from None
            try:
                recs = batch.to_pylist()
            except Exception:  # one bad value (e.g. invalid UTF-8): find it row by row
                recs = []
                for j in range(batch.num_rows):
                    try:
                        recs.append(batch.slice(j, 1).to_pylist()[0])
                    except Exception as exc:
                        bad = "not UTF-8" if "utf" in str(exc).lower() else "unreadable value"
                        recs.append(_Row(label, "", reason=bad, note=str(exc)[:80], raw=""))
            for rec in recs:
                n += 1
                where = f"{label}:row {n}"
                yield rec._replace(where=where) if isinstance(rec, _Row) else _Row(label, where, rec)
    finally:
        pf.close()


def _iter_dataset(ds, label: str) -> Iterator[_Row]:
    for n, rec in enumerate(ds, start=1):
        yield _Row(label, f"{label}:{n}", rec)


def _iter_file(path: Path, label: str) -> Iterator[_Row]:
    fmt, comp = _kind(path.name)
    if fmt is None:
        raise SourceError(f"{label}: unsupported file type; accepted: {ACCEPTED_FILES}")
    if path.stat().st_size == 0:
        return  # an empty file is an empty source whatever its format
    if fmt == _PARQUET:
        yield from _iter_parquet(path, label)
        return
    with _open_binary(path, comp, label) as fh:
        yield from (_iter_jsonl if fmt == _JSONL else _iter_json)(fh, label)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def _files_under(folder: Path) -> list[Path]:
    found, skipped = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith("."):
                continue
            if _kind(f)[0] is None:
                skipped += 1
            else:
                found.append(Path(root) / f)
    if skipped:
        log.warning("ingest: %d files in %s are not of a supported type (%s) and were skipped",
                    skipped, folder, ACCEPTED_FILES)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", ".", "~")) or source.count("/") > 1
            or _kind(source)[0] is not None or bool(re.search(r"\.(csv|tsv|txt|arrow|gz|zst|zstd|bz2|xz)$", source, re.I)))


def _saved_without_data(path: Path, split: str) -> bool:
    state = path / "state.json" if (path / "state.json").is_file() else path / split / "state.json"
    try:
        return json.loads(state.read_text(encoding="utf-8")).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


def _load_from_disk(path: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        if _saved_without_data(path, split):  # datasets cannot load what it saved for 0 rows
            return []
        raise SourceError(f"{path}: cannot load the saved dataset ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"{path}: no split {split!r}; the saved dataset has {sorted(ds)}")
        ds = ds[split]
    return ds


def _iter_source(source: str, split: str) -> Iterator[_Row]:
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            yield from _iter_dataset(_load_from_disk(path, split), _safe(path.name))
            return
        for f in _files_under(path):
            yield from _iter_file(f, _safe(f"{path.name}/{f.relative_to(path).as_posix()}"))
        return
    if path.is_file():
        yield from _iter_file(path, _safe(path.name))
        return
    if any(c in source for c in "*?["):
        matches = sorted(globlib.glob(os.path.expanduser(source), recursive=True))
        if not matches:
            raise FileNotFoundError(f"corpus pattern matches no file: {source}")
        for m in matches:
            p = Path(m)
            if _is_saved_dataset(p):
                yield from _iter_dataset(_load_from_disk(p, split), _safe(m))
            elif p.is_dir():
                for f in _files_under(p):
                    yield from _iter_file(f, _safe(f.as_posix()))
            elif _kind(p.name)[0] is not None:
                yield from _iter_file(p, _safe(m))
            else:
                log.warning("ingest: %s matches %s but is not a supported type (%s); skipped", m, source, ACCEPTED_FILES)
        return
    if _looks_like_path(source):
        raise FileNotFoundError(f"corpus not found: {source} (no such file or folder)")
    import datasets  # a hub dataset id

    yield from _iter_dataset(datasets.load_dataset(source, split=split, streaming=True), _safe(source))


# ---------------------------------------------------------------------------- writing
class _BatchWriter:
    """Rows -> a Parquet file in batches (an ``io.ParquetSink``), under a temporary name until
    ``commit``. Rows are kept as they come and turned into columns once per batch (a per-row
    loop over the columns cost as much as parsing the JSON). ``sized``: the columns whose
    length bounds a batch's memory (``BATCH_CHARS``)."""

    def __init__(self, path: str | Path, schema: dict, sized: tuple[str, ...]):
        self.names = list(schema)
        self.sink = ParquetSink(path, pa.schema([(c, pa.large_string()) for c in self.names]))
        self.sized = sized
        self.rows: list[dict] = []
        self.chars = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        for c in self.sized:
            self.chars += len(row[c] or "")
        if len(self.rows) >= BATCH_ROWS or self.chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            cols = {c: [r.get(c) for r in self.rows] for c in self.names}
            self.sink.write(pa.Table.from_pydict(cols, schema=self.sink.schema))
            self.rows, self.chars = [], 0

    def commit(self) -> None:
        self.flush()
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


def _aside_row(row: _Row, rec, reason: str, note: str, label: str) -> dict:
    rid = None
    if isinstance(rec, dict):
        rid = rec.get("id") if rec.get("id") not in (None, "") else rec.get("uuid")
        rid = _safe(str(rid))[:DETAIL_CHARS] if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
    raw = row.raw[:DETAIL_CHARS] if row.raw is not None else _snippet(rec)
    detail = f"{row.where}: " + (f"{note}; " if note else "") + f"raw: {raw}"
    return {"id": rid, "source": label, "stage": STAGE, "reason": reason, "detail": _safe(detail)[:DETAIL_CHARS]}


PROGRESS_ROWS = 10_000  # a progress report every this many rows read


def ingest_to(source: str, out_samples_path: str | Path, out_aside_path: str | Path, *, split: str = "train",
              limit: int | None = None, box_openers=DEFAULT_BOX_OPENERS, progress=None) -> IngestCounts:
    """Stream ``source`` into ``out_samples_path`` (SAMPLE_SCHEMA) and ``out_aside_path``
    (SET_ASIDE_SCHEMA), both always written, atomically. ``limit`` caps the rows read.
    Raises FileNotFoundError / SourceError for a source that cannot be read at all."""
    reasons: Counter = Counter()
    seen: set[str] = set()
    openers = tuple(box_openers)
    samples = _BatchWriter(out_samples_path, SAMPLE_SCHEMA, sized=("prompt", "response"))
    aside = _BatchWriter(out_aside_path, SET_ASIDE_SCHEMA, sized=("detail",))
    rows = _iter_source(source, split)
    rows_in = kept = set_aside = 0  # locals in the loop: it runs once per row
    try:
        for row in rows:
            if limit is not None and rows_in >= limit:
                break
            rows_in += 1
            if progress and rows_in % PROGRESS_ROWS == 0:
                progress(rows_in, 0)  # a stream: its length is known at its end
            reason, note, rec = row.reason, row.note, row.value
            if reason is None:
                try:
                    sample = _map(rec, row.label, openers)
                    if sample["id"] in seen:
                        reason, note = "duplicate id", f"id {sample['id'][:80]!r} seen before"
                except _Aside as a:
                    reason, note = a.reason, a.note
                except Exception as exc:  # safety net: one row, never the run
                    log.exception("ingest: unexpected error on %s", row.where)
                    reason, note = "unexpected error", f"{type(exc).__name__}: {exc}"[:120]
            if reason is not None:
                aside.add(_aside_row(row, rec, reason, note, row.label))
                reasons[reason] += 1
                set_aside += 1
                continue
            seen.add(sample["id"])
            samples.add(sample)
            kept += 1
        aside.commit()
        samples.commit()
        if progress:
            progress(rows_in, rows_in)
    except BaseException:
        aside.abort()
        samples.abort()
        raise
    finally:
        rows.close()
    counts = IngestCounts(rows_in, kept, set_aside, dict(reasons.most_common()))
    log.info("ingest %s: %d rows in, %d kept, %d set aside%s", source, counts.rows_in, counts.kept,
             counts.set_aside, "".join(f"; {n} {r}" for r, n in reasons.most_common(5)))
    return counts


def ingest(source: str, *, split: str = "train", limit: int | None = None,
           box_openers=DEFAULT_BOX_OPENERS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Load ``source`` -> (samples, set_aside) frames (a convenience over ``ingest_to``;
    holds everything in memory). Every input row lands in exactly one of them."""
    with tempfile.TemporaryDirectory(prefix="undercurve-ingest-") as tmp:
        ingest_to(source, Path(tmp) / "samples.parquet", Path(tmp) / "set_aside.parquet", split=split,
                  limit=limit, box_openers=box_openers)
        samples = pl.read_parquet(Path(tmp) / "samples.parquet").cast(SAMPLE_SCHEMA)
        aside = pl.read_parquet(Path(tmp) / "set_aside.parquet").cast(SET_ASIDE_SCHEMA)
    return samples, aside

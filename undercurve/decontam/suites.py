"""Benchmark suites to decontaminate against: where they live and how to read them.

A suite is loaded into a polars frame ``suite, item_id, text`` (the question only: a
sample's prompt is compared with the benchmark's question, never with its solution).
Hub ids are the ones peers decontaminate against (open-r1, lighteval, evalscope); a local
JSONL / Parquet / CSV in the same format can replace any of them (offline machines,
tests), and a dict spec describes a user's own benchmark.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

# --- text normalisation: text -> word tokens, as polars expressions so a 100k corpus is
# tokenised in Rust, and suite and corpus go through the very same code. ---------------

_PLAIN_STEPS = (
    (r"(\d),(\d{3})", "${1}${2}"),  # 5,000 == 5000
    (r"(\d),(\d{3})", "${1}${2}"),  # 1,000,000 needs a second pass (matches overlap)
)
_LATEX_STEPS = (
    (r"\\[dt]frac", r"\frac"),  # \dfrac / \tfrac are \frac
    (r"\\[dt]binom", r"\binom"),
    (r"\\frac\s*(\d)\s*(\d)", r"\frac ${1} ${2}"),  # \frac12 == \frac{1}{2}
    (r"\\(?:left|right|displaystyle|textstyle|mathrm|mathbf|textbf|textit|text|operatorname|mbox|quad|qquad)\b", " "),
    (r"\\[,;:! ]", " "),  # spacing commands
    (r"\\cdot|\\times|\u00d7", " times "),
    (r"\\le(?:q)?\b|\u2264", " le "),
    (r"\\ge(?:q)?\b|\u2265", " ge "),
)
_WORD = r"[^\W_]+"  # letters/digits runs; `_`, `$`, braces, punctuation separate words


def _tokens_expr(expr: pl.Expr, steps) -> pl.Expr:
    e = expr.fill_null("").str.normalize("NFKC").str.to_lowercase()
    for pattern, repl in steps:
        e = e.str.replace_all(pattern, repl)
    return e.str.extract_all(_WORD)


NORMALISERS = {
    # prose (GSM8K): case, unicode forms, thousands separators; punctuation and $ dropped
    "plain": lambda e: _tokens_expr(e, _PLAIN_STEPS),
    # competition maths (AIME, MATH-500, GPQA): also LaTeX markup that varies between
    # copies of the same problem ($...$, \dfrac vs \frac, \left(, \text{}, \cdot vs x)
    "latex": lambda e: _tokens_expr(e, _PLAIN_STEPS + _LATEX_STEPS),
}


TOKENIZE_SLICE_MIN = 1024  # rows; below this a text list is normalised in one piece


def tokenize(texts: list[str] | pl.Series, normaliser: str) -> pl.Series:
    """Normalised word tokens of each text (a list[str] Series).

    A chain of string expressions on one Series runs on one thread, so a long list is cut into
    slices normalised as separate queries at once (``collect_all``): 1.8x on 2 cores for
    8,192-row batches, the same tokens (``benchmarks/results/scale.md``, section 5)."""
    s = texts if isinstance(texts, pl.Series) else pl.Series("text", list(texts), dtype=pl.Utf8)
    step = max(TOKENIZE_SLICE_MIN, -(-s.len() // (2 * pl.thread_pool_size())))
    if s.len() <= step:
        return pl.select(NORMALISERS[normaliser](pl.lit(s))).to_series()
    expr = NORMALISERS[normaliser](pl.col("t"))
    parts = pl.collect_all([pl.LazyFrame({"t": s.slice(i, step)}).select(expr) for i in range(0, s.len(), step)])
    return pl.concat([part.to_series() for part in parts]).rename(s.name)


SUITE_COLUMNS = {"suite": pl.Utf8, "item_id": pl.Utf8, "text": pl.Utf8}

# Field names seen in the wild for the same benchmark (HF mirrors, evalscope, opencompass):
# tried after the registered field, so a local copy from another mirror still loads.
_TEXT_FALLBACKS = ("problem", "Problem", "question", "Question", "prompt", "text")
_ID_FALLBACKS = ("id", "ID", "unique_id", "Record ID", "idx", "item_id")


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    hub_id: str | None = None
    config: str | None = None
    split: str = "test"
    text_field: str = "problem"
    id_field: str | None = "id"  # None: the row index is the id
    normaliser: str = "latex"  # key of normalize.NORMALISERS
    path: str | None = None  # local file; wins over hub_id
    aliases: tuple[str, ...] = field(default=())


REGISTRY: dict[str, SuiteSpec] = {
    s.name: s
    for s in (
        SuiteSpec("aime24", "HuggingFaceH4/aime_2024", split="train", aliases=("aime2024", "aime_2024")),
        SuiteSpec("aime25", "math-ai/aime25", split="test", aliases=("aime2025", "aime_2025")),
        SuiteSpec("math500", "HuggingFaceH4/MATH-500", split="test", id_field="unique_id", aliases=("math-500", "math_500")),
        # gated on the hub (accept the terms, then HF_TOKEN); questions carry some LaTeX
        SuiteSpec(
            "gpqa_diamond", "Idavidrein/gpqa", config="gpqa_diamond", split="train",
            text_field="Question", id_field="Record ID", aliases=("gpqa", "gpqa-diamond"),
        ),
        # plain prose with thousands separators and currency signs; no ids on the hub
        SuiteSpec(
            "gsm8k", "openai/gsm8k", config="main", split="test", text_field="question",
            id_field=None, normaliser="plain", aliases=("gsm8k_test", "gsm8k-test"),
        ),
    )
}

DEFAULT_SUITES = tuple(REGISTRY)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES = {_key(a): s.name for s in REGISTRY.values() for a in (s.name, *s.aliases)}


def resolve_spec(name_or_spec: str | dict | SuiteSpec, local_path: str | Path | None = None) -> SuiteSpec:
    """Registered name (case/punctuation-insensitive), SuiteSpec, or dict -> SuiteSpec.

    A dict names a user benchmark: ``{"name", "path" or "hub_id", "text_field",
    "id_field", "split", "config", "normaliser"}``; a dict whose name is registered
    overrides only the keys it gives.
    """
    if isinstance(name_or_spec, SuiteSpec):
        spec = name_or_spec
    elif isinstance(name_or_spec, str):
        canon = _ALIASES.get(_key(name_or_spec))
        if canon is None:
            raise KeyError(f"unknown suite {name_or_spec!r}; registered: {sorted(REGISTRY)} (or pass a dict spec)")
        spec = REGISTRY[canon]
    elif isinstance(name_or_spec, dict):
        d = dict(name_or_spec)
        if "name" not in d:
            raise ValueError("a suite spec dict needs a 'name'")
        base = REGISTRY.get(_ALIASES.get(_key(d["name"]), ""), None)
        known = set(SuiteSpec.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown suite spec keys {sorted(unknown)}; allowed: {sorted(known)}")
        if base is not None:
            d["name"] = base.name
            spec = replace(base, **d)
        else:
            if not d.get("path") and not d.get("hub_id"):
                raise ValueError(f"suite {d['name']!r} is not registered: give 'path' or 'hub_id'")
            spec = SuiteSpec(**d)
    else:
        raise TypeError(f"suite must be a name, dict or SuiteSpec, not {type(name_or_spec).__name__}")
    if local_path is not None:
        spec = replace(spec, path=str(local_path))
    if spec.normaliser not in NORMALISERS:
        raise ValueError(f"suite {spec.name!r}: unknown normaliser {spec.normaliser!r}; have {sorted(NORMALISERS)}")
    return spec


_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _load_table(spec: SuiteSpec) -> pl.DataFrame:
    """The suite's rows: a local file read by polars (no ``datasets`` import, no HF cache
    written; ~8 s saved per process), else the hub split through ``datasets``."""
    if spec.path:
        p = Path(spec.path)
        fmt = _FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise ValueError(f"suite {spec.name!r}: unsupported file type {p.suffix!r} (use {sorted(_FORMATS)})")
        if not p.exists():
            raise FileNotFoundError(f"suite {spec.name!r}: {p} does not exist")
        # a local file has one split whatever the hub's split is called; every row sets the
        # column types (an id that is a number in one row and a string in another is a string)
        try:
            if fmt == "parquet":
                return pl.read_parquet(p)
            if fmt == "csv":
                return pl.read_csv(p, infer_schema_length=None)
            with open(p, "rb") as fh:  # one JSON array of records, else JSON lines
                array = fh.read(4096).lstrip(b"\xef\xbb\xbf").lstrip().startswith(b"[")
            return (pl.read_json if array else pl.read_ndjson)(p, infer_schema_length=None)
        except (pl.exceptions.PolarsError, OSError) as exc:  # a benchmark is never half read
            why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"suite {spec.name!r}: cannot read {p} as {fmt}: {why}") from None
    import datasets  # heavy import, only when a hub suite is actually read

    return datasets.load_dataset(spec.hub_id, spec.config, split=spec.split).to_polars()


def _pick(columns: list[str], wanted: str | None, fallbacks: tuple[str, ...]) -> str | None:
    for c in ((wanted,) if wanted else ()) + fallbacks:
        if c in columns:
            return c
    return None


def load_suite(name_or_spec: str | dict | SuiteSpec, local_path: str | Path | None = None) -> pl.DataFrame:
    """Load one benchmark as a frame ``suite, item_id, text`` (text = the question)."""
    spec = resolve_spec(name_or_spec, local_path)
    table = _load_table(spec)
    cols = table.columns
    text_col = _pick(cols, spec.text_field, _TEXT_FALLBACKS)
    if text_col is None:
        raise KeyError(f"suite {spec.name!r}: no question field {spec.text_field!r} in columns {cols}")
    id_col = _pick(cols, spec.id_field, _ID_FALLBACKS) if spec.id_field else None
    ids = (pl.col(id_col).cast(pl.Utf8) if id_col
           else pl.format(f"{spec.split}-{{}}", pl.int_range(pl.len(), dtype=pl.Int64)))
    df = table.select(pl.lit(spec.name, pl.Utf8).alias("suite"), ids.alias("item_id"),
                      pl.col(text_col).cast(pl.Utf8).alias("text"))
    df = df.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != ""))
    if df["item_id"].n_unique() != df.height:
        raise ValueError(f"suite {spec.name!r}: item ids in {id_col!r} are not unique")
    return df


def load_suites(suites, local_paths: dict | None = None) -> tuple[list[SuiteSpec], pl.DataFrame]:
    """Resolve and load several suites; ``local_paths`` maps a suite name to a file."""
    local = {_ALIASES.get(_key(k), k): v for k, v in (local_paths or {}).items()}
    specs, frames = [], []
    for s in suites:
        spec = resolve_spec(s)
        if spec.name in local:
            spec = replace(spec, path=str(local[spec.name]))
        specs.append(spec)
        frames.append(load_suite(spec))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"suite names must be unique, got {names}")
    return specs, pl.concat(frames) if frames else pl.DataFrame(schema=SUITE_COLUMNS)


def safe_name(name: str) -> str:
    """A suite name usable in a file name (user specs may be called 'org/bench')."""
    return re.sub(r"[^\w.-]", "_", name)[:80]


def content_hash(suite_df: pl.DataFrame, *extra) -> str:
    """Hash of a suite's ids and texts (+ settings): the cache key of its indexes."""
    h = hashlib.sha256()
    for part in extra:
        h.update(repr(part).encode() + b"\x00")
    for item_id, text in zip(suite_df["item_id"], suite_df["text"]):
        h.update(item_id.encode() + b"\x1f" + text.encode() + b"\x1e")
    return h.hexdigest()[:20]

"""Word n-gram overlap between corpus prompts and benchmark items.

As in GPT-3 / NeMo Curator (13-grams) and open-r1 (8-grams): a sample is contaminated
when it shares at least ``min_matches`` word n-grams with one benchmark item, after the
suite's normalisation. Benchmark items shorter than n words would never match, so they are
indexed whole (one k-gram, k = their length) when they have ``short_min`` words or more,
and shorter ones only match a prompt that is exactly the item.

Speed: tokens are hashed once (stable blake2b, so indexes can be cached on disk), n-gram
hashes are a rolling polynomial over the corpus's flat token array (n vector ops for the
whole corpus, no per-sample Python), and lookup is ``searchsorted`` in the sorted index.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from undercurve.decontam.suites import content_hash, safe_name as _safe, tokenize

INDEX_VERSION = 1
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling hash
_LEN_SALT = np.uint64(0xC2B2AE3D27D4EB4F)  # separates grams of different lengths
_EXACT_SALT = np.uint64(0x165667B19E3779F9)  # "the whole prompt is this short item"

_BITMAP_BITS = 24
_BITMAP_MASK = np.uint64((1 << _BITMAP_BITS) - 1)

STATS = {"built": 0, "loaded": 0}  # index builds vs cache hits (tests, logs)
_MEMO: dict[str, "NgramIndex"] = {}


def _token_hashes(tokens: pl.Series) -> np.ndarray:
    """Stable uint64 per token string (Python's hash() is salted per process)."""
    uniq = tokens.unique()
    table = {t: int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in uniq.to_list()}
    mapped = tokens.replace_strict(list(table), list(table.values()), return_dtype=pl.UInt64)
    return mapped.to_numpy()


@dataclass
class Flat:
    """Token lists flattened: tokens[i] belongs to row row_of[i]; rows start at starts."""

    tokens: pl.Series  # str, for evidence
    hashes: np.ndarray  # uint64
    row_of: np.ndarray  # int64
    starts: np.ndarray  # int64, per row
    lengths: np.ndarray  # int64, per row

    @classmethod
    def from_lists(cls, token_lists: pl.Series) -> "Flat":
        lengths = token_lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        tokens = token_lists.explode().drop_nulls()  # empty lists explode to one null
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        row_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        hashes = _token_hashes(tokens) if len(tokens) else np.zeros(0, np.uint64)
        return cls(tokens, hashes, row_of, starts, lengths)

    def grams(self, lengths_needed: set[int], exact_lengths: set[int]):
        """Yield (k, start positions, gram hashes, exact) for each needed length k.

        Grams crossing a row boundary are dropped. For k in ``exact_lengths`` yield instead
        the whole-row grams of rows that are exactly k tokens long (salted differently).
        """
        top = max(lengths_needed | exact_lengths, default=0)
        h = self.hashes.copy()
        with np.errstate(over="ignore"):  # uint64 wrap-around is the modulus
            for k in range(1, top + 1):
                if k > 1:
                    h = h[:-1] * _P + self.hashes[k - 1 :]
                if k in lengths_needed:
                    pos = np.nonzero(self.row_of[: len(h)] == self.row_of[k - 1 :])[0]
                    yield k, pos, h[pos] + np.uint64(k) * _LEN_SALT, False
                if k in exact_lengths:
                    pos = self.starts[self.lengths == k]
                    yield k, pos, h[pos] + np.uint64(k) * _LEN_SALT + _EXACT_SALT, True


@dataclass
class NgramIndex:
    suite: str
    n: int
    normaliser: str
    item_ids: np.ndarray  # str, per item
    item_grams: np.ndarray  # int64, distinct grams per item (denominator of the overlap)
    hashes: np.ndarray  # uint64, sorted
    items: np.ndarray  # int64, item of each hash entry
    lengths: np.ndarray  # int64, gram length of each entry
    exact: np.ndarray  # bool, entry only matches a whole prompt
    key: str = ""
    from_cache: bool = False

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        arrays = {k: getattr(self, k) for k in ("item_ids", "item_grams", "hashes", "items", "lengths", "exact")}
        np.savez(tmp, meta=np.array([self.suite, str(self.n), self.normaliser, self.key]), **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file

    @classmethod
    def load(cls, path: Path) -> "NgramIndex":
        with np.load(path, allow_pickle=False) as z:
            suite, n, normaliser, key = z["meta"].tolist()
            arrays = {k: z[k] for k in ("item_ids", "item_grams", "hashes", "items", "lengths", "exact")}
        return cls(suite, int(n), normaliser, key=key, from_cache=True, **arrays)


def _build(suite_df: pl.DataFrame, suite: str, n: int, normaliser: str, short_min: int, key: str) -> NgramIndex:
    flat = Flat.from_lists(tokenize(suite_df["text"], normaliser))
    lens = flat.lengths
    short_min = min(short_min, n)
    need = {n} | {int(k) for k in lens if short_min <= k < n}
    exact = {int(k) for k in lens if 0 < k < short_min}
    parts = []  # (hash, item, length, exact)
    for k, pos, hs, is_exact in flat.grams(need, exact):
        rows = flat.row_of[pos]
        # long items give all their n-grams; a short item is indexed whole, not by sub-grams
        keep = lens[rows] >= n if k == n else lens[rows] == k
        pos, hs, rows = pos[keep], hs[keep], rows[keep]
        parts.append((hs, rows, np.full(len(hs), k), np.full(len(hs), is_exact)))
    if parts:
        hs, rows, ks, ex = (np.concatenate(c) for c in zip(*parts))
    else:
        hs, rows, ks, ex = np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    uniq = pl.DataFrame({"h": hs, "i": rows, "k": ks, "x": ex}).unique(maintain_order=True).sort("h", "i")
    item_grams = np.bincount(uniq["i"].to_numpy(), minlength=suite_df.height).astype(np.int64)
    return NgramIndex(
        suite, n, normaliser, suite_df["item_id"].to_numpy().astype(str), item_grams,
        uniq["h"].to_numpy(), uniq["i"].to_numpy().astype(np.int64), uniq["k"].to_numpy().astype(np.int64),
        uniq["x"].to_numpy().astype(bool), key=key,
    )


def build_index(
    suite_df: pl.DataFrame, *, n: int = 13, normaliser: str = "latex", short_min: int = 6,
    cache_dir: str | Path | None = None,
) -> NgramIndex:
    """Index one suite (frame ``suite, item_id, text``), reusing a cached one if present.

    The cache key is the suite's content hash + n + short_min + normaliser, so an edited
    benchmark file or another n builds a new index and a stale one is never used.
    """
    suite = suite_df["suite"][0] if suite_df.height else "empty"
    key = content_hash(suite_df, "ngram", INDEX_VERSION, n, short_min, normaliser)
    path = Path(cache_dir) / "ngram" / f"{_safe(suite)}-n{n}-{key}.npz" if cache_dir else None
    memo_key = f"{key}:{path}"
    if memo_key in _MEMO and (path is None or path.exists()):
        return _MEMO[memo_key]
    if path is not None and path.exists():
        try:
            index = NgramIndex.load(path)
            STATS["loaded"] += 1
        except (OSError, ValueError, KeyError):  # corrupt/old file: rebuild below
            index = None
        if index is not None and index.key == key:
            _MEMO[memo_key] = index
            return index
    index = _build(suite_df, suite, n, normaliser, short_min, key)
    STATS["built"] += 1
    if path is not None:
        index.save(path)
    _MEMO[memo_key] = index
    return index


@dataclass
class Lookup:
    """The indexes of one normaliser as one sorted table (benchmark-sized), built once and
    reused for every corpus batch ``match`` sees."""

    indexes: list[NgramIndex]
    offs: np.ndarray  # first global item of each index
    hashes: np.ndarray  # uint64, sorted
    items: np.ndarray  # global item of each hash
    need: set[int]  # gram lengths to look up
    exact: set[int]  # whole-prompt lengths to look up
    bitmap: np.ndarray  # bool over the low hash bits: a cheap prefilter

    @classmethod
    def build(cls, indexes: list[NgramIndex]) -> "Lookup":
        if len({ix.normaliser for ix in indexes}) > 1:
            raise ValueError("match() needs indexes built with one normaliser; group them by normaliser")
        offs = np.cumsum([0] + [len(ix.item_ids) for ix in indexes])

        def cat(arrays, dtype):  # (no index at all: an empty table)
            return np.concatenate([np.zeros(0, dtype), *arrays])

        hashes = cat([ix.hashes for ix in indexes], np.uint64)
        order = np.argsort(hashes, kind="stable")
        items = cat([ix.items + o for ix, o in zip(indexes, offs)], np.int64)[order]
        lens_all = cat([ix.lengths for ix in indexes], np.int64)[order]
        exact_all = cat([ix.exact for ix in indexes], bool)[order]
        # the bitmap rejects ~all corpus grams with one gather, so the exact searchsorted
        # only runs on the few candidates
        bitmap = np.zeros(1 << _BITMAP_BITS, bool)
        bitmap[(hashes & _BITMAP_MASK).astype(np.int64)] = True
        return cls(indexes, offs, hashes[order], items, {int(k) for k in np.unique(lens_all[~exact_all])},
                   {int(k) for k in np.unique(lens_all[exact_all])}, bitmap)


def match(
    token_lists: pl.Series, indexes: list[NgramIndex] | Lookup, *, min_matches: int = 1, max_evidence: int = 5,
) -> pl.DataFrame:
    """Best-matching benchmark item per contaminated row.

    ``token_lists``: the corpus prompts tokenised with the indexes' normaliser (all
    indexes must share it); ``indexes``: the indexes, or their ``Lookup`` (build it once when
    matching many batches). Rows are matched independently (a gram never spans two rows), so
    a corpus can be matched in batches. Returns one row per contaminated corpus row: ``row,
    suite, item_id, matches, item_grams, gram_len, whole_item, ngrams`` (list of overlapping
    n-grams as text, at most ``max_evidence``).
    """
    empty = pl.DataFrame(schema={
        "row": pl.Int64, "suite": pl.Utf8, "item_id": pl.Utf8, "matches": pl.Int64,
        "item_grams": pl.Int64, "gram_len": pl.Int64, "whole_item": pl.Boolean, "ngrams": pl.List(pl.Utf8),
    })
    lookup = indexes if isinstance(indexes, Lookup) else Lookup.build(indexes)
    if not lookup.indexes or token_lists.len() == 0:
        return empty
    indexes, offs, hashes, items, bitmap = lookup.indexes, lookup.offs, lookup.hashes, lookup.items, lookup.bitmap
    need, exact = lookup.need, lookup.exact

    flat = Flat.from_lists(token_lists)
    hits = []  # (corpus row, start, k, gram hash, global item)
    for k, pos, hs, _ in flat.grams(need, exact):
        cand = np.nonzero(bitmap[(hs & _BITMAP_MASK).astype(np.int64)])[0]
        pos, hs = pos[cand], hs[cand]
        lo = np.searchsorted(hashes, hs, "left")
        hi = np.searchsorted(hashes, hs, "right")
        cnt = hi - lo
        sel = np.nonzero(cnt)[0]
        if sel.size == 0:
            continue
        rep = cnt[sel]  # one gram may occur in several items: expand to all of them
        entry = np.repeat(lo[sel], rep) + (np.arange(rep.sum()) - np.repeat(np.cumsum(rep) - rep, rep))
        src = np.repeat(sel, rep)
        hits.append((flat.row_of[pos[src]], pos[src], np.full(len(src), k), hs[src], items[entry]))
    if not hits:
        return empty
    row, start, k, h, gitem = (np.concatenate(c) for c in zip(*hits))
    item_suite = np.repeat(np.arange(len(indexes)), np.diff(offs))
    item_ids = np.concatenate([ix.item_ids for ix in indexes])
    item_grams = np.concatenate([ix.item_grams for ix in indexes])
    n = indexes[0].n

    per = (
        pl.DataFrame({"row": row, "start": start, "k": k, "h": h, "g": gitem})
        .unique(subset=["row", "g", "h"], keep="first", maintain_order=True)  # a repeated gram counts once
        .group_by("row", "g")
        .agg(pl.len().alias("matches"), pl.col("k").min().alias("gram_len"),
             pl.col("start").head(max_evidence), pl.col("k").head(max_evidence).alias("ks"))
        .with_columns(whole_item=pl.col("gram_len") < n)
        .filter((pl.col("matches") >= min_matches) | pl.col("whole_item"))
        .sort(["row", "matches", "g"], descending=[False, True, False])
        .unique(subset="row", keep="first", maintain_order=True)  # best item per row
    )
    if per.height == 0:
        return empty
    toks = flat.tokens
    ngrams = [
        [" ".join(toks.slice(s, kk).to_list()) for s, kk in zip(ss, kks)]
        for ss, kks in zip(per["start"].to_list(), per["ks"].to_list())
    ]
    g = per["g"].to_numpy()
    return pl.DataFrame({
        "row": per["row"].cast(pl.Int64),
        "suite": [indexes[i].suite for i in item_suite[g]],
        "item_id": item_ids[g].tolist(),
        "matches": per["matches"].cast(pl.Int64),
        "item_grams": item_grams[g],
        "gram_len": per["gram_len"].cast(pl.Int64),
        "whole_item": per["whole_item"],
        "ngrams": pl.Series(ngrams, dtype=pl.List(pl.Utf8)),
    }, schema=empty.schema)

